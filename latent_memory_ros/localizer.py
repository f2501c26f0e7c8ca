"""What the node does with each frame, without ROS: frames, covariance, tracking, time.

:class:`Localizer` wraps a :class:`~latent_memory_ros.runtime.StudentRuntime` and turns
its output (the camera optical frame in the first camera frame, and the log variance of
each frame's motion) into what a robot consumes (REP 103 / REP 105):

- the **base** pose in the **odom** frame: ``O_t = A · T_bc · C_t · T_bc⁻¹`` where ``C_t``
  is the model's camera pose, ``T_bc`` the base → camera extrinsic and ``A`` the anchor
  (identity at start; moved by :meth:`set_pose` and by memory restarts, so the output
  stays continuous, as REP 105 asks of the odom frame);
- a pose covariance that accumulates the predicted per-frame motion covariance, rotated
  into the odom frame (a first-order random walk), and a twist in the base frame with the
  per-frame covariance divided by dt²;
- a tracking state from the predicted per-frame translation sigma (OK / UNCERTAIN /
  LOST) and from :mod:`~latent_memory_ros.health`'s checks of the camera (one that
  cannot be trusted is UNCERTAIN with odometry and LOST without); when LOST the
  covariances are replaced by :data:`LOST_VARIANCE` (rtabmap's
  convention) so downstream filters ignore the output, and after ``lost_reset_s`` of
  LOST the memory restarts;
- time: a stamp that goes backwards (a bag loop) resets everything, a gap longer than
  ``max_gap_s`` restarts the memory, and dt jitter is reported. A jump is trusted only
  when the next frame follows it: the first frame after one is rejected, so a lone
  outlier stamp (0, negative, years ahead) changes nothing.

Odometry association lives here too, so the node only adapts messages.
Snapshots of the memory are written atomically and carry the model's sha256.
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latent_memory_ros import geometry
from latent_memory_ros.health import HealthConfig, VisionFault, VisionHealth
from latent_memory_ros.model_format import STEP_FILE, ModelError
from latent_memory_ros.runtime import CameraMotionFromOdometry, StudentRuntime
from latent_memory_ros.snapshots import (
    SnapshotError,
    read_snapshot,
    remove_stale_temporaries,
    write_snapshot,
)

__all__ = [
    "LOST_VARIANCE",
    "RESTART_EVENTS",
    "Estimate",
    "EventKind",
    "Localizer",
    "LocalizerConfig",
    "Restart",
    "SnapshotError",
    "StampError",
    "TrackingState",
    "remove_stale_temporaries",
]

IDENTITY = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
# rtabmap publishes lost odometry with this variance on the diagonal; robot_localization
# and other filters then give the measurement (almost) no weight.
LOST_VARIANCE = 9999.0
# Two seconds of 100 Hz odometry: more than any camera latency, so the match is there.
ODOM_BUFFER_LENGTH = 200
# Odometry further from its origin than this is no robot's (a corrupted message): one
# sample of 1e300 m made the network's state NaN for good (benchmarks/fuzz.py).
ODOM_MAX_ABS_M = 1e6
DT_HISTORY = 30


class TrackingState(enum.Enum):
    OK = 0
    UNCERTAIN = 1
    LOST = 2


class EventKind(str, enum.Enum):
    """What happened on a frame (:attr:`Estimate.events`); the value is also the key the
    node throttles its warnings by."""

    TIME_BACKWARDS = "time_backwards"
    GAP = "gap"
    JITTER = "jitter"
    LOST_RESET = "lost_reset"
    NO_ODOMETRY = "no_odometry"


# The events that restart the memory (counted as memory_resets on /diagnostics).
RESTART_EVENTS = frozenset({EventKind.TIME_BACKWARDS, EventKind.GAP, EventKind.LOST_RESET})


class Restart(str, enum.Enum):
    """What a frame's stamp restarted before it ran (:attr:`Estimate.restart`)."""

    MEMORY = "memory"  # a gap: the memory starts over, the pose continues
    FULL = "full"  # time went back: memory, pose and path start over


