"""sensor_msgs/Image to an RGB array, validated before any byte is read.

Three converters, tried in order: cv_bridge (the ROS standard, when it imports and passes
a self-test: its compiled part often breaks against a newer numpy), rosbags-image, then
plain numpy. Each reads ``msg.data`` in place, through a strided view that honours
``msg.step`` so row padding never shears the image; the colour conversion makes the only
full copy (none at all for packed rgb8).
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np


class FrameError(ValueError):
    """An image message that cannot be converted; the message says why."""


class _Encoding(NamedTuple):
    channels: int
    dtype: str


SUPPORTED_ENCODINGS: dict[str, _Encoding] = {
    "rgb8": _Encoding(3, "u1"),
    "bgr8": _Encoding(3, "u1"),
    "rgba8": _Encoding(4, "u1"),
    "bgra8": _Encoding(4, "u1"),
    "mono8": _Encoding(1, "u1"),
    "mono16": _Encoding(1, "u2"),
}


def validate_image_msg(msg: Any) -> _Encoding:
    """Check the header fields against the payload; raise FrameError naming the problem."""
    encoding = SUPPORTED_ENCODINGS.get(msg.encoding)
    if encoding is None:
        raise FrameError(
            f"unsupported encoding {msg.encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})"
        )
    if msg.height <= 0 or msg.width <= 0:
        raise FrameError(f"empty image: {msg.width}x{msg.height} (width x height)")
    row_bytes = msg.width * encoding.channels * np.dtype(encoding.dtype).itemsize
    if msg.step < row_bytes:
        raise FrameError(
            f"step {msg.step} is smaller than width {msg.width} x {row_bytes // msg.width} "
            f"bytes per {msg.encoding} pixel = {row_bytes}"
        )
    if len(msg.data) < msg.step * msg.height:
        raise FrameError(
            f"truncated data: {len(msg.data)} bytes, expected step {msg.step} x height "
            f"{msg.height} = {msg.step * msg.height}"
        )
    return encoding


def _pixels(msg: Any, encoding: _Encoding) -> np.ndarray:
    """An (H, W, C) view of ``msg.data`` with the message's row stride; no copy."""
    dtype = np.dtype(encoding.dtype)
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    flat = np.frombuffer(msg.data, dtype=np.uint8)
    return np.ndarray(
        shape=(msg.height, msg.width, encoding.channels),
        dtype=dtype,
        buffer=flat,
        strides=(msg.step, encoding.channels * dtype.itemsize, dtype.itemsize),
    )


def _mono16_to_mono8(pixels: np.ndarray) -> np.ndarray:
    # Rounded linear scaling 0..65535 -> 0..255, what cv_bridge's convertTo does.
    return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _numpy_to_rgb(msg: Any, encoding: _Encoding) -> np.ndarray:
    pixels = _pixels(msg, encoding)
    if msg.encoding == "mono16":
        pixels = _mono16_to_mono8(pixels)
    if encoding.channels == 1:
        return np.ascontiguousarray(np.broadcast_to(pixels, pixels.shape[:2] + (3,)))
    if msg.encoding.startswith("bgr"):
        return np.ascontiguousarray(pixels[..., 2::-1])
    return np.ascontiguousarray(pixels[..., :3])


def _rosbags_to_rgb(msg: Any, encoding: _Encoding) -> np.ndarray:
    # message_to_cvimage reads the payload as packed rows (it ignores msg.step) and
    # truncates when it scales 16 to 8 bits, so it gets packed pixels, and mono16 already
    # rounded to mono8 like the other converters do.
    pixels = _pixels(msg, encoding)
    if msg.encoding == "mono16":
        packed, name = _mono16_to_mono8(pixels), "mono8"
    elif pixels.flags.c_contiguous:
        packed, name = msg.data, msg.encoding
    else:
        packed, name = np.ascontiguousarray(pixels), msg.encoding
    view = SimpleNamespace(
        height=msg.height, width=msg.width, encoding=name, is_bigendian=0, data=packed
    )
    return np.ascontiguousarray(_rosbags_message_to_cvimage(view, "rgb8"))


def _cv_bridge_to_rgb(msg: Any, encoding: _Encoding) -> np.ndarray:
    pixel_bytes = encoding.channels * np.dtype(encoding.dtype).itemsize
    # cv_bridge derives the row length as step // pixel_bytes, which shears rows whose
    # padding is not a whole number of pixels.
    if msg.step % pixel_bytes == 0:
        try:
            return np.asarray(_cv_bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
        except Exception:
            # Its Python half lags numpy releases (big-endian mono16 fails under numpy 2);
            # the frame itself is valid, so the next converter reads it.
            pass
    return _next_converter(_cv_bridge_to_rgb)(msg, encoding)


def _load_cv_bridge() -> Any:
    try:
        from cv_bridge import CvBridge
        from sensor_msgs.msg import Image

        bridge = CvBridge()
        probe = Image(height=1, width=2, encoding="bgr8", step=6, data=bytes([1, 2, 3, 4, 5, 6]))
        if bridge.imgmsg_to_cv2(probe, desired_encoding="rgb8").tolist() != [
            [[3, 2, 1], [6, 5, 4]]
        ]:
            return None
        return bridge
    except Exception:  # ImportError, or a compiled part built against another numpy/OpenCV
        return None


def _load_rosbags_message_to_cvimage() -> Callable[..., np.ndarray] | None:
    try:
        from rosbags.image import message_to_cvimage
    except ImportError:
        return None
    return message_to_cvimage


_Converter = Callable[[Any, _Encoding], np.ndarray]

_cv_bridge = _load_cv_bridge()
_rosbags_message_to_cvimage = _load_rosbags_message_to_cvimage()

CONVERTERS: dict[str, _Converter] = {
    name: fn
    for name, fn, usable in (
        ("cv_bridge", _cv_bridge_to_rgb, _cv_bridge is not None),
        ("rosbags-image", _rosbags_to_rgb, _rosbags_message_to_cvimage is not None),
        ("numpy", _numpy_to_rgb, True),
    )
    if usable
}
"""Usable converters, in the order they are preferred."""

CONVERTER: str = next(iter(CONVERTERS))
"""Name of the converter :func:`image_msg_to_rgb` uses."""


def _next_converter(current: _Converter) -> _Converter:
    converters = list(CONVERTERS.values())
    return converters[converters.index(current) + 1]


def image_msg_to_rgb(msg: Any, converter: str | None = None) -> np.ndarray:
    """Convert a sensor_msgs/Image to an (H, W, 3) uint8 RGB array.

    ``converter`` picks one of :data:`CONVERTERS` (tests compare them); the default is
    :data:`CONVERTER`. Raises :class:`FrameError` for an unsupported encoding or a header
    that does not match the payload. The result may share memory with ``msg.data``.
    """
    convert = CONVERTERS[converter or CONVERTER]
    encoding = validate_image_msg(msg)
    try:
        return convert(msg, encoding)
    except Exception as err:  # a validated frame a converter still chokes on is bad input too
        raise FrameError(f"cannot convert {msg.encoding} image: {err}") from err


__all__ = [
    "CONVERTER",
    "CONVERTERS",
    "SUPPORTED_ENCODINGS",
    "FrameError",
    "image_msg_to_rgb",
    "validate_image_msg",
]
