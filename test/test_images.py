"""images.py: raw frames against a numpy reference,
YUV 4:2:2 against BT.601, CompressedImage against cv2.imencode, camera_info checks and the
field-of-view adapter against rendering with the model's own intrinsics."""

from __future__ import annotations

import re
import struct
import zlib
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from latent_memory_ros.images import (
    SUPPORTED_ENCODINGS,
    FieldOfViewAdapter,
    FrameError,
    PinholeCamera,
    check_camera_info,
    compressed_msg_to_rgb,
    image_msg_to_rgb,
    validate_compressed_msg,
)

HEIGHT, WIDTH = 5, 7
RNG = np.random.default_rng(3)
RGB = RNG.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65536, (HEIGHT, WIDTH), dtype=np.uint16)
GRAY8 = RNG.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (HEIGHT, WIDTH, 1), dtype=np.uint8)
# YUV 4:2:2 is lossy (chroma shared by pixel pairs): tested apart, against BT.601.
YUV422 = {"yuv422": "uyvy", "uyvy": "uyvy", "yuv422_yuy2": "yuyv", "yuyv": "yuyv"}
EXACT_ENCODINGS = [name for name in SUPPORTED_ENCODINGS if name not in YUV422]


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


@pytest.mark.parametrize("encoding", EXACT_ENCODINGS)
@pytest.mark.parametrize("padding", [0, 1, 8])
def test_every_encoding_matches_the_reference(encoding: str, padding: int) -> None:
    msg = make_msg(encoding, padding=padding, trailing=3)
    rgb = image_msg_to_rgb(msg)
    assert rgb.shape == (HEIGHT, WIDTH, 3)
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, pixels_and_expected(encoding)[1])


@pytest.mark.parametrize("padding", [1, 2])
def test_big_endian_mono16(padding: int) -> None:
    msg = make_msg("mono16", padding=padding, big_endian=True)
    np.testing.assert_array_equal(image_msg_to_rgb(msg), pixels_and_expected("mono16")[1])


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
        ({"encoding": "nv12"}, "unsupported encoding 'nv12'"),
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


def test_supported_encodings_include_yuv422() -> None:
    assert set(YUV422) < set(SUPPORTED_ENCODINGS)
    assert {"rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16"} < set(SUPPORTED_ENCODINGS)


# --- YUV 4:2:2 ---------------------------------------------------------------------------


