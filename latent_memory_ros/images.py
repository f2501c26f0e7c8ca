"""ROS camera messages to RGB arrays, and the model's field of view, all without ROS.

- :func:`decode_frame`: the one decoder of the node, the bag reader and the datasets
  (Image or CompressedImage), so offline evaluation decodes exactly as the node does.
- :func:`image_msg_to_rgb`: sensor_msgs/Image, validated before any byte is read, then
  one numpy/OpenCV path on every machine: a strided view of ``msg.data`` that honours
  ``msg.step`` (row padding never shears the image) and one ``cv2.cvtColor``, the only
  full copy (none at all for packed rgb8). cv_bridge and rosbags-image are not used: the
  choice among them depended on the machine (cv_bridge's compiled part often breaks
  against a newer numpy, it shears rows whose padding is not whole pixels, rosbags-image
  ignores ``msg.step``), and this path is as fast, measured side by side at 640x480:
  bgr8 0.15 ms against rosbags-image's 0.13 ms, mono16 0.11 against 0.28, a padded
  bgr8 0.06 against 0.27 (docs/benchmarks.md, "Node restructuring (issue 13)").
- :func:`compressed_msg_to_rgb`: sensor_msgs/CompressedImage (JPEG or PNG, as
  image_transport's ``compressed`` plugin publishes it), checked before it is decoded
  (:func:`validate_compressed_msg`), its size read from the PNG / JPEG header first.
- Both refuse a frame of more than ``max_pixels`` pixels before anything of its size is
  allocated: a 400 KB PNG can declare 20000x20000 pixels (1.2 GB of RGB).
- :func:`check_camera_info` lists what makes a sensor_msgs/CameraInfo unfit for the model,
  and :class:`FieldOfViewAdapter` warps a camera's frames to the model's intrinsics, so a
  camera with another lens still shows the model the rays it was trained on.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np

from latent_memory_ros.defaults import DEFAULT_MAX_PIXELS


class FrameError(ValueError):
    """An image message that cannot be converted; the message says why."""


class _Encoding(NamedTuple):
    channels: int  # values per pixel in the payload: 2 for YUV 4:2:2 (Y and U, or Y and V)
    dtype: str


# sensor_msgs/image_encodings: "yuv422" is UYVY byte order (U0 Y0 V0 Y1), "yuv422_yuy2"
# is YUYV (Y0 U0 Y1 V0); newer distributions add the plain names "uyvy" and "yuyv".
# cv2's conversions are BT.601 with video-range luma (16..235), what V4L2 cameras send.
_YUV422_TO_RGB: dict[str, int] = {
    "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUY2,
    "yuyv": cv2.COLOR_YUV2RGB_YUY2,
}

SUPPORTED_ENCODINGS: dict[str, _Encoding] = {
    "rgb8": _Encoding(3, "u1"),
    "bgr8": _Encoding(3, "u1"),
    "rgba8": _Encoding(4, "u1"),
    "bgra8": _Encoding(4, "u1"),
    "mono8": _Encoding(1, "u1"),
    "mono16": _Encoding(1, "u2"),
    **{name: _Encoding(2, "u1") for name in _YUV422_TO_RGB},
}
"""Raw encodings :func:`image_msg_to_rgb` reads."""


def _check_size(width: int, height: int, max_pixels: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise FrameError(f"empty image: {width}x{height} (width x height)")
    if width * height > max_pixels:
        raise FrameError(
            f"{what} {width}x{height} = {width * height / 1e6:.1f} MPixel, more than "
            f"max_image_pixels {max_pixels} ({max_pixels / 1e6:.1f} MPixel): refused before "
            "decoding"
        )


def validate_image_msg(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> _Encoding:
    """Check the header fields against the payload and the size against ``max_pixels``;
    raise FrameError naming the problem."""
    encoding = SUPPORTED_ENCODINGS.get(msg.encoding)
    if encoding is None:
        raise FrameError(
            f"unsupported encoding {msg.encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})"
        )
    _check_size(msg.width, msg.height, max_pixels, "image is")
    if msg.encoding in _YUV422_TO_RGB and msg.width % 2:
        # Each pair of pixels shares one U and one V sample: an odd width has no pair.
        raise FrameError(
            f"{msg.encoding} needs an even width (pixel pairs share chroma): {msg.width}"
        )
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
    """Rounded linear scaling 0..65535 -> 0..255, what cv_bridge's convertTo does.

    ``x * 255 / 65535`` is ``x / 257``, never half-way between two integers, so OpenCV's
    rounding equals ``(x * 255 + 32767) // 65535`` for every value (checked over all
    65536), at 0.08 ms instead of numpy's 2.3 ms for 640x480.
    """
    if not pixels.dtype.isnative or pixels.strides[0] % pixels.itemsize:
        pixels = pixels.astype(np.uint16)  # big-endian, or rows OpenCV cannot address
    return cv2.convertScaleAbs(pixels, alpha=255 / 65535)


# One cv2.cvtColor per encoding, over the strided view: the only copy. rgb8 needs none.
_TO_RGB: dict[str, int] = {
    "bgr8": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
    "mono16": cv2.COLOR_GRAY2RGB,
    **_YUV422_TO_RGB,
}


def image_msg_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Convert a sensor_msgs/Image to an (H, W, 3) uint8 RGB array.

    Raises :class:`FrameError` for an unsupported encoding, a header that does not match
    the payload or more than ``max_pixels`` pixels. The result may share memory with
    ``msg.data`` (packed rgb8 is returned as it is).
    """
    encoding = validate_image_msg(msg, max_pixels)
    try:
        pixels = _pixels(msg, encoding)
        if msg.encoding == "rgb8":
            return np.ascontiguousarray(pixels)
        if msg.encoding == "mono16":
            pixels = _mono16_to_mono8(pixels)
        return cv2.cvtColor(pixels, _TO_RGB[msg.encoding])
    except Exception as err:  # a validated frame that still cannot be read is bad input too
        raise FrameError(f"cannot convert {msg.encoding} image: {err}") from err


