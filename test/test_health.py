"""The vision checks on their own: each fault from plain inputs, and none on a good frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from latent_memory_ros import geometry
from latent_memory_ros.cues import CUE_DIM, CUE_VALID
from latent_memory_ros.health import HealthConfig, VisionFault, VisionHealth

CONFIG = HealthConfig()
DT = 1 / 30


def textured(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    return cv2.resize(small, (320, 240), interpolation=cv2.INTER_CUBIC)


def cue_vector(rotation=(0.0, 0.0, 0.0), valid: bool = True) -> np.ndarray:
    cues = np.zeros(CUE_DIM, dtype=np.float32)
    cues[CUE_VALID] = 1.0 if valid else 0.0
    cues[1:4] = rotation
    return cues


def motion(forward_m: float = 0.0, yaw_rad: float = 0.0) -> np.ndarray:
    # Camera optical frame: z forward, y down, so a yaw of the robot turns about y.
    q = geometry.rotvec_to_quat(np.array([0.0, yaw_rad, 0.0]))
    return np.concatenate([[0.0, 0.0, forward_m], q])


def second_frame(gray, cues, odom, dt=DT, config=CONFIG, first=None):
    health = VisionHealth()
    assert (
        health.check(textured(1) if first is None else first, cue_vector(), None, None, config)
        is None
    )
    return health.check(gray, cues, odom, dt, config)


def test_a_good_frame_passes_with_and_without_odometry() -> None:
    assert second_frame(textured(2), cue_vector((0, 0.01, 0)), motion(0.02, 0.01)) is None
    assert second_frame(textured(2), cue_vector((0, 0.01, 0)), None) is None


@pytest.mark.parametrize(
    "gray, cues, odom, fault",
    [
        # A lens cap: grey with sensor noise (the noise alone must not pass for texture).
        (
            np.clip(np.random.default_rng(0).normal(30, 2, (240, 320)), 0, 255).astype(np.uint8),
            cue_vector(),
            motion(0.02),
            VisionFault.BLIND,
        ),
        ((textured(2) * 0.03).astype(np.uint8), cue_vector(), None, VisionFault.BLIND),  # dark
        (textured(2), cue_vector(valid=False), motion(0.02), VisionFault.BLIND),  # no corners
        (cv2.blur(textured(2), (61, 1)), cue_vector(), motion(0.02), VisionFault.BLURRED),
        (textured(1), cue_vector(), motion(0.02), VisionFault.FROZEN),  # the same frame again
        (textured(2), cue_vector((0, 0.1, 0)), motion(0.02, 0.1), VisionFault.FAST),  # 172 deg/s
        (textured(2), cue_vector((0, 0.1, 0)), None, VisionFault.FAST),  # by the corners
        (textured(2), cue_vector((0, 0.03, 0)), motion(0.02), VisionFault.DISAGREES),
    ],
)
def test_each_fault(gray, cues, odom, fault) -> None:
    assert second_frame(gray, cues, odom) is fault


def test_a_repeated_frame_is_not_frozen_when_the_robot_stands_still() -> None:
    assert second_frame(textured(1), cue_vector(), motion(0.0)) is None


def test_switched_off_nothing_is_judged() -> None:
    off = HealthConfig(enabled=False)
    assert (
        second_frame(cv2.blur(textured(2), (61, 1)), cue_vector(), motion(0.02), config=off) is None
    )


def test_a_model_without_cues_is_never_judged() -> None:
    assert VisionHealth().check(None, None, motion(0.02), DT, CONFIG) is None