def smooth_rgb(height: int = 24, width: int = 32) -> np.ndarray:
    """Colours that vary slowly, so sharing chroma between neighbours loses little."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rgb = np.stack(
        [
            30 + 200 * u / width,
            30 + 200 * v / height,
            128 + 90 * np.sin(u / 6.0 + v / 9.0),
        ],
        axis=2,
    )
    return np.round(rgb).astype(np.uint8)


def yuv422_bytes(rgb: np.ndarray, order: str, padding: int = 0) -> bytes:
    """Pack RGB as BT.601 video-range YUV 4:2:2 by hand, ``padding`` bytes after each row."""
    r, g, b = (rgb[..., i].astype(np.float64) / 255.0 for i in range(3))
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    cb = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    cr = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    u = (cb[:, 0::2] + cb[:, 1::2]) / 2  # one chroma sample per pixel pair
    v = (cr[:, 0::2] + cr[:, 1::2]) / 2
    y0, y1 = y[:, 0::2], y[:, 1::2]
    quads = (u, y0, v, y1) if order == "uyvy" else (y0, u, y1, v)
    packed = np.clip(np.round(np.stack(quads, axis=2)), 0, 255).astype(np.uint8)
    rows = packed.reshape(rgb.shape[0], -1)
    garbage = np.full((rgb.shape[0], padding), 0xAB, dtype=np.uint8)
    return np.concatenate([rows, garbage], axis=1).tobytes()


def yuv_msg(rgb: np.ndarray, encoding: str, padding: int = 0) -> Image:
    height, width = rgb.shape[:2]
    return Image(
        height=height,
        width=width,
        encoding=encoding,
        step=width * 2 + padding,
        data=yuv422_bytes(rgb, YUV422[encoding], padding),
    )


@pytest.mark.parametrize("encoding", list(YUV422))
@pytest.mark.parametrize("padding", [0, 3, 8])
def test_yuv422_decodes_close_to_the_original(encoding: str, padding: int) -> None:
    rgb = smooth_rgb()
    decoded = image_msg_to_rgb(yuv_msg(rgb, encoding, padding))
    assert decoded.shape == rgb.shape
    assert decoded.dtype == np.uint8
    error = np.abs(decoded.astype(int) - rgb)
    assert error.mean() < 3
    assert error.max() <= 12


def test_yuv422_byte_orders_and_primaries() -> None:
    # Flat colour per pixel pair: nothing is lost to subsampling, so each decodes almost
    # exactly; a swapped U/V or Y/chroma order would turn red into something else.
    colours = np.array(
        [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0], [200, 120, 40]],
        dtype=np.uint8,
    )
    rgb = np.repeat(colours[None], 2, axis=1).repeat(2, axis=0)  # 2 rows x 12 columns
    for encoding in YUV422:
        decoded = image_msg_to_rgb(yuv_msg(rgb, encoding, padding=1))
        assert np.abs(decoded.astype(int) - rgb).max() <= 2, encoding


def test_hand_packing_agrees_with_cv2() -> None:
    # The test's BT.601 packing is what OpenCV itself calls UYVY / YUY2.
    rgb = smooth_rgb()
    for order, code in (("uyvy", cv2.COLOR_RGB2YUV_UYVY), ("yuyv", cv2.COLOR_RGB2YUV_YUY2)):
        ours = np.frombuffer(yuv422_bytes(rgb, order), dtype=np.uint8).astype(int)
        theirs = cv2.cvtColor(rgb, code).reshape(-1).astype(int)
        assert np.abs(ours - theirs).max() <= 3, order


def test_yuv422_rejects_an_odd_width() -> None:
    msg = yuv_msg(smooth_rgb(4, 6), "yuv422")
    msg.width = 5
    with pytest.raises(FrameError, match="yuv422 needs an even width"):
        image_msg_to_rgb(msg)


def test_yuv422_step_and_length_are_checked() -> None:
    msg = yuv_msg(smooth_rgb(4, 6), "yuyv")
    msg.step = 11
    with pytest.raises(FrameError, match="step 11 is smaller than width 6 x 2 bytes"):
        image_msg_to_rgb(msg)
    msg = yuv_msg(smooth_rgb(4, 6), "uyvy")
    msg.data = bytes(msg.data)[:-1]
    with pytest.raises(FrameError, match="truncated data"):
        image_msg_to_rgb(msg)


# --- CompressedImage ---------------------------------------------------------------------


def encode(rgb_or_gray: np.ndarray, ext: str, *params: int) -> bytes:
    image = rgb_or_gray
    if image.ndim == 3 and image.shape[2] >= 3:  # cv2 writes BGR(A)
        image = cv2.cvtColor(
            image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        )
    ok, buffer = cv2.imencode(ext, image, list(params))
    assert ok
    return buffer.tobytes()


def compressed(data: bytes, fmt: str) -> CompressedImage:
    return CompressedImage(format=fmt, data=data)


@pytest.mark.parametrize(
    "fmt", ["png", "bgr8; png compressed bgr8", "rgb8; png compressed bgr8", "", "mystery"]
)
def test_png_decodes_exactly(fmt: str) -> None:
    rgb = smooth_rgb(30, 40)
    decoded = compressed_msg_to_rgb(compressed(encode(rgb, ".png"), fmt))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, rgb)


@pytest.mark.parametrize(
    "fmt",
    [
        "jpeg",
        "jpg",
        "JPEG",
        "image/jpeg",
        "bgr8; jpeg compressed bgr8",
        "rgb8; jpeg compressed bgr8",
        "",
    ],
)
def test_jpeg_decodes_close_to_the_original(fmt: str) -> None:
    rgb = smooth_rgb(32, 48)
    data = encode(rgb, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 95)
    decoded = compressed_msg_to_rgb(compressed(data, fmt), width=48, height=32)
    assert decoded.shape == (32, 48, 3)
    # Colours come back in RGB order: here R and B differ by ~60 on average.
    assert np.abs(decoded.astype(int) - rgb).mean() < 3


def test_grey_png_and_jpeg_become_three_equal_channels() -> None:
    gray = smooth_rgb(20, 30)[..., 1]
    decoded = compressed_msg_to_rgb(compressed(encode(gray, ".png"), "mono8; png compressed "))
    np.testing.assert_array_equal(decoded, np.dstack([gray] * 3))
    decoded = compressed_msg_to_rgb(compressed(encode(gray, ".jpg"), "mono8; jpeg compressed "))
    assert decoded.shape == (20, 30, 3)
    assert (decoded[..., 0] == decoded[..., 2]).all()
    assert np.abs(decoded[..., 0].astype(int) - gray).mean() < 3


@pytest.mark.parametrize("fmt", ["16UC1; png compressed ", "mono16; png compressed ", "png"])
def test_sixteen_bit_png_is_scaled_like_mono16(fmt: str) -> None:
    data = encode(GRAY16, ".png")
    decoded = compressed_msg_to_rgb(compressed(data, fmt))
    np.testing.assert_array_equal(decoded, pixels_and_expected("mono16")[1])


def test_png_alpha_is_dropped() -> None:
    rgba = np.concatenate([RGB, ALPHA], axis=2)
    np.testing.assert_array_equal(compressed_msg_to_rgb(compressed(encode(rgba, ".png"), "")), RGB)


def test_compressed_data_as_numpy_or_list() -> None:
    # rosbags messages carry a uint8 numpy array; hand-made duck types may carry a list.
    data = encode(RGB, ".png")
    for payload in (np.frombuffer(data, dtype=np.uint8), list(data)):
        duck = SimpleNamespace(format="png", data=payload)
        np.testing.assert_array_equal(compressed_msg_to_rgb(duck), RGB)


def test_jpeg_with_zero_padding_after_the_end_marker_is_accepted() -> None:
    data = encode(smooth_rgb(), ".jpg") + bytes(7)
    assert compressed_msg_to_rgb(compressed(data, "jpeg")).shape == (24, 32, 3)


JPEG = encode(smooth_rgb(), ".jpg")
PNG = encode(smooth_rgb(), ".png")


@pytest.mark.parametrize(
    ("data", "fmt", "message"),
    [
        (b"", "jpeg", "empty CompressedImage"),
        (bytes(12) + PNG, "16UC1; compressedDepth png", "compressedDepth is a depth image"),
        (bytes(12) + PNG, "32FC1; compressedDepth rvl", "compressedDepth"),
        (JPEG, "theora", "unsupported CompressedImage format 'theora'"),
        (JPEG, "bgr8; webp compressed bgr8", "only jpeg and png"),
        (JPEG[: len(JPEG) // 2], "jpeg", "truncated JPEG"),
        (JPEG[:-1], "jpeg", "truncated JPEG"),
        (PNG[: len(PNG) // 2], "png", "cannot decode the .*png payload"),
        (
            b"\xff\xd8\xff\xe0" + RNG.bytes(400) + b"\xff\xd9",
            "jpeg",
            "no header with the image size",
        ),
        (b"GIF89a" + bytes(40), "", "neither JPEG nor PNG .*47 49 46 38"),
        (bytes(100), "jpeg", "neither JPEG nor PNG"),
        (JPEG, "png", "format 'png' but the payload is jpeg"),
        (PNG, "bgr8; jpeg compressed bgr8", "but the payload is png"),
    ],
)
def test_bad_compressed_frames_raise_frame_error_saying_why(
    data: bytes, fmt: str, message: str
) -> None:
    with pytest.raises(FrameError, match=message):
        compressed_msg_to_rgb(compressed(data, fmt))


def test_a_png_claiming_too_many_pixels_is_refused() -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # 30 GB of RGB
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(100)))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(FrameError, match=r"png header declares 100000x100000 = 10000.0 MPixel"):
        compressed_msg_to_rgb(compressed(bomb, "png"))


def test_the_size_a_jpeg_declares_is_read_before_decoding_and_bounded() -> None:
    # A 64 KB APP1 (EXIF) segment before the frame header, as cameras write it.
    app1 = b"\xff\xe1" + struct.pack(">H", 65_000) + bytes(64_998)
    jpeg = bytearray(JPEG[:2] + app1 + JPEG[2:])
    sof = jpeg.index(b"\xff\xc0")
    assert validate_compressed_msg(compressed(bytes(jpeg), "jpeg"), max_pixels=32 * 24)[1] == "jpeg"
    with pytest.raises(FrameError, match=r"jpeg header declares 32x24 = 0.0 MPixel, more than"):
        validate_compressed_msg(compressed(bytes(jpeg), "jpeg"), max_pixels=32 * 24 - 1)
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 16_000, 16_000)
    with pytest.raises(FrameError, match=r"jpeg header declares 16000x16000 = 256.0 MPixel"):
        compressed_msg_to_rgb(compressed(bytes(jpeg), "jpeg"))
    no_frame_header = JPEG[:2] + b"\xff\xd9"
    with pytest.raises(FrameError, match="jpeg payload has no header with the image size"):
        compressed_msg_to_rgb(compressed(no_frame_header, "jpeg"))


def test_raw_images_larger_than_max_pixels_are_refused() -> None:
    msg = make_msg("rgb8")
    pixels = msg.width * msg.height
    assert image_msg_to_rgb(msg, max_pixels=pixels).shape == (msg.height, msg.width, 3)
    with pytest.raises(FrameError, match=f"image is {msg.width}x{msg.height} .* more than"):
        image_msg_to_rgb(msg, max_pixels=pixels - 1)


def test_compressed_size_must_match_a_declared_one() -> None:
    msg = compressed(PNG, "png")
    assert compressed_msg_to_rgb(msg, width=32, height=24).shape == (24, 32, 3)
    with pytest.raises(FrameError, match=r"decoded png is 32x24, expected 64x48"):
        compressed_msg_to_rgb(msg, width=64, height=48)
    with pytest.raises(FrameError, match=r"expected \*x20"):
        compressed_msg_to_rgb(msg, height=20)


# --- camera_info -------------------------------------------------------------------------


def camera_info(**changes: object) -> CameraInfo:
    info = CameraInfo(
        width=640,
        height=480,
        distortion_model="plumb_bob",
        d=[0.0] * 5,
        k=[500.0, 0.0, 319.5, 0.0, 500.0, 239.5, 0.0, 0.0, 1.0],
        p=[500.0, 0.0, 319.5, 0.0, 0.0, 500.0, 239.5, 0.0, 0.0, 0.0, 1.0, 0.0],
    )
    info.header.frame_id = "camera_optical"
    for name, value in changes.items():
        setattr(info, name, value)
    return info


def test_a_matching_rectified_camera_info_has_no_problems() -> None:
    assert check_camera_info(camera_info(), 640, 480, "camera_optical") == []
    # Any object with the fields will do, and an empty d is no distortion.
    duck = SimpleNamespace(
        width=640,
        height=480,
        k=[500.0, 0, 319.5, 0, 500.0, 239.5, 0, 0, 1],
        d=[],
        distortion_model="",
        header=SimpleNamespace(frame_id="cam"),
    )
    assert check_camera_info(duck, 640, 480, "cam") == []


@pytest.mark.parametrize(
    ("changes", "image", "message"),
    [
        ({}, (320, 240, "camera_optical"), "camera_info is for 640x480 images but the image is "),
        (
            {},
            (640, 480, "base_link"),
            "frame_id 'camera_optical' differs from the image's 'base_link'",
        ),
        ({"k": [0.0] * 9}, (640, 480, "camera_optical"), "k is all zero"),
        (
            {"k": [500.0, 0, 319.5, 0, -500.0, 239.5, 0, 0, 1]},
            (640, 480, "camera_optical"),
            "no usable focal length: fx=500 fy=-500",
        ),
        (
            {"d": [-0.28, 0.07, 0.0, 0.0, 0.0]},
            (640, 480, "camera_optical"),
            r"non-zero plumb_bob coefficients d=\[-0.28, 0.07, 0, 0, 0\]: the model assumes "
            "rectified images",
        ),
        ({"binning_x": 2}, (640, 480, "camera_optical"), "binning or a region of interest"),
    ],
)
def test_camera_info_problems_are_named(changes: dict, image: tuple, message: str) -> None:
    problems = check_camera_info(camera_info(**changes), *image)
    assert len(problems) == 1, problems
    assert re.search(message, problems[0]), problems[0]


def test_camera_info_problems_add_up() -> None:
    problems = check_camera_info(camera_info(k=[0.0] * 9, d=[0.1]), 320, 240, "other")
    assert len(problems) == 4


# --- field of view -----------------------------------------------------------------------


def render(camera: PinholeCamera) -> np.ndarray:
    """A scene of pure ray directions: each pixel's colour depends only on its ray."""
    v, u = np.mgrid[0 : camera.height, 0 : camera.width].astype(np.float64)
    x, y = (u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy
    rgb = np.stack(
        [
            128 + 90 * np.sin(8 * x),
            128 + 90 * np.sin(8 * y + 0.3),
            128 + 60 * np.cos(5 * x - 6 * y),
        ],
        axis=2,
    )
    return np.round(rgb).astype(np.uint8)


MODEL = PinholeCamera(128, 96, 105.0, 105.0, 63.5, 47.5)  # models/default/model.json


def interior_error(got: np.ndarray, want: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    return np.abs(got[rows, cols].astype(int) - want[rows, cols])


@pytest.mark.parametrize(
    "camera",
    [
        # Wider and off-centre; 4.8x denser, so area-resized first.
        PinholeCamera(640, 480, 500.0, 500.0, 331.2, 228.7),
        PinholeCamera(640, 480, 500.0, 450.0, 320.0, 240.0),  # non-square pixels
        PinholeCamera(1280, 720, 700.0, 700.0, 640.0, 360.0),  # 16:9, 6.7x denser
        PinholeCamera(200, 150, 150.0, 150.0, 100.0, 74.0),  # < 2x denser: warped directly
    ],
)
def test_adapter_shows_the_model_the_rays_it_expects(camera: PinholeCamera) -> None:
    adapter = FieldOfViewAdapter(camera, MODEL)
    assert adapter.coverage == 1.0
    assert not adapter.is_identity_scale
    assert "cropping to the model's field of view (coverage 100%)" in adapter.describe()
    got = adapter.apply(render(camera))
    assert got.shape == (96, 128, 3)
    assert got.dtype == np.uint8
    error = interior_error(got, render(MODEL), slice(2, -2), slice(2, -2))
    # Rays a quarter of a model pixel off would already average ~1 in the red channel.
    assert error.mean(axis=(0, 1)).max() < 0.4
    assert error.max() <= 2


def test_narrower_camera_leaves_black_borders() -> None:
    camera = PinholeCamera(640, 480, 700.0, 700.0, 319.5, 239.5)
    adapter = FieldOfViewAdapter(camera, MODEL)
    # |u - 63.5| <= 320 * 105 / 700 = 48 keeps columns 16..111; rows 12..83 likewise.
    assert adapter.coverage == pytest.approx(96 * 72 / (128 * 96))
    assert adapter.describe().endswith(
        "the camera sees less than the model (coverage 56%); borders are black"
    )
    got = adapter.apply(render(camera))
    seen = np.zeros((96, 128), dtype=bool)
    seen[12:84, 16:112] = True
    assert (got[~seen] == 0).all()
    error = interior_error(got, render(MODEL), slice(13, 83), slice(17, 111))
    assert error.mean(axis=(0, 1)).max() < 0.4
    assert got[12:84, 16:112].min(axis=(0, 1)).tolist() != [0, 0, 0]


def test_same_field_of_view_is_a_plain_resize() -> None:
    # The training reference camera at 640x480 and the model's input: a 5x resize.
    camera = PinholeCamera(640, 480, 525.0, 525.0, 319.5, 239.5)
    adapter = FieldOfViewAdapter(camera, MODEL)
    assert adapter.is_identity_scale
    assert adapter.coverage == 1.0
    assert adapter.describe() == (
        "camera fx=525.0 fy=525.0 cx=319.5 cy=239.5 640x480 -> model fx=105.0 fy=105.0 "
        "cx=63.5 cy=47.5 128x96: same field of view, a plain resize (coverage 100%)"
    )
    frame = render(camera)
    resized = cv2.resize(frame, (128, 96), interpolation=cv2.INTER_AREA)
    assert np.abs(adapter.apply(frame).astype(int) - resized).mean() < 1
    # Upsampling a smaller camera with the same field of view is a plain resize too.
    upsampled = FieldOfViewAdapter((64, 48, 52.5, 52.5, 31.5, 23.5), MODEL)
    assert upsampled.is_identity_scale
    assert upsampled.coverage == 1.0  # the outer model pixels see the outer half pixels


def test_a_much_denser_camera_is_area_averaged_not_aliased() -> None:
    # One-pixel stripes, 4.8 camera pixels per model pixel: bilinear sampling alone picks
    # whole stripes (moire: mean deviation ~63, max ~120); area-resizing to ~2x first
    # leaves a grey with some ripple (the ~2x image still holds beats of the stripes).
    camera = PinholeCamera(640, 480, 500.0, 500.0, 319.5, 239.5)
    stripes = np.zeros((480, 640, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    got = FieldOfViewAdapter(camera, MODEL).apply(stripes)[2:-2, 2:-2].astype(int)
    assert np.abs(got - 127.5).mean() < 24
    assert np.abs(got - 127.5).max() < 40


def test_a_shifted_principal_point_is_not_a_plain_resize() -> None:
    shifted = FieldOfViewAdapter((640, 480, 525.0, 525.0, 322.5, 239.5), MODEL)
    assert not shifted.is_identity_scale  # 3 source pixels = 0.6 model pixels
    assert shifted.coverage < 1
    tiny = FieldOfViewAdapter((640, 480, 525.0, 525.0, 320.0, 239.5), MODEL)
    assert tiny.is_identity_scale  # 0.1 model pixels


@pytest.mark.parametrize(
    "camera",
    [
        (64, 48, 52.5, 52.5, 31.5, 23.5),  # edge pixels sample the half pixel past the centres
        (640, 480, 700.0, 700.0, 319.5, 239.5),
        (640, 480, 525.0, 525.0, 330.5, 239.5),
    ],
)
def test_seen_pixels_are_never_darkened_by_the_border(camera: tuple) -> None:
    adapter = FieldOfViewAdapter(camera, MODEL)
    got = adapter.apply(np.full((camera[1], camera[0], 3), 200, dtype=np.uint8))
    assert (got > 0).mean() == pytest.approx(adapter.coverage)
    assert set(np.unique(got)) <= {0, 200}


def test_adapter_from_camera_info() -> None:
    info = camera_info()
    adapter = FieldOfViewAdapter.from_camera_info(info, 128, 96, [105.0, 105.0, 63.5, 47.5])
    assert adapter.source == PinholeCamera(640, 480, 500.0, 500.0, 319.5, 239.5)
    assert adapter.target == MODEL
    info.p = [480.0, 0.0, 310.0, 0.0, 0.0, 470.0, 230.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    rectified = FieldOfViewAdapter.from_camera_info(
        info, 128, 96, (105, 105, 63.5, 47.5), rectified=True
    )
    assert rectified.source == PinholeCamera(640, 480, 480.0, 470.0, 310.0, 230.0)


def test_adapter_rejects_bad_cameras_and_frames() -> None:
    with pytest.raises(
        ValueError, match="source camera: intrinsics must be finite with fx, fy > 0"
    ):
        FieldOfViewAdapter.from_camera_info(
            camera_info(k=[0.0] * 9), 128, 96, (105, 105, 63.5, 47.5)
        )
    with pytest.raises(ValueError, match="model camera: empty image size 0x96"):
        FieldOfViewAdapter((640, 480, 500, 500, 320, 240), (0, 96, 105, 105, 63.5, 47.5))
    with pytest.raises(ValueError, match="expected width, height, fx, fy, cx, cy"):
        FieldOfViewAdapter((640, 480, 500, 500), MODEL)
    adapter = FieldOfViewAdapter((640, 480, 500, 500, 319.5, 239.5), MODEL)
    with pytest.raises(
        FrameError, match="frame is 320x240, the camera's intrinsics are for 640x480"
    ):
        adapter.apply(np.zeros((240, 320, 3), dtype=np.uint8))


def test_adapter_takes_read_only_frames_straight_from_a_message() -> None:
    camera = PinholeCamera(640, 480, 500.0, 500.0, 319.5, 239.5)
    frame = render(camera)
    msg = Image(height=480, width=640, encoding="rgb8", step=640 * 3, data=frame.tobytes())
    rgb = image_msg_to_rgb(msg)
    np.testing.assert_array_equal(
        FieldOfViewAdapter(camera, MODEL).apply(rgb), FieldOfViewAdapter(camera, MODEL).apply(frame)
    )