class StampError(ValueError):
    """A frame whose stamp cannot be used (the same as the previous frame's, or a jump
    that the next frame has not confirmed yet)."""


@dataclass
class LocalizerConfig:
    base_to_camera: np.ndarray  # camera optical frame in the base frame, xyz_qxyzw
    odom_tolerance_s: float = 0.1
    max_gap_s: float = 1.0  # 0: never restart on a gap
    # Tracking thresholds on the predicted per-frame translation sigma (m); 0: the model's
    # own (model.json ``tracking``, derived from its held-out sigma).
    uncertain_sigma_m: float = 0.0
    lost_sigma_m: float = 0.0
    tracking_frames: int = 3  # a worse state must last this many frames to be entered
    lost_reset_s: float = 2.0  # 0: never restart automatically
    jitter_warn_s: float = 0.02  # 0: never warn
    health: HealthConfig = field(default_factory=HealthConfig)


@dataclass
class Estimate:
    """The outputs for one frame, all in ROS conventions (base frame in the odom frame)."""

    stamp_ns: int
    pose: np.ndarray  # (7,) base in odom
    pose_covariance: np.ndarray  # (36,) row-major, x y z rx ry rz, in the odom frame
    twist: np.ndarray | None  # (6,) base velocity in the base frame; None after a restart
    twist_covariance: np.ndarray  # (36,)
    tracking: TrackingState
    sigma_m: float  # predicted per-frame translation sigma
    step_ms: float
    odometry_used: bool
    # (kind, message) of what happened on this frame. A full restart also means the
    # path starts over.
    events: list[tuple[EventKind, str]] = field(default_factory=list)
    restart: Restart | None = None
    vision_fault: VisionFault | None = None  # why this frame's camera was not trusted


def _rotation_block(rotation: np.ndarray) -> np.ndarray:
    block = np.zeros((6, 6))
    block[:3, :3] = block[3:, 3:] = rotation
    return block


class OdometryBuffer:
    """Recent base poses from odometry by stamp; :meth:`add` and :meth:`covers` take a
    lock of their own, so odometry keeps flowing in while a frame is being processed."""

    def __init__(self, length: int = ODOM_BUFFER_LENGTH) -> None:
        self._samples: deque[tuple[int, np.ndarray]] = deque(maxlen=length)
        self._lock = threading.Lock()

    def add(self, stamp_ns: int, base_pose: np.ndarray) -> None:
        with self._lock:
            self._samples.append((stamp_ns, np.asarray(base_pose, dtype=np.float64)))

    def covers(self, stamp_ns: int) -> bool:
        with self._lock:
            return bool(self._samples) and self._samples[-1][0] >= stamp_ns

    def at(self, stamp_ns: int, tolerance_ns: int) -> np.ndarray | None:
        """Interpolated between the samples around ``stamp_ns`` (at most 2 ×
        ``tolerance_ns`` apart), else the nearest within ``tolerance_ns``."""
        before = after = None
        with self._lock:
            for sample in self._samples:
                if sample[0] <= stamp_ns:
                    before = sample
                elif after is None:
                    after = sample
        if before is not None and before[0] == stamp_ns:
            return before[1]
        if before is not None and after is not None and after[0] - before[0] <= 2 * tolerance_ns:
            fraction = (stamp_ns - before[0]) / (after[0] - before[0])
            return geometry.interpolate(before[1], after[1], fraction)
        near = [s for s in (before, after) if s is not None]
        nearest = min(near, key=lambda s: abs(s[0] - stamp_ns), default=None)
        if nearest is None or abs(nearest[0] - stamp_ns) > tolerance_ns:
            return None
        return nearest[1]


