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
    # :class:`CueTracker` can follow the corners from frame to frame and detect them
    # afresh only when fewer than this share of those last detected survive. 0 (detect
    # on every frame, as :func:`two_view_cues`) is lk-heading/1, which the shipped model
    # was trained on; 0.8 makes the cues a fifth cheaper, but that model then corrected the
    # odometry less on one held-out run in four (docs/benchmarks.md, "Latency"): a model
    # would have to be trained on followed corners (a new cue version) to use it.
    redetect_below: float = 0.0
    window: int = 21  # Lucas-Kanade window (pixels)
    levels: int = 3  # Lucas-Kanade pyramid levels above the image


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


def _lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares by the normal equations: a few columns, many rows (the SVD of
    ``np.linalg.lstsq`` costs more than the fit itself at these sizes)."""
    return np.linalg.solve(a.T @ a, a.T @ b)


def _robust_lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares, then again without rows whose residual exceeds 3x the median."""
    x = _lstsq(a, b)
    r = np.abs(a @ x - b)
    keep = r <= 3.0 * np.median(r) + 1e-12
    if keep.sum() >= a.shape[1] + 2:
        x = _lstsq(a[keep], b[keep])
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
    worst tracks (residual over 3x the median) dropped after the first pass, for at
    most ``iterations`` steps (fewer once a step moves nothing by 1e-10).
    Returns (rotation, heading (unit, z >= 0), rotation-only rotation, share kept).
    """
    a_u, a_v = _rotational_field(p0)
    flow = p1 - p0
    w_pure = _robust_lstsq(np.concatenate([a_u, a_v]), np.concatenate(flow.T))
    w, foe = w_pure.copy(), np.zeros(2)
    x, y = p0[:, 0], p0[:, 1]
    fu, fv = flow[:, 0], flow[:, 1]
    jac = np.empty((len(p0), 5))
    keep = None
    damping = 1e-3
    for it in range(iterations):
        du, dv = fu - a_u @ w, fv - a_v @ w
        ex, ey = x - foe[0], y - foe[1]
        inv_n = 1.0 / np.maximum(np.sqrt(ex * ex + ey * ey), 0.05)
        num = du * ey - dv * ex
        r = num * inv_n
        if it == 1:
            keep = np.abs(r) <= 3.0 * np.median(np.abs(r)) + 1e-12
        g = num * inv_n**3
        np.multiply(a_v, (ex * inv_n)[:, None], out=jac[:, :3])
        jac[:, :3] -= a_u * (ey * inv_n)[:, None]
        jac[:, 3] = dv * inv_n + g * ex
        jac[:, 4] = g * ey - du * inv_n
        j, rk = (jac, r) if keep is None else (jac[keep], r[keep])
        jtj = j.T @ j
        step = np.linalg.solve(jtj + damping * np.diag(np.diag(jtj) + 1e-12), -(j.T @ rk))
        w = w + step[:3]
        foe = np.clip(foe + step[3:], -2.0, 2.0)
        if it >= 1 and np.abs(step).max() < 1e-10:  # converged: the rest changes nothing
            break
    heading = np.array([foe[0], foe[1], 1.0])
    share = 1.0 if keep is None else float(keep.mean())
    return w, heading / np.linalg.norm(heading), w_pure, share


def _detect(gray: np.ndarray, config: CueConfig) -> np.ndarray | None:
    return cv2.goodFeaturesToTrack(gray, config.max_corners, config.quality, config.min_distance)


def _track(
    prev_gray: np.ndarray, gray: np.ndarray, corners: np.ndarray, config: CueConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Where ``corners`` (N, 1, 2) of ``prev_gray`` went in ``gray``, and which were found."""
    size = (config.window, config.window)
    tracked, status, _ = cv2.calcOpticalFlowPyrLK(
        prev_gray, gray, corners, None, winSize=size, maxLevel=config.levels
    )
    return tracked, status[:, 0] == 1