def decode_frame(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """RGB pixels of a sensor_msgs/Image or CompressedImage: the one decoder of the node,
    the bag reader and the datasets, so offline evaluation sees what the node sees.

    An rclpy message or a rosbags one alike (an Image has an ``encoding``, a
    CompressedImage a ``format``); :class:`FrameError` says why a frame cannot be used.
    """
    if hasattr(msg, "encoding"):
        return image_msg_to_rgb(msg, max_pixels)
    return compressed_msg_to_rgb(msg, max_pixels=max_pixels)


# --- sensor_msgs/CompressedImage -----------------------------------------------------------

_MAGIC = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}

# Codecs image_transport plugins (and Foxglove's CompressedImage) name that are neither
# JPEG nor PNG. compressedDepth, whose PNG/RVL follows a 12-byte depth header, is caught
# by name wherever it appears in the format.
_UNSUPPORTED_CODECS = {
    "theora",
    "zstd",
    "rvl",
    "tiff",
    "webp",
    "avif",
    "h264",
    "h265",
    "hevc",
    "av1",
    "vp8",
    "vp9",
}


def _declared_codec(fmt: str) -> str | None:
    """'jpeg' or 'png' from a CompressedImage format, None when it names no codec.

    image_transport's ``compressed`` plugin writes "<encoding>; <codec> compressed
    <target encoding>" ("bgr8; jpeg compressed bgr8", "mono8; png compressed "); older
    publishers write just "jpeg" or "png", Foxglove "jpeg"/"png"/"webp", some "image/jpeg".
    Raises FrameError for a codec this module cannot decode.
    """
    text = fmt.strip().lower()
    if "compresseddepth" in text:  # "16UC1; compressedDepth png": the PNG is not the image
        raise FrameError(
            f"unsupported CompressedImage format {fmt!r}: compressedDepth is a depth image "
            "(subscribe to a colour or mono image instead)"
        )
    head, semicolon, tail = text.partition(";")
    words = (tail if semicolon else head).split()
    codec = words[0].rsplit("/", 1)[-1] if words else ""
    codec = "jpeg" if codec == "jpg" else codec
    if codec in _MAGIC:
        return codec
    if codec in _UNSUPPORTED_CODECS:
        raise FrameError(
            f"unsupported CompressedImage format {fmt!r}: only jpeg and png can be decoded"
        )
    return None  # empty or unknown: the payload's magic bytes decide


