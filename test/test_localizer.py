"""The node's per-frame bookkeeping without ROS, on the shipped model: frames (REP 105),
covariance, tracking state, time jumps and memory snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import texture_frames

from latent_memory_ros import geometry
from latent_memory_ros.health import HealthConfig, VisionFault
from latent_memory_ros.localizer import (
    LOST_VARIANCE,
    Estimate,
    Localizer,
    LocalizerConfig,
    SnapshotError,
    StampError,
    TrackingState,
)
from latent_memory_ros.runtime import StudentRuntime

MOUNT = np.array([0.1, 0.0, 0.5, -0.5, 0.5, -0.5, 0.5])  # optical camera looking forward
STEP_NS = 100_000_000


@pytest.fixture(scope="module")
def runtime(model_dir: Path) -> StudentRuntime:
    return StudentRuntime(model_dir, providers=["CPUExecutionProvider"], warmup=0)


@pytest.fixture
def localizer(runtime: StudentRuntime) -> Localizer:
    # Synthetic test frames disagree with the test odometry (and slide faster than a
    # robot turns): never UNCERTAIN unless asked.
    config = LocalizerConfig(
        base_to_camera=MOUNT.copy(),
        uncertain_sigma_m=10.0,
        lost_sigma_m=100.0,
        tracking_frames=1,
        health=HealthConfig(enabled=False),
    )
    return Localizer(runtime, config)


def rgb_frames(count: int) -> list[np.ndarray]:
    return [np.ascontiguousarray(f[..., ::-1]) for f in texture_frames(count)]


def drive(localizer: Localizer, frames: list[np.ndarray], start_ns: int = 10**9, odom=False):
    out = []
    for k, rgb in enumerate(frames):
        stamp = start_ns + k * STEP_NS
        if odom:
            localizer.add_odometry(stamp, np.array([0.05 * k, 0, 0, 0, 0, 0, 1.0]))
        out.append(localizer.process(rgb, stamp, use_odometry=odom))
    return out


def test_outputs_are_the_base_in_the_odom_frame(localizer: Localizer, runtime) -> None:
    frames = rgb_frames(5)
    estimates = drive(localizer, frames, odom=True)
    # The same frames through the bare runtime give camera poses in the start camera frame;
    # the base is the camera mount applied on both sides.
    runtime.reset()
    camera_to_base = geometry.inverse(MOUNT)
    for k, (rgb, estimate) in enumerate(zip(frames, estimates, strict=True)):
        motion = None
        if k > 0:
            base_motion = np.array([0.05, 0, 0, 0, 0, 0, 1.0])
            motion = geometry.compose(geometry.compose(camera_to_base, base_motion), MOUNT)
        camera = runtime.step(rgb, odom_motion=motion, dt=0.1 if k else None).pose
        base = geometry.compose(geometry.compose(MOUNT, camera), camera_to_base)
        np.testing.assert_allclose(estimate.pose[:3], base[:3], atol=1e-6)
        assert abs(abs(np.dot(estimate.pose[3:], base[3:])) - 1.0) < 1e-9
        assert estimate.odometry_used == (k > 0) or k == 0
    # The odometry drove the base 5 cm per frame forward along x (REP 103: x forward).
    assert estimates[-1].pose[0] > 0.1
    assert abs(estimates[-1].pose[2]) < 0.05


def test_covariance_accumulates_and_twist_is_in_the_base_frame(localizer: Localizer) -> None:
    estimates = drive(localizer, rgb_frames(6), odom=True)
    traces = [np.trace(e.pose_covariance.reshape(6, 6)) for e in estimates]
    assert all(b > a for a, b in zip(traces, traces[1:], strict=False))
    for e in estimates:
        cov = e.pose_covariance.reshape(6, 6)
        np.testing.assert_allclose(cov, cov.T, atol=1e-15)
        assert np.all(np.linalg.eigvalsh(cov) > 0)
    assert estimates[0].twist is None
    for previous, current in zip(estimates, estimates[1:], strict=False):
        step = geometry.relative(previous.pose, current.pose)
        np.testing.assert_allclose(current.twist[:3], step[:3] / 0.1, atol=1e-9)
        assert current.twist[0] > 0.2  # forward at about 0.5 m/s in the base frame
        twist_cov = current.twist_covariance.reshape(6, 6)
        assert np.all(np.diag(twist_cov) > 0)


def test_tracking_thresholds_are_the_models_unless_configured(runtime) -> None:
    """0 (the parameters' default) means the model's own thresholds, from its model.json
    (``tracking``) or, for a model exported without them, the runtime's defaults."""
    localizer = Localizer(runtime, LocalizerConfig(base_to_camera=MOUNT.copy()))
    model = runtime.spec.tracking
    assert localizer.tracking_thresholds == (model["uncertain_sigma_m"], model["lost_sigma_m"])
    assert model["uncertain_sigma_m"] < model["lost_sigma_m"]
    localizer.config.lost_sigma_m = 0.5
    assert localizer.tracking_thresholds == (model["uncertain_sigma_m"], 0.5)


def test_tracking_states_and_lost_covariance(localizer: Localizer) -> None:
    drive(localizer, rgb_frames(2))
    sigma = localizer.process(rgb_frames(3)[2], 10**9 + 2 * STEP_NS, False).sigma_m
    localizer.config.uncertain_sigma_m = sigma / 2
    e = localizer.process(rgb_frames(4)[3], 10**9 + 3 * STEP_NS, False)
    assert e.tracking is TrackingState.UNCERTAIN
    assert np.all(np.diag(e.pose_covariance.reshape(6, 6)) < LOST_VARIANCE)
    localizer.config.lost_sigma_m = sigma / 4
    localizer.config.lost_reset_s = 0.25
    frames = rgb_frames(8)
    states, events = [], []
    for k in range(4, 8):
        e = localizer.process(frames[k], 10**9 + k * STEP_NS, False)
        states.append(e.tracking)
        events += [kind for kind, _ in e.events]
        assert np.all(np.diag(e.pose_covariance.reshape(6, 6)) == LOST_VARIANCE)
    assert states == [TrackingState.LOST] * 4
    # LOST from frame 4; after 0.25 s (frame 7) the memory restarts, the pose continues.
    assert events == ["lost_reset"]
    assert localizer.runtime.frames == 0


def test_time_backwards_resets_a_gap_restarts_jitter_is_reported(localizer: Localizer) -> None:
    frames = rgb_frames(8)
    first = drive(localizer, frames[:6])
    jitter = localizer.process(frames[6], 10**9 + 5 * STEP_NS + 3 * STEP_NS // 2, False)
    assert [k for k, _ in jitter.events] == ["jitter"]

    # A jump is trusted at the second frame on the new time; the first is rejected.
    with pytest.raises(StampError, match="2.350 s after the previous frame's: rejected"):
        localizer.process(frames[7], 10**9 + 30 * STEP_NS, False)
    gap = localizer.process(frames[7], 10**9 + 31 * STEP_NS, False)
    assert gap.restart == "memory" and [k for k, _ in gap.events] == ["gap"]
    assert localizer.runtime.frames == 1
    # The pose continues from where it was (REP 105: the odom frame does not jump).
    assert np.linalg.norm(gap.pose[:3] - jitter.pose[:3]) < 0.2

    with pytest.raises(StampError, match="before the previous frame's: rejected"):
        localizer.process(frames[0], 0, False)
    back = localizer.process(frames[0], STEP_NS, False)
    assert back.restart == "full" and [k for k, _ in back.events] == ["time_backwards"]
    np.testing.assert_allclose(back.pose, first[0].pose, atol=1e-9)

    with pytest.raises(StampError, match="duplicate"):
        localizer.process(frames[1], STEP_NS, False)


@pytest.mark.parametrize("outlier_ns", [0, -5 * 10**9, (2**31 - 1) * 10**9])
def test_a_lone_outlier_stamp_is_rejected_and_changes_nothing(
    localizer: Localizer, outlier_ns: int
) -> None:
    frames = rgb_frames(4)
    before = drive(localizer, frames[:2])
    with pytest.raises(StampError, match="rejected unless the next frame follows it"):
        localizer.process(frames[2], outlier_ns, False)
    after = localizer.process(frames[2], 10**9 + 2 * STEP_NS, False)
    assert after.restart is None and after.events == []
    assert localizer.runtime.frames == 3
    assert np.linalg.norm(after.pose[:3] - before[-1].pose[:3]) < 0.2


def test_two_unrelated_wild_stamps_do_not_confirm_a_jump(localizer: Localizer) -> None:
    """benchmarks/fuzz.py: a frame stamped 300 s and then one stamped 1,200 s, among good
    frames at 10,000 s, passed for a bag loop (the second was nearer the first than the
    old time) and reset memory, pose and path. A confirming frame must follow the first
    within max_gap_s, as a camera's next frame does."""
    frames = rgb_frames(5)
    start = 10_000 * 10**9
    before = drive(localizer, frames[:2], start_ns=start)
    for wild in (300 * 10**9, 1_200 * 10**9):
        with pytest.raises(StampError, match="rejected unless the next frame follows it"):
            localizer.process(frames[2], wild, False)
    after = localizer.process(frames[3], start + 2 * STEP_NS, False)
    assert after.restart is None and localizer.runtime.frames == 3
    assert np.linalg.norm(after.pose[:3] - before[-1].pose[:3]) < 0.2


def test_set_pose_reanchors_the_output(localizer: Localizer) -> None:
    frames = rgb_frames(4)
    drive(localizer, frames[:2])
    target = np.array([3.0, -2.0, 0.0, *geometry.euler_to_quat(0.0, 0.0, np.pi / 2)])
    localizer.set_pose(target, np.eye(6).reshape(36) * 0.5)
    e = localizer.process(frames[2], 10**9 + 2 * STEP_NS, False)
    assert np.linalg.norm(e.pose[:3] - target[:3]) < 0.2
    assert np.all(np.diag(e.pose_covariance.reshape(6, 6)) > 0.5)


def test_snapshot_round_trip_continues_the_memory(localizer: Localizer, tmp_path: Path) -> None:
    frames = rgb_frames(10)
    drive(localizer, frames[:5])
    path = localizer.save_snapshot(tmp_path / "snap" / "memory.npz")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["memory.npz"]
    after = [
        localizer.process(f, 10**9 + (5 + k) * STEP_NS, False).pose
        for k, f in enumerate(frames[5:])
    ]

    localizer.reset()
    drive(localizer, frames[:2])  # something else in memory meanwhile
    meta = localizer.load_snapshot(path)
    assert meta["frames"] == 5 and meta["model_sha256"] == localizer.model_sha256
    again = [
        localizer.process(f, 10**9 + (5 + k) * STEP_NS, False).pose
        for k, f in enumerate(frames[5:])
    ]
    # Identical memory and anchor; only the first frame after loading lacks the image
    # comparison with the frame before the snapshot, so poses agree closely, not exactly.
    np.testing.assert_allclose(np.array(again)[:, :3], np.array(after)[:, :3], atol=0.05)


def test_snapshots_from_another_model_or_broken_are_refused(
    localizer: Localizer, tmp_path: Path
) -> None:
    drive(localizer, rgb_frames(2))
    path = localizer.save_snapshot(tmp_path / "memory.npz")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["meta"]))
    meta.update(model="other", model_sha256="0" * 64)
    arrays["meta"] = np.array(json.dumps(meta))
    other = tmp_path / "other.npz"
    np.savez(other, **arrays)
    frames_before = localizer.runtime.frames
    with pytest.raises(SnapshotError, match="written by model 'other'.*refused"):
        localizer.load_snapshot(other)
    assert localizer.runtime.frames == frames_before  # nothing changed

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SnapshotError, match="cannot read"):
        localizer.load_snapshot(truncated)
    with pytest.raises(SnapshotError, match="cannot read"):
        localizer.load_snapshot(tmp_path / "missing.npz")