class TrackingMonitor:
    """The tracking state from frame to frame, by the rules of :meth:`update`. It reads
    its thresholds from the localizer's config at every frame, so they are settable at
    run time."""

    def __init__(self, config: LocalizerConfig, model_thresholds: dict) -> None:
        self.config = config
        self._model = model_thresholds  # model.json ``tracking``
        self.reset()

    def reset(self) -> None:
        self.state = TrackingState.OK
        self._recent: deque[TrackingState] = deque(maxlen=1000)  # raw per-frame states
        self._lost_since_ns: int | None = None

    @property
    def thresholds(self) -> tuple[float, float]:
        """(uncertain, lost) sigma in use: the configured ones, else the model's."""
        return (
            self.config.uncertain_sigma_m or self._model["uncertain_sigma_m"],
            self.config.lost_sigma_m or self._model["lost_sigma_m"],
        )

    def update(
        self,
        sigma: float,
        stamp_ns: int,
        fault: VisionFault | None,
        odometry_used: bool,
        odometry_expected: bool,
    ) -> None:
        """The state of this frame, entered at once when it is better than the current
        one and after ``tracking_frames`` frames in a row when worse: its sigma's, but
        at least UNCERTAIN when a model that takes odometry ran without it
        (``odometry_expected``: images only, such a model is several times less accurate
        than with odometry, which its sigma does not fully show: docs/benchmarks.md) and
        when the camera cannot be trusted, then LOST without odometry."""
        uncertain, lost = self.thresholds
        if sigma >= lost:
            raw = TrackingState.LOST
        elif sigma >= uncertain:
            raw = TrackingState.UNCERTAIN
        else:
            raw = TrackingState.OK
        floor = TrackingState.OK
        if fault is not None:
            floor = TrackingState.UNCERTAIN if odometry_used else TrackingState.LOST
        elif not odometry_used and odometry_expected:
            floor = TrackingState.UNCERTAIN
        raw = max(raw, floor, key=lambda s: s.value)
        self._recent.append(raw)
        recent = list(self._recent)[-self.config.tracking_frames :]
        if raw.value <= self.state.value:
            self.state = raw
        elif len(recent) >= self.config.tracking_frames:
            persistent = min(recent, key=lambda s: s.value)  # the best of the last N
            self.state = max(self.state, persistent, key=lambda s: s.value)
        if self.state is TrackingState.LOST:
            if self._lost_since_ns is None:
                self._lost_since_ns = stamp_ns
        else:
            self._lost_since_ns = None

    def lost_too_long(self, stamp_ns: int) -> float | None:
        """Seconds LOST when that is at least ``lost_reset_s`` (the memory should
        restart), else None."""
        if self._lost_since_ns is None or self.config.lost_reset_s <= 0:
            return None
        lost_for = (stamp_ns - self._lost_since_ns) * 1e-9
        return lost_for if lost_for >= self.config.lost_reset_s else None