# JPEG start-of-frame markers (SOF0-SOF15 but DHT C4, JPG C8 and DAC CC): they carry the
# frame's size. Markers without a length field: TEM and RST0-7.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _jpeg_size(data: memoryview) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame segment, None when there is none
    before the image data: the segments are walked by their lengths, nothing decoded."""
    i = 2  # after SOI
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None  # not at a marker: corrupt
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
        elif marker in _JPEG_STANDALONE:
            i += 2
        elif marker in _JPEG_SOF:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack_from(">HH", data, i + 5)
            return width, height
        elif marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header
            return None
        else:
            i += 2 + struct.unpack_from(">H", data, i + 2)[0]
    return None


def _png_size(data: memoryview) -> tuple[int, int] | None:
    """(width, height) from the IHDR chunk, which the PNG format puts first."""
    if len(data) < 24 or bytes(data[12:16]) != b"IHDR":
        return None
    return struct.unpack_from(">II", data, 16)


def validate_compressed_msg(
    msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, str]:
    """The payload (uint8) and codec ('jpeg' or 'png') of a sensor_msgs/CompressedImage
    that :func:`compressed_msg_to_rgb` can decode, read from its headers only.

    Raises :class:`FrameError` for an empty or truncated payload, an unsupported format
    or one that disagrees with the magic bytes, a header without a size, or a declared
    size of more than ``max_pixels`` pixels (OpenCV would allocate it before decoding).
    """
    try:
        payload = np.frombuffer(msg.data, dtype=np.uint8)
    except TypeError:  # a plain list of ints
        payload = np.asarray(msg.data, dtype=np.uint8)
    if payload.size == 0:
        raise FrameError(f"empty CompressedImage (format {msg.format!r})")
    declared = _declared_codec(msg.format)
    head = payload[:8].tobytes()
    codec = next((name for name, magic in _MAGIC.items() if head.startswith(magic)), None)
    if codec is None:
        raise FrameError(
            f"CompressedImage payload is neither JPEG nor PNG (format {msg.format!r}, "
            f"first bytes {head.hex(' ')})"
        )
    if declared is not None and declared != codec:
        raise FrameError(f"CompressedImage format {msg.format!r} but the payload is {codec}")
    # Some libjpeg builds decode a truncated JPEG without an error (the missing rows come
    # out grey), so its end-of-image marker is checked here; trailing zero padding is
    # tolerated. libpng rejects truncated PNGs on its own.
    if codec == "jpeg" and not payload[-64:].tobytes().rstrip(b"\0").endswith(b"\xff\xd9"):
        raise FrameError(
            f"truncated JPEG: {payload.size} bytes without the end-of-image marker FF D9"
        )
    size = (_jpeg_size if codec == "jpeg" else _png_size)(memoryview(payload))
    if size is None:
        raise FrameError(f"{codec} payload has no header with the image size")
    _check_size(*size, max_pixels, f"{codec} header declares")
    return payload, codec


def compressed_size(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) that a sensor_msgs/CompressedImage declares in its PNG / JPEG
    header, after the checks of :func:`validate_compressed_msg`; nothing is decoded."""
    payload, codec = validate_compressed_msg(msg, max_pixels)
    size = (_jpeg_size if codec == "jpeg" else _png_size)(memoryview(payload))
    assert size is not None  # validate_compressed_msg refuses a header without one
    return int(size[0]), int(size[1])