def test_a_failed_save_leaves_the_previous_snapshot(localizer: Localizer, tmp_path: Path) -> None:
    drive(localizer, rgb_frames(2))
    path = localizer.save_snapshot(tmp_path / "memory.npz")
    before = path.read_bytes()
    (tmp_path / "blocker").write_text("a file, not a directory")
    with pytest.raises(SnapshotError, match="cannot write"):
        localizer.save_snapshot(tmp_path / "blocker" / "memory.npz")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "memory.npz"]


def with_odometry(localizer: Localizer, rgb: np.ndarray, k: int, dx: float = 0.05) -> Estimate:
    """Frame ``k`` with odometry ``dx`` m per frame forward (as :func:`drive`)."""
    stamp = 10**9 + k * STEP_NS
    localizer.add_odometry(stamp, np.array([dx * k, 0, 0, 0, 0, 0, 1.0]))
    return localizer.process(rgb, stamp, use_odometry=True)


def test_a_worse_tracking_state_must_last_to_be_entered(localizer: Localizer) -> None:
    localizer.config.tracking_frames = 3
    frames = rgb_frames(8)
    drive(localizer, frames[:2], odom=True)
    localizer.config.lost_sigma_m = 1e-12  # every frame from here is LOST on its own
    states = [with_odometry(localizer, f, 2 + k).tracking for k, f in enumerate(frames[2:5])]
    assert states == [TrackingState.OK, TrackingState.OK, TrackingState.LOST]
    localizer.config.lost_sigma_m = localizer.config.uncertain_sigma_m = 100.0
    assert with_odometry(localizer, frames[5], 5).tracking is TrackingState.OK