def _cues_from_tracks(
    corners: np.ndarray, tracked: np.ndarray, intrinsics: np.ndarray, config: CueConfig
) -> np.ndarray:
    """The cue vector of tracks from ``corners`` to ``tracked`` (M, 1, 2 pixels, M >= 8)."""
    out = np.zeros(CUE_DIM, dtype=np.float32)
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    p0 = (corners[:, 0] - (cx, cy)) / (fx, fy)
    p1 = (tracked[:, 0] - (cx, cy)) / (fx, fy)
    flow = p1 - p0
    out[CUE_CORNERS] = len(p0) / config.max_corners
    out[CUE_FLOW] = np.median(flow, axis=0)
    out[CUE_FLOW_MAGNITUDE] = np.median(np.linalg.norm(flow, axis=1))
    rotation, heading, rotation_only, inliers = rotation_and_heading(p0, p1)
    out[CUE_VALID] = 1.0
    out[CUE_ROTATION] = rotation
    out[CUE_HEADING] = heading
    out[CUE_INLIERS] = inliers
    out[CUE_ROTATION_ONLY] = rotation_only
    return out


def two_view_cues(
    prev_gray: np.ndarray | None, gray: np.ndarray, intrinsics: np.ndarray, config: CueConfig
) -> np.ndarray:
    """Cue vector for the motion from ``prev_gray`` to ``gray`` (both at the cue size),
    from corners detected afresh in ``prev_gray``.

    ``intrinsics`` are fx, fy, cx, cy at the cue size. Returns zeros (valid = 0) when no
    estimate is possible: first frame, no texture, too few tracks.
    """
    if prev_gray is None:
        return np.zeros(CUE_DIM, dtype=np.float32)
    corners = _detect(prev_gray, config)
    if corners is None or len(corners) < 8:
        return np.zeros(CUE_DIM, dtype=np.float32)
    tracked, ok = _track(prev_gray, gray, corners, config)
    if ok.sum() < 8:
        return np.zeros(CUE_DIM, dtype=np.float32)
    return _cues_from_tracks(corners[ok], tracked[ok], intrinsics, config)


class CueTracker:
    """The cues of a stream of grey frames (at the cue size), one :meth:`update` per
    frame: the training data (:func:`sequence_cues`) and the runtime both use it, so the
    network sees one definition. By default (``config.redetect_below`` 0) the corners
    are detected afresh on every frame, exactly as :func:`two_view_cues` does; otherwise
    those found in one frame are followed into the next, and detected afresh only when
    fewer than that share of those last detected survive."""

    def __init__(self, intrinsics: np.ndarray, config: CueConfig = CueConfig()) -> None:
        self.intrinsics = np.asarray(intrinsics, dtype=np.float64)
        self.config = config
        self.detections = 0  # how often corners were detected (the profile counts them)
        self.reset()

    def reset(self) -> None:
        """The next frame is a first frame."""
        self._gray: np.ndarray | None = None
        self._corners: np.ndarray | None = None  # corners of _gray still followed
        self._enough = 0.0  # fewer than this many survivors: detect afresh

    def update(self, gray: np.ndarray) -> np.ndarray:
        """Cue vector for the motion from the previous frame to ``gray``."""
        prev, self._gray = self._gray, gray
        corners, self._corners = self._corners, None
        config = self.config
        if prev is None:
            return np.zeros(CUE_DIM, dtype=np.float32)
        if corners is None or config.redetect_below <= 0 or len(corners) < self._enough:
            corners = _detect(prev, config)
            self.detections += 1
            if corners is None or len(corners) < 8:
                return np.zeros(CUE_DIM, dtype=np.float32)
            self._enough = config.redetect_below * len(corners)
        tracked, ok = _track(prev, gray, corners, config)
        if ok.sum() < 8:
            return np.zeros(CUE_DIM, dtype=np.float32)
        self._corners = tracked[ok]
        return _cues_from_tracks(corners[ok], self._corners, self.intrinsics, config)


def sequence_cues(
    images: np.ndarray, intrinsics: np.ndarray, config: CueConfig = CueConfig()
) -> np.ndarray:
    """Cues for every frame of a sequence (frame 0 gets zeros); intrinsics at image size."""
    tracker = CueTracker(
        cue_intrinsics(intrinsics, images.shape[2], images.shape[1], config), config
    )
    return np.stack([tracker.update(to_gray(rgb, config)) for rgb in images])