def compressed_msg_to_rgb(
    msg: Any,
    *,
    width: int | None = None,
    height: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (JPEG or PNG) to an (H, W, 3) uint8 RGB array.

    The codec comes from ``msg.format`` and must agree with the payload's magic bytes;
    an empty or unknown format leaves it to the magic bytes alone. Grey images become
    three equal channels, 16-bit PNGs are scaled to 8 bits like mono16, alpha is dropped.
    ``width``/``height``, when given, are the size the frame must have (the camera_info's,
    say). Raises :class:`FrameError` for what :func:`validate_compressed_msg` refuses,
    bytes that do not decode, or a size that differs from the declared one.
    """
    payload, codec = validate_compressed_msg(msg, max_pixels)
    # UNCHANGED keeps 16-bit depth (scaled with rounding below, as for mono16) and
    # ignores EXIF orientation: a rotated frame would no longer match its camera_info.
    try:
        decoded = cv2.imdecode(payload, cv2.IMREAD_UNCHANGED)
    except cv2.error as err:  # e.g. a header claiming more pixels than OpenCV allows
        raise FrameError(f"cannot decode the {payload.size}-byte {codec} payload: {err}") from err
    if decoded is None:
        raise FrameError(f"cannot decode the {payload.size}-byte {codec} payload")
    if decoded.dtype == np.uint16:
        decoded = _mono16_to_mono8(decoded)
    elif decoded.dtype != np.uint8:
        raise FrameError(f"unsupported {codec} sample type {decoded.dtype}")
    got_height, got_width = decoded.shape[:2]
    if (width is not None and got_width != width) or (height is not None and got_height != height):
        expected = f"{'*' if width is None else width}x{'*' if height is None else height}"
        raise FrameError(
            f"decoded {codec} is {got_width}x{got_height}, expected {expected} (width x height)"
        )
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    if channels <= 2:  # grey, or grey + alpha
        gray = decoded if decoded.ndim == 2 else decoded[..., 0]
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB if channels == 4 else cv2.COLOR_BGR2RGB)


# --- camera_info and the model's field of view ---------------------------------------------


def camera_info_topic(image_topic: str) -> str:
    """image_transport's convention: camera_info beside the image topic."""
    namespace, slash, _ = image_topic.rpartition("/")
    return f"{namespace}{slash}camera_info"


class PinholeCamera(NamedTuple):
    """Image size and intrinsics of an undistorted camera, pixel centres at integers.

    The convention of ROS camera_info and of the model's ``image.intrinsics``: the centre
    of a W-pixel-wide image is at ``(W - 1) / 2``.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def __str__(self) -> str:
        return (
            f"fx={self.fx:.1f} fy={self.fy:.1f} cx={self.cx:.1f} cy={self.cy:.1f} "
            f"{self.width}x{self.height}"
        )

    @property
    def array(self) -> np.ndarray:
        """``(fx, fy, cx, cy)`` as the training package's ``Sequence.intrinsics``."""
        return np.array([self.fx, self.fy, self.cx, self.cy])


def check_camera_info(
    info: Any, image_width: int, image_height: int, image_frame_id: str
) -> list[str]:
    """What makes ``info`` (a sensor_msgs/CameraInfo or alike) unfit for these images.

    Returns human-readable problems, empty when there are none. The model's geometry
    holds only for rectified pixels whose intrinsics are known, so a size or frame that
    differs from the image's, an uncalibrated ``k`` and non-zero distortion all count.
    """
    problems = []
    if (info.width, info.height) != (image_width, image_height):
        problems.append(
            f"camera_info is for {info.width}x{info.height} images but the image is "
            f"{image_width}x{image_height}: k does not describe its pixels"
        )
    roi = getattr(info, "roi", None)
    roi_used = roi is not None and (
        roi.x_offset
        or roi.y_offset
        or (roi.width, roi.height) not in {(0, 0), (info.width, info.height)}
    )
    if max(getattr(info, "binning_x", 0), getattr(info, "binning_y", 0)) > 1 or roi_used:
        problems.append(
            "camera_info sets binning or a region of interest: k is for the full sensor "
            "and is used as it is, without them"
        )
    if info.header.frame_id != image_frame_id:
        problems.append(
            f"camera_info frame_id {info.header.frame_id!r} differs from the image's "
            f"{image_frame_id!r}"
        )
    k = [float(v) for v in info.k]
    if len(k) != 9:
        problems.append(f"k has {len(k)} values, expected 9 (3x3 row-major)")
    elif not any(k):
        problems.append("k is all zero: the camera is not calibrated")
    elif not all(math.isfinite(v) and v > 0 for v in (k[0], k[4])):
        problems.append(f"k has no usable focal length: fx={k[0]:g} fy={k[4]:g} (must be > 0)")
    d = [float(v) for v in info.d]
    if any(d):
        coefficients = ", ".join(f"{v:g}" for v in d)
        problems.append(
            f"non-zero {info.distortion_model or 'distortion'} coefficients d=[{coefficients}]: "
            "the model assumes rectified images (image_rect from image_proc, not "
            "image_raw); rectified pixels follow p, not k"
        )
    return problems


def _pinhole(values: Sequence[float], role: str) -> PinholeCamera:
    try:
        width, height, fx, fy, cx, cy = values
    except (TypeError, ValueError):
        raise ValueError(
            f"{role}: expected width, height, fx, fy, cx, cy, got {values!r}"
        ) from None
    camera = PinholeCamera(int(width), int(height), float(fx), float(fy), float(cx), float(cy))
    if camera.width <= 0 or camera.height <= 0:
        raise ValueError(f"{role}: empty image size {camera.width}x{camera.height}")
    if not all(math.isfinite(v) for v in camera[2:]) or camera.fx <= 0 or camera.fy <= 0:
        raise ValueError(f"{role}: intrinsics must be finite with fx, fy > 0: {camera}")
    return camera


def _covered(scale: float, offset: float, source_size: int, target_size: int) -> range:
    """Target pixels along one axis whose centre maps inside the source's pixel area."""
    first = math.ceil((-0.5 - offset) / scale - 1e-9)
    last = math.floor((source_size - 0.5 - offset) / scale + 1e-9)
    return range(max(first, 0), max(min(last, target_size - 1) + 1, 0))


_IDENTITY_TOLERANCE_PX = 0.25
"""How far (target pixels, anywhere in the image) a mapping may stray from a plain resize
and still count as one: below what a model at its input size can resolve."""


class FieldOfViewAdapter:
    """Warp a camera's frames so each pixel shows the ray the model's camera would see.

    The model learnt its geometry from images with its own intrinsics; a camera with
    another field of view, resized to the model's input, would show it every angle
    scaled. Target pixel (u, v) samples the source at ``u_s = fx_s / fx_t * (u - cx_t)
    + cx_s`` (likewise v), one ``cv2.warpAffine``. Bilinear sampling aliases when it
    skips source pixels, and warpAffine has no area interpolation, so a source more than
    2x denser than the target is first area-resized to about 2x (only the part of the
    frame the target sees). Target pixels the camera does not see are black.

    ``source`` and ``target`` are ``(width, height, fx, fy, cx, cy)``, the target being
    the model's input size and intrinsics. Raises ValueError for unusable values.
    """

    def __init__(self, source: Sequence[float], target: Sequence[float]) -> None:
        self.source = _pinhole(source, "source camera")
        self.target = _pinhole(target, "model camera")
        src, dst = self.source, self.target
        scale = (src.fx / dst.fx, src.fy / dst.fy)  # source pixels per target pixel
        offset = (src.cx - scale[0] * dst.cx, src.cy - scale[1] * dst.cy)
        self._cols = _covered(scale[0], offset[0], src.width, dst.width)
        self._rows = _covered(scale[1], offset[1], src.height, dst.height)
        self.coverage: float = len(self._cols) * len(self._rows) / (dst.width * dst.height)
        """Fraction of target pixels whose ray the camera sees (1.0: none is black)."""

        def resize_error(axis: int, src_size: int, dst_size: int) -> float:
            # A whole-image resize maps u to (u + 0.5) * ratio - 0.5; the difference is
            # linear in u, so it is largest at an image edge.
            ratio = src_size / dst_size
            slope, intercept = scale[axis] - ratio, offset[axis] - (0.5 * ratio - 0.5)
            return max(abs(slope * u + intercept) for u in (-0.5, dst_size - 0.5)) / ratio

        self.is_identity_scale: bool = (
            max(resize_error(0, src.width, dst.width), resize_error(1, src.height, dst.height))
            <= _IDENTITY_TOLERANCE_PX
        )
        """True when the mapping is a plain resize of the whole image (same field of
        view): callers may skip :meth:`apply` for ``cv2.resize(..., INTER_AREA)``."""

        # Only the part of the frame the target samples is resized (area resizing costs
        # more than the warp): the target image's footprint with a target pixel and a
        # source pixel or two of margin for the filters, clipped to the frame (and at
        # least one pixel wide where the camera sees none of the target).
        crop, size, matrix = [], [], []
        for a, b, src_size, dst_size in (
            (scale[0], offset[0], src.width, dst.width),
            (scale[1], offset[1], src.height, dst.height),
        ):
            first = min(max(math.floor(b - 1.5 * a) - 1, 0), src_size - 1)
            stop = max(min(math.ceil(b + a * (dst_size + 0.5)) + 2, src_size), first + 1)
            crop.append(slice(first, stop))
            # Area-resize to ~2 source pixels per target pixel where the source is denser.
            length = stop - first
            size.append(max(1, round(length * 2 / a)) if a > 2 else length)
            # Pixel-centre aligned resize: u' = (u + 0.5) * shrink - 0.5.
            shrink = size[-1] / length
            matrix.append((a * shrink, (b - first + 0.5) * shrink - 0.5))
        self._crop = (crop[1], crop[0])
        self._prescale = None if size == [c.stop - c.start for c in crop] else (size[0], size[1])
        (ax, bx), (ay, by) = matrix
        self._matrix = np.array([[ax, 0.0, bx], [0.0, ay, by]])

    @classmethod
    def from_camera_info(
        cls,
        info: Any,
        model_width: int,
        model_height: int,
        model_intrinsics: Sequence[float],
        *,
        rectified: bool = False,
    ) -> FieldOfViewAdapter:
        """An adapter from a CameraInfo's camera to the model's (``image.intrinsics``
        [fx, fy, cx, cy] at ``image.width`` x ``image.height`` in model.json).

        ``k`` gives the camera's intrinsics; with ``rectified`` (frames from image_rect),
        ``p`` does, since image_proc rectifies to the projection matrix.
        """
        m = [float(v) for v in (info.p if rectified else info.k)]
        if len(m) != (12 if rectified else 9):
            raise ValueError(f"source camera: {'p' if rectified else 'k'} has {len(m)} values")
        fx, fy, cx, cy = (m[0], m[5], m[2], m[6]) if rectified else (m[0], m[4], m[2], m[5])
        return cls(
            (info.width, info.height, fx, fy, cx, cy),
            (model_width, model_height, *model_intrinsics),
        )

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """What the model's camera would see: (target height, target width, 3) from an
        (source height, source width, 3) frame, same dtype.

        Raises :class:`FrameError` for a frame of another size than the source camera's.
        """
        src, dst = self.source, self.target
        if rgb.shape[:2] != (src.height, src.width):
            raise FrameError(
                f"frame is {rgb.shape[1]}x{rgb.shape[0]}, the camera's intrinsics are for "
                f"{src.width}x{src.height}"
            )
        rgb = rgb[self._crop]
        if self._prescale is not None:
            rgb = cv2.resize(rgb, self._prescale, interpolation=cv2.INTER_AREA)
        # Replicating the border fills the half pixel between the outer pixel centres and
        # the image edge (as cv2.resize does); what lies beyond is blacked out below.
        out = cv2.warpAffine(
            rgb,
            self._matrix,
            (dst.width, dst.height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        if self.coverage < 1:
            out[: self._rows.start] = 0
            out[self._rows.stop :] = 0
            out[:, : self._cols.start] = 0
            out[:, self._cols.stop :] = 0
        return out

    def describe(self) -> str:
        """One line for the log: both cameras and what the adapter does to the frames."""
        # Rounded down: "100%" only when no pixel is black.
        coverage = f"coverage {math.floor(self.coverage * 100 + 1e-9)}%"
        if self.is_identity_scale:
            verdict = f"same field of view, a plain resize ({coverage})"
        elif self.coverage >= 1:
            verdict = f"cropping to the model's field of view ({coverage})"
        else:
            verdict = f"the camera sees less than the model ({coverage}); borders are black"
        return f"camera {self.source} -> model {self.target}: {verdict}"


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_ENCODINGS",
    "FieldOfViewAdapter",
    "FrameError",
    "PinholeCamera",
    "camera_info_topic",
    "check_camera_info",
    "compressed_msg_to_rgb",
    "compressed_size",
    "decode_frame",
    "image_msg_to_rgb",
    "validate_compressed_msg",
    "validate_image_msg",
]