def test_without_odometry_a_model_that_takes_it_is_at_best_uncertain(
    localizer: Localizer,
) -> None:
    """Images only, the shipped model is several times less accurate than with odometry
    (docs/benchmarks.md) while its sigma overlaps: it never says OK then."""
    assert localizer.runtime.spec.uses_odom
    states = [e.tracking for e in drive(localizer, rgb_frames(4))]
    # The first frame has no motion to get wrong; a worse state is entered at once here
    # (tracking_frames 1).
    assert states == [TrackingState.OK] + [TrackingState.UNCERTAIN] * 3
    frames = rgb_frames(6)
    first = with_odometry(localizer, frames[4], 4)  # the first odometry gives no motion yet
    assert not first.odometry_used and first.tracking is TrackingState.UNCERTAIN
    assert with_odometry(localizer, frames[5], 5).tracking is TrackingState.OK


@pytest.mark.parametrize(
    "make_frames, odometry_step, fault",
    [
        # A lens cap: uniform grey with sensor noise, nothing to track.
        (lambda: covered_frames(6), 0.05, VisionFault.BLIND),
        # A fast turn's smear: a 61-pixel horizontal blur.
        (lambda: [cv2.blur(f, (61, 1)) for f in rgb_frames(6)], 0.05, VisionFault.BLURRED),
        # A driver re-sending its last frame while the wheels say the robot moves.
        (lambda: rgb_frames(1) * 6, 0.05, VisionFault.FROZEN),
        # The corners show a turn the odometry does not.
        (lambda: rgb_frames(6), 0.05, VisionFault.DISAGREES),
    ],
)
def test_a_camera_that_cannot_be_trusted_is_uncertain_with_odometry_and_lost_without(
    localizer: Localizer, make_frames, odometry_step, fault
) -> None:
    localizer.config.tracking_frames = 2
    localizer.config.health = HealthConfig()
    frames = make_frames()
    estimates = [with_odometry(localizer, f, k, odometry_step) for k, f in enumerate(frames)]
    faults = [e.vision_fault for e in estimates[1:]]  # frame 0 has no pair to compare
    assert None not in faults and faults.count(fault) >= 4, faults
    assert estimates[-1].tracking is TrackingState.UNCERTAIN
    assert np.all(np.diag(estimates[-1].pose_covariance.reshape(6, 6)) < LOST_VARIANCE)
    if fault is VisionFault.BLIND:  # images only there is nothing left to go on
        lost = [
            localizer.process(f, 10**9 + (6 + k) * STEP_NS, False) for k, f in enumerate(frames)
        ]
        assert lost[-1].tracking is TrackingState.LOST
        assert lost[-1].vision_fault is VisionFault.BLIND


