"""Classical two-view motion cues that the student network takes beside the image.

A network trained briefly on two CPU cores does not learn yaw from pixels (see the
project's lessons); tracked corners and an essential matrix give it an unbiased, noisy
rotation and a translation direction for free. The same function runs in training (on
cached renders) and in the runtime (on live frames), so the network sees one definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CUES_VERSION = "lk-essential/1"
CUE_DIM = 15
# Layout of the cue vector (documented in docs/model-format.md):
#   0      valid (1 when the two-view estimate succeeded)
#   1:4    rotation of the current camera in the previous camera frame, rotation vector (rad)
#   4:7    unit translation direction of the current camera in the previous camera frame
#   7      RANSAC inlier ratio of the essential matrix
#   8      tracked corners / max_corners
#   9:11   median flow (dx, dy) in normalised image units (pixels / fx)
#   11     median flow magnitude in normalised units
#   12:15  rotation from a least-squares fit of the rotational motion field (rad)


@dataclass(frozen=True)
class CueConfig:
    width: int = 320
    height: int = 240
    max_corners: int = 300
    quality: float = 0.01
    min_distance: int = 7
    ransac_px: float = 0.75


def scale_intrinsics(intrinsics: np.ndarray, scale: float) -> np.ndarray:
    """fx, fy, cx, cy of an image resized by ``scale`` (pixel centres stay aligned)."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    return np.array([fx * scale, fy * scale, (cx + 0.5) * scale - 0.5, (cy + 0.5) * scale - 0.5])


def to_gray(rgb: np.ndarray, config: CueConfig) -> np.ndarray:
    """The grey image at the cue resolution (area interpolation, as the runtime resizes)."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if gray.shape != (config.height, config.width):
        gray = cv2.resize(gray, (config.width, config.height), interpolation=cv2.INTER_AREA)
    return gray


def _rotation_from_flow(p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Small rotation whose motion field best explains the flow, translation ignored.

    For a rotation w (current camera in previous frame) a point x in normalised
    coordinates moves by the rotational motion field; solve the 3-parameter linear
    least squares problem.
    """
    x, y = p0[:, 0], p0[:, 1]
    du, dv = p1[:, 0] - x, p1[:, 1] - y
    a_u = np.stack([x * y, -(1 + x * x), y], axis=1)
    a_v = np.stack([1 + y * y, -x * y, -x], axis=1)
    a = np.concatenate([a_u, a_v])
    b = np.concatenate([du, dv])
    w, *_ = np.linalg.lstsq(a, b, rcond=None)
    return w


def two_view_cues(
    prev_gray: np.ndarray | None, gray: np.ndarray, intrinsics: np.ndarray, config: CueConfig
) -> np.ndarray:
    """Cue vector for the motion from ``prev_gray`` to ``gray`` (both at the cue size).

    ``intrinsics`` are fx, fy, cx, cy at the cue size. Returns zeros (valid = 0) when no
    estimate is possible: first frame, no texture, too few tracks.
    """
    out = np.zeros(CUE_DIM, dtype=np.float32)
    if prev_gray is None:
        return out
    corners = cv2.goodFeaturesToTrack(
        prev_gray, config.max_corners, config.quality, config.min_distance
    )
    if corners is None or len(corners) < 8:
        return out
    tracked, status, _ = cv2.calcOpticalFlowPyrLK(
        prev_gray, gray, corners, None, winSize=(21, 21), maxLevel=3
    )
    ok = status[:, 0] == 1
    if ok.sum() < 8:
        return out
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    p0 = (corners[ok, 0] - (cx, cy)) / (fx, fy)
    p1 = (tracked[ok, 0] - (cx, cy)) / (fx, fy)
    flow = p1 - p0
    out[8] = ok.sum() / config.max_corners
    out[9:11] = np.median(flow, axis=0)
    out[11] = np.median(np.linalg.norm(flow, axis=1))
    out[12:15] = _rotation_from_flow(p0, p1)
    e, inliers = cv2.findEssentialMat(
        p0, p1, np.eye(3), method=cv2.RANSAC, prob=0.999, threshold=config.ransac_px / fx
    )
    if e is None or e.shape != (3, 3):
        return out
    _, r, t, _ = cv2.recoverPose(e, p0, p1, np.eye(3), mask=inliers.copy())
    # recoverPose maps previous-camera points into the current camera: x1 = R x0 + t.
    # The current camera in the previous frame is the inverse: rotation R^T, centre -R^T t.
    rot_vec, _ = cv2.Rodrigues(r.T)
    direction = -(r.T @ t)[:, 0]
    out[0] = 1.0
    out[1:4] = rot_vec[:, 0]
    out[4:7] = direction / max(np.linalg.norm(direction), 1e-9)
    out[7] = float(inliers.mean())
    return out


def sequence_cues(
    images: np.ndarray, intrinsics: np.ndarray, config: CueConfig = CueConfig()
) -> np.ndarray:
    """Cues for every frame of a sequence (frame 0 gets zeros); intrinsics at image size."""
    k = scale_intrinsics(intrinsics, config.width / images.shape[2])
    out = np.zeros((len(images), CUE_DIM), dtype=np.float32)
    prev = None
    for i, rgb in enumerate(images):
        gray = to_gray(rgb, config)
        out[i] = two_view_cues(prev, gray, k, config)
        prev = gray
    return out