class Localizer:
    """One camera's localisation state. Not thread-safe: the node serialises the calls,
    except :meth:`add_odometry` / :meth:`odometry_covers`, which have their own lock so
    odometry keeps flowing in while a frame is being processed."""

    def __init__(self, runtime: StudentRuntime, config: LocalizerConfig) -> None:
        self.runtime = runtime
        self.config = config
        self._odom = OdometryBuffer()
        self._health = VisionHealth()
        self._tracking = TrackingMonitor(config, runtime.spec.tracking)
        self.set_base_to_camera(config.base_to_camera)
        self.reset()

    # Configuration and control -------------------------------------------------------

    def set_base_to_camera(self, base_to_camera: np.ndarray) -> None:
        pose = np.asarray(base_to_camera, dtype=np.float64).copy()
        pose[3:] = geometry.quat_normalize(pose[3:])
        self.config.base_to_camera = pose
        self._camera_to_base = geometry.inverse(pose)
        self._camera_motion = CameraMotionFromOdometry(pose)
        # Per-frame motion covariance comes in camera optical axes.
        self._base_from_optical = _rotation_block(geometry.quat_to_matrix(pose[3:]))

    def reset(self) -> None:
        """Forget everything: memory, pose (back to the odom origin), time."""
        self._anchor = IDENTITY.copy()
        self._covariance = np.zeros((6, 6))
        self.last_pose: np.ndarray | None = None  # last published base pose in odom
        self._restart_memory()

    def _restart_memory(self) -> None:
        """A new memory whose first pose continues from the last output (REP 105: the
        odom frame does not jump)."""
        self.runtime.reset()
        self._health.reset()
        if self.last_pose is not None:
            self._anchor = self.last_pose.copy()
        self._base_in_start: np.ndarray | None = None
        self._restart_time()

    def set_pose(self, pose: np.ndarray, covariance: np.ndarray | None = None) -> None:
        """Re-anchor: the last output (or the next, before any frame) becomes ``pose``."""
        pose = np.asarray(pose, dtype=np.float64).copy()
        pose[3:] = geometry.quat_normalize(pose[3:])
        current = self._base_in_start if self._base_in_start is not None else IDENTITY
        self._anchor = geometry.compose(pose, geometry.inverse(current))
        self.last_pose = pose
        if covariance is not None:
            self._covariance = np.asarray(covariance, dtype=np.float64).reshape(6, 6).copy()

    @property
    def memory_norm(self) -> float:
        """Norm of the memory tensors (model.json role ``memory``: the state minus the
        carried pose and drift filter)."""
        state = self.runtime.state
        memory = [state[k] for k in self.runtime.spec.memory_state]
        return float(np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in memory)))

    # Odometry -------------------------------------------------------------------------

    def add_odometry(self, stamp_ns: int, base_pose: np.ndarray) -> str | None:
        """Buffer one odometry sample (its quaternion normalised); returns why it was
        refused instead: a non-finite value, a position beyond ODOM_MAX_ABS_M or a
        quaternion of length outside 0.5-2 (zero is no rotation), any of which would make
        the memory NaN for good."""
        pose = np.asarray(base_pose, dtype=np.float64)
        if pose.shape != (7,) or not np.all(np.isfinite(pose)):
            return "not finite"
        if np.max(np.abs(pose[:3])) > ODOM_MAX_ABS_M:
            return f"position beyond {ODOM_MAX_ABS_M:g} m"
        norm = float(np.linalg.norm(pose[3:]))
        if not 0.5 < norm < 2.0:  # a driver's rounding is close to 1; zero is no rotation
            return f"quaternion of length {norm:.3g}"
        if abs(norm - 1.0) > 1e-9:
            pose = np.concatenate([pose[:3], pose[3:] / norm])
        self._odom.add(stamp_ns, pose)
        return None

    def odometry_covers(self, stamp_ns: int) -> bool:
        return self._odom.covers(stamp_ns)

    def odometry_at(self, stamp_ns: int) -> np.ndarray | None:
        """The base pose at ``stamp_ns``: interpolated between the samples around it (at
        most 2 × odom_tolerance_s apart), else the nearest within odom_tolerance_s."""
        return self._odom.at(stamp_ns, int(self.config.odom_tolerance_s * 1e9))

    # Frames ---------------------------------------------------------------------------

    def process(self, rgb: np.ndarray, stamp_ns: int, use_odometry: bool) -> Estimate:
        """Run one frame; raises :class:`StampError` for a repeated stamp or the first
        frame after a time jump (nothing changes then)."""
        events: list[tuple[EventKind, str]] = []
        restart = self._check_time(stamp_ns, events)
        last = self._last_stamp_ns
        dt = None if last is None else (stamp_ns - last) * 1e-9

        motion = None
        if use_odometry:
            base = self.odometry_at(stamp_ns)
            if base is None:
                # The next frame's motion would otherwise span two frames.
                self._camera_motion.reset()
                events.append(
                    (
                        EventKind.NO_ODOMETRY,
                        f"no odometry within {self.config.odom_tolerance_s:.3f} s of the "
                        "image stamp; this frame runs without it",
                    )
                )
            else:
                motion = self._camera_motion.update(base)

        fault: VisionFault | None = None

        def trust_cues(gray: np.ndarray, cue_vector: np.ndarray) -> bool:
            # With odometry, the drift filter must not learn from a camera that cannot
            # be trusted: a frozen frame reads as "not turning" while the wheels turn
            # slowly enough to pass the filter's gate (docs/benchmarks.md, "Graceful
            # degradation"). Images only the cues are all the model has: kept.
            nonlocal fault
            fault = self._health.check(gray, cue_vector, motion, dt, self.config.health)
            return fault is None or motion is None

        result = self.runtime.step(rgb, odom_motion=motion, dt=dt, trust_cues=trust_cues)
        base_in_start = geometry.compose(
            geometry.compose(self.config.base_to_camera, result.pose), self._camera_to_base
        )
        pose = geometry.compose(self._anchor, base_in_start)

        motion_cov = self._base_from_optical @ np.diag(np.exp(result.log_var))
        motion_cov = motion_cov @ self._base_from_optical.T  # in base axes
        to_odom = _rotation_block(geometry.quat_to_matrix(pose[3:]))
        self._covariance = self._covariance + to_odom @ motion_cov @ to_odom.T

        twist = None
        twist_cov = np.zeros((6, 6))
        if dt is not None and self.last_pose is not None and restart is None:
            step = geometry.relative(self.last_pose, pose)
            twist = np.concatenate([step[:3], geometry.quat_to_rotvec(step[3:])]) / dt
            twist_cov = motion_cov / (dt * dt)

        sigma = float(np.sqrt(np.mean(np.exp(result.log_var[:3]))))
        # (a first frame has no motion to get wrong)
        expects_odometry = self.runtime.spec.uses_odom and self.runtime.frames > 1
        self._tracking.update(sigma, stamp_ns, fault, motion is not None, expects_odometry)
        pose_cov = self._covariance
        if self.tracking is TrackingState.LOST:
            pose_cov = twist_cov = np.eye(6) * LOST_VARIANCE

        estimate = Estimate(
            stamp_ns=stamp_ns,
            pose=pose,
            pose_covariance=pose_cov.reshape(36).copy(),
            twist=twist,
            twist_covariance=twist_cov.reshape(36).copy(),
            tracking=self.tracking,
            sigma_m=sigma,
            step_ms=result.step_ms,
            odometry_used=motion is not None,
            events=events,
            restart=restart,
            vision_fault=fault,
        )
        self._base_in_start, self.last_pose, self._last_stamp_ns = base_in_start, pose, stamp_ns
        lost_for = self._tracking.lost_too_long(stamp_ns)
        if lost_for is not None:
            events.append(
                (EventKind.LOST_RESET, f"tracking lost for {lost_for:.1f} s: the memory restarts")
            )
            self._restart_memory()
        return estimate

    def _check_time(self, stamp_ns: int, events: list[tuple[EventKind, str]]) -> Restart | None:
        """The restart this frame's stamp calls for: None, a memory restart (a gap) or a
        full one (time went back). A jump (back, or ahead by more than ``max_gap_s``) is acted on
        only at the second frame that lands on the new time; the first one raises
        StampError, so one wild stamp among good ones is rejected and nothing resets."""
        last = self._last_stamp_ns
        if last is None:
            return None
        dt = (stamp_ns - last) * 1e-9
        if dt == 0.0:
            raise StampError("stamp equal to the previous frame's (a duplicate frame)")
        if dt < 0.0 or (self.config.max_gap_s > 0 and dt > self.config.max_gap_s):
            candidate, self._jump_ns = self._jump_ns, stamp_ns
            # It follows the candidate (not the old time) when it is just after it: within
            # max_gap_s, as a camera's next frame is. Two unrelated wild stamps, the second
            # merely nearer the first than the old time, confirmed a jump back before
            # (benchmarks/fuzz.py: 7 full resets in 10,000 messages).
            follows = abs(stamp_ns - last)
            if self.config.max_gap_s > 0:
                follows = min(follows, int(self.config.max_gap_s * 1e9) + 1)
            if candidate is None or not 0 < stamp_ns - candidate < follows:
                raise StampError(
                    f"stamp {stamp_ns * 1e-9:.3f} s is {abs(dt):.3f} s "
                    f"{'before' if dt < 0 else 'after'} the previous frame's: rejected "
                    "unless the next frame follows it (a bag loop or a pause)"
                )
            return self._jump(candidate, events)
        self._jump_ns = None  # a lone outlier before this frame stays rejected
        if len(self._dts) >= 5 and self.config.jitter_warn_s > 0:
            typical = float(np.median(self._dts))
            if abs(dt - typical) > self.config.jitter_warn_s:
                events.append(
                    (
                        EventKind.JITTER,
                        f"frame interval {dt * 1e3:.1f} ms, typically {typical * 1e3:.1f} ms",
                    )
                )
        self._dts.append(dt)
        return None

    def _jump(self, new_time_ns: int, events: list[tuple[EventKind, str]]) -> Restart:
        """Act on a time jump to ``new_time_ns`` that two frames in a row confirmed."""
        jump = (new_time_ns - self._last_stamp_ns) * 1e-9
        if jump < 0.0:
            events.append(
                (
                    EventKind.TIME_BACKWARDS,
                    f"image stamp went back by {-jump:.3f} s (a bag loop?): memory, pose "
                    "and path reset",
                )
            )
            self.reset()
            return Restart.FULL
        events.append(
            (
                EventKind.GAP,
                f"{jump:.3f} s since the previous frame (max_gap_s "
                f"{self.config.max_gap_s:g}): the memory restarts, the pose continues",
            )
        )
        self._restart_memory()
        return Restart.MEMORY

    @property
    def tracking(self) -> TrackingState:
        return self._tracking.state

    @property
    def tracking_thresholds(self) -> tuple[float, float]:
        """(uncertain, lost) sigma in use: the configured ones, else the model's."""
        return self._tracking.thresholds

    # Snapshots ------------------------------------------------------------------------

    @property
    def model_sha256(self) -> str:
        return self.runtime.spec.sha256[STEP_FILE]

    def save_snapshot(self, path: Path | str) -> Path:
        """Write the memory and the output anchor to ``path`` atomically (a temporary file
        in the same directory, fsynced, then renamed over it). Temporary files of
        earlier saves that were killed are deleted first."""
        meta = {
            "model": self.runtime.spec.name,
            "model_sha256": self.model_sha256,
            "frames": self.runtime.frames,
        }
        arrays = {f"state.{k}": v for k, v in self.runtime.state.items()}
        arrays["anchor"] = self._anchor
        arrays["covariance"] = self._covariance
        if self._base_in_start is not None:
            arrays["base_in_start"] = self._base_in_start
        return write_snapshot(path, meta, arrays)

    def load_snapshot(self, path: Path | str) -> dict:
        """Restore a snapshot written by :meth:`save_snapshot` for this same model; the
        next frame continues the memory and the pose (without a motion from the frame
        before the snapshot). Raises :class:`SnapshotError` naming the problem; on error
        nothing changes."""
        path = Path(path).expanduser()
        meta, arrays = read_snapshot(path, self.runtime.spec.name, self.model_sha256)
        missing = {"anchor", "covariance"} - set(arrays)
        if missing:
            raise SnapshotError(f"{path}: arrays {sorted(missing)} missing")
        state = {k.removeprefix("state."): v for k, v in arrays.items() if k.startswith("state.")}
        try:
            self.runtime.restore(state, frames=int(meta.get("frames", 0)))
        except ModelError as err:
            raise SnapshotError(f"{path}: {err}") from err
        self._restart_time()
        # The vision checks start over too: a restarted node has no previous image, and
        # a loaded snapshot must lead to the same outputs in either.
        self._health.reset()
        self._anchor = arrays["anchor"]
        self._covariance = arrays["covariance"]
        self._base_in_start = arrays.get("base_in_start")
        if self._base_in_start is not None:
            self.last_pose = geometry.compose(self._anchor, self._base_in_start)
        return meta

    def _restart_time(self) -> None:
        """The next frame starts a new chain of time steps and odometry motions."""
        self._last_stamp_ns: int | None = None
        self._jump_ns: int | None = None  # the rejected first frame after a time jump
        self._dts: deque[float] = deque(maxlen=DT_HISTORY)
        self._camera_motion.reset()
        self._tracking.reset()
