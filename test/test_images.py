"""image_msg_to_rgb against a plain numpy reference, for every converter this machine has."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from sensor_msgs.msg import Image

from latent_memory_ros import images
from latent_memory_ros.images import (
    CONVERTER,
    CONVERTERS,
    SUPPORTED_ENCODINGS,
    FrameError,
    image_msg_to_rgb,
)

HEIGHT, WIDTH = 5, 7
RNG = np.random.default_rng(3)
RGB = RNG.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65536, (HEIGHT, WIDTH), dtype=np.uint16)
GRAY8 = RNG.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (HEIGHT, WIDTH, 1), dtype=np.uint8)


def pixels_and_expected(encoding: str, big_endian: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The (H, W, bytes per pixel) payload of an encoding, and the RGB it must become."""
    if encoding == "mono16":
        gray = GRAY16.astype(">u2" if big_endian else "<u2")
        expected = np.round(GRAY16 / 65535.0 * 255.0).astype(np.uint8)
        return gray.view(np.uint8).reshape(HEIGHT, WIDTH, 2), np.dstack([expected] * 3)
    if encoding == "mono8":
        return GRAY8[..., None], np.dstack([GRAY8] * 3)
    bgr = RGB[..., ::-1]
    payload = {
        "rgb8": RGB,
        "bgr8": bgr,
        "rgba8": np.concatenate([RGB, ALPHA], axis=2),
        "bgra8": np.concatenate([bgr, ALPHA], axis=2),
    }[encoding]
    return payload, RGB


def make_msg(
    encoding: str,
    padding: int = 0,
    big_endian: bool = False,
    trailing: int = 0,
    data_type: type = bytes,
) -> Image:
    """An Image whose rows are ``padding`` garbage bytes longer than the pixels need."""
    payload, _ = pixels_and_expected(encoding, big_endian)
    rows = payload.reshape(HEIGHT, -1)
    garbage = np.full((HEIGHT, padding), 0xAB, dtype=np.uint8)
    data = np.concatenate([rows, garbage], axis=1).tobytes() + b"\xcd" * trailing
    msg = Image(
        height=HEIGHT,
        width=WIDTH,
        encoding=encoding,
        is_bigendian=int(big_endian),
        step=rows.shape[1] + padding,
    )
    msg.data = data if data_type is bytes else data_type(data)
    return msg


@pytest.mark.parametrize("converter", list(CONVERTERS))
@pytest.mark.parametrize("encoding", list(SUPPORTED_ENCODINGS))
@pytest.mark.parametrize("padding", [0, 1, 8])
def test_every_encoding_matches_the_reference(converter: str, encoding: str, padding: int) -> None:
    msg = make_msg(encoding, padding=padding, trailing=3)
    rgb = image_msg_to_rgb(msg, converter=converter)
    assert rgb.shape == (HEIGHT, WIDTH, 3)
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, pixels_and_expected(encoding)[1])


@pytest.mark.parametrize("converter", list(CONVERTERS))
def test_big_endian_mono16(converter: str) -> None:
    msg = make_msg("mono16", padding=2, big_endian=True)
    np.testing.assert_array_equal(
        image_msg_to_rgb(msg, converter=converter), pixels_and_expected("mono16")[1]
    )


def test_rosbags_style_message_with_numpy_data() -> None:
    # rosbags messages are plain dataclasses whose data is a uint8 numpy array.
    msg = make_msg("bgr8", padding=1)
    duck = SimpleNamespace(
        height=msg.height,
        width=msg.width,
        encoding=msg.encoding,
        is_bigendian=msg.is_bigendian,
        step=msg.step,
        data=np.frombuffer(bytes(msg.data), dtype=np.uint8),
    )
    np.testing.assert_array_equal(image_msg_to_rgb(duck), RGB)


def test_default_converter_is_the_first_usable() -> None:
    assert CONVERTER == next(iter(CONVERTERS))
    assert "numpy" in CONVERTERS


def test_large_frame_reads_message_data_in_place() -> None:
    # rgb8 needs no conversion: the result is a view of the message buffer, not a copy.
    frame = RNG.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    msg = Image(height=480, width=640, encoding="rgb8", step=640 * 3, data=frame.tobytes())
    rgb = image_msg_to_rgb(msg)
    np.testing.assert_array_equal(rgb, frame)
    assert np.shares_memory(rgb, np.frombuffer(msg.data, dtype=np.uint8))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"encoding": "32FC1"}, "unsupported encoding '32FC1'"),
        ({"encoding": "yuv422"}, "unsupported encoding 'yuv422'"),
        ({"encoding": ""}, "unsupported encoding ''"),
        ({"step": WIDTH * 3 - 1}, f"step {WIDTH * 3 - 1} is smaller than width {WIDTH}"),
        ({"height": 0}, "empty image"),
        ({"width": 0}, "empty image"),
        ({"data": bytes(WIDTH * 3 * HEIGHT - 1)}, "truncated data"),
        ({"data": b""}, "truncated data"),
        ({"height": HEIGHT + 1}, "truncated data"),
    ],
)
def test_bad_frames_raise_frame_error_saying_why(changes: dict, message: str) -> None:
    msg = make_msg("rgb8")
    for name, value in changes.items():
        setattr(msg, name, value)
    with pytest.raises(FrameError, match=message.replace("(", r"\(")) as raised:
        image_msg_to_rgb(msg)
    assert isinstance(raised.value, ValueError)


def test_cv_bridge_is_bypassed_where_it_would_shear_or_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    class FailingBridge:
        def imgmsg_to_cv2(self, msg: Image, desired_encoding: str) -> np.ndarray:
            calls.append(msg.step)
            raise AttributeError("'numpy.ndarray' object has no attribute 'newbyteorder'")

    monkeypatch.setattr(images, "_cv_bridge", FailingBridge())
    monkeypatch.setattr(
        images, "CONVERTERS", {"cv_bridge": images._cv_bridge_to_rgb, **images.CONVERTERS}
    )
    sheared = make_msg("bgr8", padding=1)
    np.testing.assert_array_equal(image_msg_to_rgb(sheared, converter="cv_bridge"), RGB)
    assert calls == []
    aligned = make_msg("bgr8", padding=3)
    np.testing.assert_array_equal(image_msg_to_rgb(aligned, converter="cv_bridge"), RGB)
    assert calls == [WIDTH * 3 + 3]
