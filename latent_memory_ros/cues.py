"""Classical two-view motion cues that the student network takes beside the image.

A network trained briefly on two CPU cores does not learn yaw from pixels (see the
project's lessons); tracked corners and a joint fit of rotation and heading to their
flow give it a nearly unbiased, noisy rotation and a translation direction for free. The
same function runs in training (on cached renders) and in the runtime (on live frames),
so the network sees one definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CUES_VERSION = "lk-heading/1"
CUE_DIM = 15
# Layout of the cue vector (documented in docs/model-format.md):
CUE_VALID = 0  # 1 when enough corners tracked (the valid flag)
# Rotation of the current camera in the previous camera frame, rotation vector (rad),
# translation-compensated (see rotation_and_heading).
CUE_ROTATION = slice(1, 4)
CUE_HEADING = slice(4, 7)  # unit translation direction of the current camera, z >= 0
CUE_INLIERS = 7  # share of tracks kept by the robust fit
CUE_CORNERS = 8  # tracked corners / max_corners
CUE_FLOW = slice(9, 11)  # median flow (dx, dy) in normalised image units (pixels / fx)
CUE_FLOW_MAGNITUDE = 11  # median flow magnitude in normalised units
CUE_ROTATION_ONLY = slice(12, 15)  # rotation from a rotation-only fit of the flow (rad)
# The entries a left-right mirror of the image (x -> -x in the optical frame) negates:
# y and z of the rotation vectors, x of the heading and of the flow.
CUE_MIRROR_NEGATED = (
    CUE_ROTATION.start + 1,
    CUE_ROTATION.start + 2,
    CUE_HEADING.start,
    CUE_FLOW.start,
    CUE_ROTATION_ONLY.start + 1,
    CUE_ROTATION_ONLY.start + 2,
)


@dataclass(frozen=True)
class CueConfig:
    width: int = 320
    height: int = 240
    max_corners: int = 300
    quality: float = 0.01
    min_distance: int = 7


def scale_intrinsics(
    intrinsics: np.ndarray, scale: float, scale_y: float | None = None
) -> np.ndarray:
    """fx, fy, cx, cy of an image resized by ``scale`` (``scale_y`` vertically when the
    aspect ratio changes); pixel centres stay aligned."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    sy = scale if scale_y is None else scale_y
    return np.array([fx * scale, fy * sy, (cx + 0.5) * scale - 0.5, (cy + 0.5) * sy - 0.5])


def normalised_intrinsics(intrinsics: np.ndarray, width: int, height: int) -> np.ndarray:
    """(fx / W, fy / H, (cx + 0.5) / W, (cy + 0.5) / H): the camera independent of the
    image size, which is what the network's ``camera`` input takes (any resize of the
    image leaves it unchanged)."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    return np.array([fx / width, fy / height, (cx + 0.5) / width, (cy + 0.5) / height])


def cue_intrinsics(
    intrinsics: np.ndarray, width: int, height: int, config: CueConfig
) -> np.ndarray:
    """Intrinsics of a ``width`` x ``height`` image once :func:`to_gray` has resized it."""
    return scale_intrinsics(intrinsics, config.width / width, config.height / height)


def to_gray(rgb: np.ndarray, config: CueConfig) -> np.ndarray:
    """The grey image at the cue resolution (area interpolation, as the runtime resizes)."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if gray.shape != (config.height, config.width):
        gray = cv2.resize(gray, (config.width, config.height), interpolation=cv2.INTER_AREA)
    return gray


def _rotational_field(p0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows a_u, a_v with flow = (a_u . w, a_v . w) for a small camera rotation w."""
    x, y = p0[:, 0], p0[:, 1]
    a_u = np.stack([x * y, -(1 + x * x), y], axis=1)
    a_v = np.stack([1 + y * y, -x * y, -x], axis=1)
    return a_u, a_v


def _robust_lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares, then again without rows whose residual exceeds 3x the median."""
    x, *_ = np.linalg.lstsq(a, b, rcond=None)
    r = np.abs(a @ x - b)
    keep = r <= 3.0 * np.median(r) + 1e-12
    if keep.sum() >= a.shape[1] + 2:
        x, *_ = np.linalg.lstsq(a[keep], b[keep], rcond=None)
    return x


def rotation_and_heading(
    p0: np.ndarray, p1: np.ndarray, iterations: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Small rotation and translation direction from sparse flow (normalised coordinates).

    A rotation-only fit is biased whenever the camera also translates (the radial flow
    of near, off-centre surfaces leaks into yaw), and the essential matrix is degenerate
    at these baselines. Instead fit the rotation w and the focus of expansion (a, b)
    jointly: each point's de-rotated flow d must point away from the focus, so the 2-D
    cross product of d with (x - a, y - b), divided by that vector's length, vanishes.
    Damped Gauss-Newton on these 5 parameters from the rotation-only fit, with the
    worst tracks (residual over 3x the median) dropped after the first pass.
    Returns (rotation, heading (unit, z >= 0), rotation-only rotation, share kept).
    """
    a_u, a_v = _rotational_field(p0)
    flow = p1 - p0
    w_pure = _robust_lstsq(np.concatenate([a_u, a_v]), np.concatenate(flow.T))
    params = np.concatenate([w_pure, [0.0, 0.0]])
    keep = np.ones(len(p0), dtype=bool)
    damping = 1e-3
    for it in range(iterations):
        w, foe = params[:3], params[3:]
        d = flow - np.stack([a_u @ w, a_v @ w], axis=1)
        e = p0 - foe
        n = np.maximum(np.linalg.norm(e, axis=1), 0.05)
        num = d[:, 0] * e[:, 1] - d[:, 1] * e[:, 0]
        r = num / n
        if it == 1:
            keep = np.abs(r) <= 3.0 * np.median(np.abs(r)) + 1e-12
        jac = np.column_stack(
            [
                -(a_u * e[:, 1:2] - a_v * e[:, 0:1]) / n[:, None],
                d[:, 1] / n + num * e[:, 0] / n**3,
                -d[:, 0] / n + num * e[:, 1] / n**3,
            ]
        )[keep]
        jtj = jac.T @ jac
        step = np.linalg.solve(jtj + damping * np.diag(np.diag(jtj) + 1e-12), -jac.T @ r[keep])
        params = params + step
        params[3:] = np.clip(params[3:], -2.0, 2.0)
    heading = np.array([params[3], params[4], 1.0])
    return params[:3], heading / np.linalg.norm(heading), w_pure, float(keep.mean())


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
    out[CUE_CORNERS] = ok.sum() / config.max_corners
    out[CUE_FLOW] = np.median(flow, axis=0)
    out[CUE_FLOW_MAGNITUDE] = np.median(np.linalg.norm(flow, axis=1))
    rotation, heading, rotation_only, inliers = rotation_and_heading(p0, p1)
    out[CUE_VALID] = 1.0
    out[CUE_ROTATION] = rotation
    out[CUE_HEADING] = heading
    out[CUE_INLIERS] = inliers
    out[CUE_ROTATION_ONLY] = rotation_only
    return out


def sequence_cues(
    images: np.ndarray, intrinsics: np.ndarray, config: CueConfig = CueConfig()
) -> np.ndarray:
    """Cues for every frame of a sequence (frame 0 gets zeros); intrinsics at image size."""
    k = cue_intrinsics(intrinsics, images.shape[2], images.shape[1], config)
    out = np.zeros((len(images), CUE_DIM), dtype=np.float32)
    prev = None
    for i, rgb in enumerate(images):
        gray = to_gray(rgb, config)
        out[i] = two_view_cues(prev, gray, k, config)
        prev = gray
    return out
