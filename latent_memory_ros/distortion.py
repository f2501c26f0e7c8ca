"""Undistort camera frames to a pinhole camera, with OpenCV.

The model's geometry holds only for pinhole pixels (images.py, ``check_camera_info``):
recorded data often comes raw, with a lens model beside it. Two models are read:

- ``plumb_bob`` (ROS camera_info; Kalibr's and EuRoC's ``radial-tangential``; OpenCV's
  k1 k2 p1 p2 [k3 ...]), undistorted with ``cv2.initUndistortRectifyMap``;
- ``equidistant`` (ROS; Kalibr's fisheye model, OpenCV's ``cv2.fisheye``: k1..k4),
  undistorted with ``cv2.fisheye.initUndistortRectifyMap``.

The pinhole camera a frame is mapped to keeps the frame's size and is chosen so that every
output pixel sees the scene (OpenCV's ``alpha=0`` / ``balance=0``): no black borders,
which the model never saw in training. The maps are computed once per camera;
:meth:`Undistorter.apply` is one ``cv2.remap`` per frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from latent_memory_ros.images import PinholeCamera

PLUMB_BOB = "plumb_bob"
EQUIDISTANT = "equidistant"

# Names other tools give the same two models.
_ALIASES = {
    "plumb_bob": PLUMB_BOB,
    "radtan": PLUMB_BOB,
    "radial-tangential": PLUMB_BOB,
    "rational_polynomial": PLUMB_BOB,  # OpenCV's 8-coefficient form of the same model
    "equidistant": EQUIDISTANT,
    "fisheye": EQUIDISTANT,
    "kannala_brandt": EQUIDISTANT,
}


def distortion_model(name: str) -> str:
    """``plumb_bob`` or ``equidistant`` for a model name from camera_info, Kalibr or
    OpenCV; raises ValueError naming the models that can be read."""
    model = _ALIASES.get(name.strip().lower())
    if model is None:
        raise ValueError(
            f"unsupported distortion model {name!r}; supported: {', '.join(sorted(_ALIASES))}"
        )
    return model


class Undistorter:
    """Maps frames of a distorted camera (``width`` x ``height``, ``fx fy cx cy``,
    coefficients ``d`` of ``model``) to a pinhole camera of the same size, :attr:`camera`.

    Raises ValueError for an unknown model or a coefficient count it does not take.
    """

    def __init__(
        self,
        width: int,
        height: int,
        intrinsics: Sequence[float],
        d: Sequence[float],
        model: str = PLUMB_BOB,
    ) -> None:
        self.model = distortion_model(model)
        fx, fy, cx, cy = (float(v) for v in intrinsics)
        k = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        coefficients = np.asarray(d, dtype=np.float64).ravel()
        self.width, self.height = int(width), int(height)
        size = (self.width, self.height)
        if self.model == EQUIDISTANT:
            if coefficients.size != 4:
                raise ValueError(
                    f"equidistant distortion takes 4 coefficients k1..k4, got {coefficients.size}"
                )
            d4 = coefficients.reshape(4, 1)
            new_k = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(
                k, d4, size, np.eye(3), balance=0.0
            )
            self._maps = cv2.fisheye.initUndistortRectifyMap(
                k, d4, np.eye(3), new_k, size, cv2.CV_16SC2
            )
        else:
            if coefficients.size not in (4, 5, 8, 12, 14):
                raise ValueError(
                    f"plumb_bob distortion takes 4, 5, 8, 12 or 14 coefficients, "
                    f"got {coefficients.size}"
                )
            new_k, _ = cv2.getOptimalNewCameraMatrix(k, coefficients, size, 0.0, size)
            self._maps = cv2.initUndistortRectifyMap(
                k, coefficients, None, new_k, size, cv2.CV_16SC2
            )
        self.camera = PinholeCamera(
            self.width,
            self.height,
            float(new_k[0, 0]),
            float(new_k[1, 1]),
            float(new_k[0, 2]),
            float(new_k[1, 2]),
        )
        """The pinhole camera the frames are mapped to (same size as the input)."""

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """The undistorted frame: same size and dtype, bilinear sampling."""
        if rgb.shape[:2] != (self.height, self.width):
            raise ValueError(
                f"frame is {rgb.shape[1]}x{rgb.shape[0]}, the lens model is for "
                f"{self.width}x{self.height}"
            )
        return cv2.remap(rgb, *self._maps, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def needs_undistortion(d: Sequence[float]) -> bool:
    """Whether any distortion coefficient is non-zero."""
    return bool(np.any(np.asarray(d, dtype=np.float64) != 0.0))
