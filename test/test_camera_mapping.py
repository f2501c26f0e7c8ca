"""camera_info that no camera has (found by benchmarks/fuzz.py) is not used, and a
stream of ever-different bad camera_info says each kind of problem once."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from latent_memory_ros.camera_mapping import CameraInfoMapping, unusable_intrinsics


class FakeRuntime:
    camera_aware = True
    input_camera = (320, 240, (250.0, 250.0, 160.0, 120.0))

    def __init__(self) -> None:
        self.cameras: list[tuple] = []

    def set_camera(self, intrinsics, width: int, height: int) -> None:
        self.cameras.append((tuple(intrinsics), width, height))


def info(fx: float, fy: float, cx: float = 48.0, cy: float = 36.0, frame_id: str = "cam"):
    return SimpleNamespace(
        width=96,
        height=72,
        k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
        d=[],
        distortion_model="plumb_bob",
        binning_x=0,
        binning_y=0,
        roi=None,
        header=SimpleNamespace(frame_id=frame_id),
    )


@pytest.mark.parametrize(
    "fx, fy, cx, problem",
    [
        (2.6e-181, 5.9e305, 48.0, "field of view of 180 degrees"),  # the fuzz's case
        (80.0, math.nan, 48.0, "9 finite numbers"),
        (80.0, 1e6, 48.0, "vertical field of view of 0.00413 degrees"),
        (80.0, 80.0, -5.0, "principal point (-5, 36) outside the 96x72 image"),
    ],
)
def test_intrinsics_no_camera_has_are_named(fx: float, fy: float, cx: float, problem: str) -> None:
    assert problem in unusable_intrinsics(info(fx, fy, cx).k, 96, 72)


def test_a_real_camera_passes() -> None:
    assert unusable_intrinsics(info(80.0, 80.0).k, 96, 72) is None


def test_unusable_camera_info_is_not_used_and_warned_once_per_kind() -> None:
    runtime, warned = FakeRuntime(), {}
    mapping = CameraInfoMapping(runtime, SimpleNamespace(info=lambda t: None), warned.setdefault)
    rgb = np.zeros((72, 96, 3), np.uint8)
    mapping.info = info(80.0, 80.0)
    mapping.apply(rgb, "cam")
    assert runtime.cameras == [((80.0, 80.0, 48.0, 36.0), 96, 72)]
    for k in range(50):  # ever-different broken ones, other frame_ids
        mapping.info = info(1e-9 * (k + 1), 1e300, frame_id=f"junk{k}")
        mapping.apply(rgb, "cam")
    # Back to the model's own camera, never the broken one.
    assert all(c == ((250.0, 250.0, 160.0, 120.0), 320, 240) for c in runtime.cameras[1:])
    assert len(runtime.cameras) == 51
    assert len(warned) == 2, warned  # "not used: ...", "frame_id ... differs"
