"""Whether this frame's camera can be trusted, from evidence the network does not weigh.

The network's predicted sigma says how well it usually does in a regime (with or
without odometry), not whether the camera works: with the lens covered, the image dark,
the frame frozen or smeared, the shipped model's median sigma with odometry moves by
at most a third (docs/benchmarks.md, "Graceful degradation"). So the Localizer also
asks plain questions of the grey image and the classical cues the runtime computes
anyway (both at the cue size, 320 x 240; the checks cost about 0.2 ms a frame):

- ``blind``: no contrast to see by (:func:`image_statistics` below ``min_contrast``
  grey levels: a covered lens, darkness, a blank wall; the smoothing keeps sensor
  noise from passing for texture), or too few corners tracked from the previous frame.
  On the 20 validation runs (1,200 frames) normal frames have at least 4.5 (p0.5), a
  lens cap 0.46, frames at 3 % brightness 0.25-2.4.
- ``blurred``: the image is smeared along one axis (:func:`image_statistics`'
  anisotropy below ``blur_anisotropy``). Normal frames: p1 0.42, median 0.82, 0.2 %
  below 0.38; a 61-pixel horizontal blur: median 0.29, 76 % below.
- ``frozen``: the frame repeats the previous one (mean absolute change below
  ``frozen_change``) while the odometry says the camera moved (a driver re-sending
  its last image).
- ``fast``: the camera turns faster than ``max_turn_rad_s`` (by the odometry, else by
  the corners): beyond what the model was trained on (world.md: up to 60 deg/s), so
  neither its motion nor its sigma has been seen to hold there.
- ``disagrees``: the rotation the tracked corners show differs from the odometry's by
  more than ``disagree_rad`` plus ``disagree_share`` of that rotation in one frame.
  Odometry drift is a fraction of a mrad per frame and the cue rotation's noise about
  2 mrad (ModelConfig.vision_rot_noise), so 20 mrad means that one of them is wrong (a
  turn that outruns the tracker, a wheel that slipped); the share allows for the
  tracker's error growing with the flow (cameras at 10-15 Hz on the validation runs).

A frame with any of them is one where vision cannot be trusted; the Localizer then
reports UNCERTAIN with odometry and LOST without it. With odometry the network also
gets no cues for that frame, so its drift filter does not learn from it (a frozen
frame reads as "not turning" while the wheels turn slowly enough to pass the filter's
gate: on one held-out run that made the pose 2.15x worse than the odometry). Nothing here is learned; the
thresholds were read off the validation runs, never the held-out ones.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import cv2
import numpy as np

from latent_memory_ros import geometry
from latent_memory_ros.cues import CUE_ROTATION, CUE_VALID


class VisionFault(enum.Enum):
    BLIND = "blind"
    BLURRED = "blurred"
    FROZEN = "frozen"
    FAST = "fast"
    DISAGREES = "disagrees"


@dataclass
class HealthConfig:
    enabled: bool = True  # the node's vision_checks parameter
    min_contrast: float = 3.0  # grey levels (std of the 5 x 5-smoothed image)
    blur_anisotropy: float = 0.38  # smaller over larger mean gradient
    frozen_change: float = 0.01  # mean absolute grey-level change
    # The cue rotation against the odometry's, one frame: more than this plus
    # ``disagree_share`` of the odometry's rotation (the tracker's error grows with the
    # flow: at 10 Hz a turn moves the view several times further per frame than at 30).
    disagree_rad: float = 0.02
    disagree_share: float = 0.25
    max_turn_rad_s: float = 1.5  # 86 deg/s: 1.4 x the training world's limit
    # Odometry motion in one frame above which the camera moved (m, rad).
    moved_m: float = 0.002
    moved_rad: float = 0.002


def image_statistics(gray: np.ndarray) -> tuple[float, float]:
    """(contrast, anisotropy) of a grey image at the cue size: the standard deviation of
    the image smoothed over about 6 x 6 pixels (halved by area, then a 3 x 3 box: sensor
    noise averages out, texture stays), and the smaller of its mean absolute horizontal
    and vertical gradients over the larger (1 for an isotropic view, towards 0 when it
    is smeared along one axis). About 0.1 ms at 320 x 240."""
    half = cv2.resize(gray, (gray.shape[1] // 2, gray.shape[0] // 2), interpolation=cv2.INTER_AREA)
    smooth = cv2.blur(half, (3, 3))
    _, std = cv2.meanStdDev(smooth)
    gx = cv2.mean(cv2.convertScaleAbs(cv2.Sobel(smooth, cv2.CV_16S, 1, 0)))[0]
    gy = cv2.mean(cv2.convertScaleAbs(cv2.Sobel(smooth, cv2.CV_16S, 0, 1)))[0]
    return float(std[0, 0]), float(min(gx, gy) / max(gx, gy, 1e-6))


class VisionHealth:
    """Call :meth:`check` once per frame, in order; :meth:`reset` with the runtime."""

    def __init__(self) -> None:
        self._previous: np.ndarray | None = None

    def reset(self) -> None:
        self._previous = None

    def check(
        self,
        gray: np.ndarray | None,
        cue_vector: np.ndarray | None,
        odom_motion: np.ndarray | None,
        dt: float | None,
        config: HealthConfig,
    ) -> VisionFault | None:
        """Why this frame's vision cannot be trusted, or None. ``gray`` and
        ``cue_vector`` as the runtime's StepResult gives them (None for a model without
        cues: never judged); ``odom_motion`` the camera motion since the previous frame
        from the odometry (xyz_qxyzw), None without it; ``dt`` the time since that
        frame (s; None on a first frame)."""
        if gray is None or cue_vector is None:
            return None
        previous, self._previous = self._previous, gray
        c = config
        if not c.enabled:
            return None
        odom_rotation = None
        if odom_motion is not None:
            odom_rotation = geometry.quat_to_rotvec(np.asarray(odom_motion[3:], np.float64))
            moved = (
                np.linalg.norm(odom_motion[:3]) > c.moved_m
                or np.linalg.norm(odom_rotation) > c.moved_rad
            )
            if moved and previous is not None:
                if float(cv2.absdiff(gray, previous).mean()) < c.frozen_change:
                    return VisionFault.FROZEN
        contrast, anisotropy = image_statistics(gray)
        if contrast < c.min_contrast:
            return VisionFault.BLIND
        if previous is not None and cue_vector[CUE_VALID] <= 0:  # too few corners tracked
            return VisionFault.BLIND
        if anisotropy < c.blur_anisotropy:
            return VisionFault.BLURRED
        seen = cue_vector[CUE_VALID] > 0
        turn = odom_rotation if odom_rotation is not None else cue_vector[CUE_ROTATION]
        if dt and (odom_rotation is not None or seen):
            if np.linalg.norm(turn) / dt > c.max_turn_rad_s:
                return VisionFault.FAST
        if odom_rotation is not None and seen:
            difference = np.linalg.norm(cue_vector[CUE_ROTATION] - odom_rotation)
            if difference > c.disagree_rad + c.disagree_share * np.linalg.norm(odom_rotation):
                return VisionFault.DISAGREES
        return None
