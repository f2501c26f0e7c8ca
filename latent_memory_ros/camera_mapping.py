"""What the node does with camera_info, without ROS: check it against each image and
bring the image to the model's field of view (or hand a camera-aware model the
intrinsics). The mapping is rebuilt only when camera_info or the image size changes."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from latent_memory_ros import images

__all__ = ["CameraInfoMapping", "unusable_intrinsics"]

# A field of view outside this range is no camera's: a corrupted or uninitialised
# camera_info (found by benchmarks/fuzz.py: fx 2.6e-181 with fy 5.9e305 passed "> 0",
# overflowed float32 and made every following frame fail in the cues).
MIN_FOV_DEG, MAX_FOV_DEG = 1.0, 179.0


def unusable_intrinsics(k: list[float], width: int, height: int) -> str | None:
    """Why ``k`` (3x3 row-major) cannot be this camera's at ``width`` x ``height``:
    non-finite, a field of view outside 1-179 degrees, or a principal point outside the
    image; None when it can."""
    if len(k) != 9 or not all(math.isfinite(v) for v in k):
        return "k must be 9 finite numbers"
    fx, fy, cx, cy = k[0], k[4], k[2], k[5]
    for axis, f, size in (("horizontal", fx, width), ("vertical", fy, height)):
        fov = 2 * math.degrees(math.atan2(size / 2, f)) if f > 0 else 180.0
        if not MIN_FOV_DEG <= fov <= MAX_FOV_DEG:
            return f"fx={fx:g} fy={fy:g} give a {axis} field of view of {fov:.3g} degrees"
    if not (0 <= cx <= width and 0 <= cy <= height):
        return f"principal point ({cx:g}, {cy:g}) outside the {width}x{height} image"
    return None


def _warning_key(text: str) -> str:
    """A problem's text without its numbers and quoted names: warnings are said once per
    kind of problem, so a stream of ever-different camera_info does not grow the set."""
    return re.sub(r"'[^']*'|\"[^\"]*\"|[-+]?[\d.]+(?:e[-+]?\d+)?|\[[^\]]*\]", "#", text)


class CameraInfoMapping:
    """The latest camera_info (``info``, a sensor_msgs/CameraInfo or anything with its
    fields) applied to the frames of one runtime. ``warn_once(key, text)`` reports each
    problem once; ``log`` (info, warning) says what mapping is used."""

    def __init__(self, runtime: Any, log: Any, warn_once: Callable[[str, str], None]) -> None:
        self.runtime = runtime
        self.info: Any | None = None
        self._log, self._warn_once = log, warn_once
        self._adapter: images.FieldOfViewAdapter | None = None
        # (info width, info height, info K, image width, image height) of _adapter.
        self._key: tuple | None = None

    def apply(self, rgb: np.ndarray, frame_id: str) -> np.ndarray:
        """Check camera_info against the image; map it to the model's field of view."""
        info = self.info
        if info is None:
            return rgb
        height, width = rgb.shape[:2]
        for problem in images.check_camera_info(info, width, height, frame_id):
            self._warn_once(_warning_key(problem), f"camera_info: {problem}")
        key = (info.width, info.height, tuple(info.k), width, height)
        if key != self._key:
            self._key = key
            self._adapter = None
            if info.width == width and info.height == height:
                self._set_up(info, width, height)
        return self._adapter.apply(rgb) if self._adapter is not None else rgb

    def _set_up(self, info: Any, width: int, height: int) -> None:
        runtime = self.runtime
        k = [float(v) for v in info.k]
        problem = unusable_intrinsics(k, width, height)
        if problem is not None:  # the frames go on with the model's own camera
            if runtime.camera_aware:
                w, h, intrinsics = runtime.input_camera
                runtime.set_camera(intrinsics, w, h)
            self._warn_once(_warning_key(problem), f"camera_info not used: {problem}")
            return
        if runtime.camera_aware:
            # The network reads the intrinsics (model.json inputs_optional 'camera'):
            # frames of any field of view go in as they are.
            try:
                runtime.set_camera((k[0], k[4], k[2], k[5]), width, height)
            except (ValueError, IndexError) as err:
                self._warn_once(_warning_key(str(err)), f"camera_info not used: {err}")
            else:
                self._log.info(
                    f"camera_info: the model takes this camera as it is (fx {k[0]:.1f}, "
                    f"fy {k[4]:.1f}, cx {k[2]:.1f}, cy {k[5]:.1f} at {width}x{height})"
                )
            return
        w, h, intrinsics = runtime.input_camera
        try:
            adapter = images.FieldOfViewAdapter.from_camera_info(info, w, h, intrinsics)
        except ValueError as err:  # check_camera_info has said what is wrong
            self._warn_once(_warning_key(str(err)), f"camera_info not used: {err}")
        else:
            if not adapter.is_identity_scale:
                self._adapter = adapter
                self._log.warning(f"camera_info: {adapter.describe()}")

    def for_queries(self) -> Callable[[np.ndarray], np.ndarray]:
        """The mapping of the latest frames, for query images taken later: applied to
        images of their size only. Call it with the localizer lock held; the function it
        returns runs without."""
        adapter, key = self._adapter, self._key

        def apply(rgb: np.ndarray) -> np.ndarray:
            if adapter is not None and key[3:] == (rgb.shape[1], rgb.shape[0]):
                return adapter.apply(rgb)
            return rgb

        return apply