def covered_frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [np.clip(rng.normal(30, 2, (72, 96, 3)), 0, 255).astype(np.uint8) for _ in range(count)]


def _turning(localizer: Localizer, rgb: np.ndarray, k: int, yaw_per_frame: float) -> Estimate:
    stamp = 10**9 + k * STEP_NS
    yaw = yaw_per_frame * k
    base = np.array([0.05 * k, 0, 0, 0, 0, np.sin(yaw / 2), np.cos(yaw / 2)])
    localizer.add_odometry(stamp, base)
    return localizer.process(rgb, stamp, use_odometry=True)


@pytest.mark.parametrize("checks", [True, False])
def test_a_frozen_camera_does_not_teach_the_drift_filter(runtime, checks: bool) -> None:
    """A frozen frame reads as "not turning" while the wheels turn slowly, within the
    drift filter's gate: without the vision checks the filter takes the turn for drift
    (and then removes it from good odometry); with them it is not fed those cues."""
    config = LocalizerConfig(base_to_camera=MOUNT.copy(), health=HealthConfig(enabled=checks))
    localizer = Localizer(runtime, config)
    frozen = rgb_frames(1)[0]
    for k in range(40):
        estimate = _turning(localizer, frozen, k, yaw_per_frame=0.005)  # 0.05 rad/s
    drift = float(np.abs(runtime.state["bias"]).max())
    if checks:
        assert estimate.vision_fault is VisionFault.FROZEN
        assert drift < 1e-3
    else:
        assert drift > 0.01  # rad/s: what the frozen camera taught it


@pytest.mark.parametrize(
    "pose, why",
    [
        ([np.nan, 0, 0, 0, 0, 0, 1.0], "not finite"),
        ([0, np.inf, 0, 0, 0, 0, 1.0], "not finite"),
        ([1e300, 0, 0, 0, 0, 0, 1.0], "position beyond 1e+06 m"),
        ([0, 0, 0, 0, 0, 0, 0.0], "quaternion of length 0"),
    ],
)
def test_odometry_that_would_poison_the_memory_is_refused(
    localizer: Localizer, pose: list[float], why: str
) -> None:
    """benchmarks/fuzz.py found it: one NaN (or 1e300 m) odometry sample next to a frame
    made the network's state NaN, and every pose after it."""
    frames = rgb_frames(4)
    drive(localizer, frames[:2], odom=True)
    stamp = 10**9 + 2 * STEP_NS
    assert localizer.add_odometry(stamp, np.array(pose)) == why
    after = [
        localizer.process(f, stamp + k * STEP_NS, use_odometry=True)
        for k, f in enumerate(frames[2:])
    ]
    assert all(np.all(np.isfinite(e.pose)) for e in after)
    assert np.isfinite(localizer.memory_norm)


def test_a_quaternion_off_unit_length_is_normalised(localizer: Localizer) -> None:
    assert localizer.add_odometry(10**9, np.array([0, 0, 0, 0, 0, 0, 1.5])) is None
    np.testing.assert_array_equal(localizer.odometry_at(10**9), [0, 0, 0, 0, 0, 0, 1.0])
