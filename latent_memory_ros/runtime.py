"""The student network at run time, without ROS: ONNX session, carried state, pre-processing.

The node and the offline evaluation both drive a :class:`StudentRuntime`; it knows
nothing of messages, topics or clocks.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from latent_memory_ros import cues, geometry
from latent_memory_ros.defaults import DEFAULT_PROVIDERS
from latent_memory_ros.model_files import (
    check_query_graph,
    check_step_graph,
    checked_file,
    load_init_state,
    load_session,
)
from latent_memory_ros.model_format import (
    METADATA_FILE,
    ODOM_NONE,
    STEP_FILE,
    ModelError,
    ModelSpec,
    load_spec,
)

__all__ = [
    "DEFAULT_PROVIDERS",
    "CameraMotionFromOdometry",
    "ModelError",
    "QueryResult",
    "RunResult",
    "StepResult",
    "StudentRuntime",
]

log = logging.getLogger(__name__)

_GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider"}
_ODOM_INVALID = np.array([ODOM_NONE], dtype=np.float32)


@dataclass
class StepResult:
    pose: np.ndarray  # (7,) camera optical frame in the start camera frame, xyz_qxyzw
    log_var: np.ndarray  # (6,) log variance of this frame's motion: x, y, z, rx, ry, rz
    step_ms: float


@dataclass
class QueryResult:
    """Where the camera that took a query image is, seen from the current camera."""

    pose: np.ndarray  # (7,) query camera in the current camera optical frame, xyz_qxyzw
    log_var: np.ndarray  # (6,) log variance of pose: x, y, z (m^2), rx, ry, rz (rad^2)
    query_ms: float
    # The probability that the place is in the memory (and the answer right); None for
    # models whose query graph does not say (model.json query.outputs without "seen").
    seen: float | None = None


@dataclass
class RunResult:
    """What :meth:`StudentRuntime.run` returns for a whole run of N frames."""

    poses: np.ndarray  # (N, 7) camera optical frame in the start camera frame, xyz_qxyzw
    log_var: np.ndarray  # (N, 6) log variance of each frame's motion (see StepResult)
    step_ms: np.ndarray  # (N,) time of each step in ms


class CameraMotionFromOdometry:
    """Turns successive base poses from wheel odometry into camera motions per frame."""

    def __init__(self, base_to_camera: np.ndarray) -> None:
        self.base_to_camera = np.asarray(base_to_camera, dtype=np.float64)
        self._camera_to_base = geometry.inverse(self.base_to_camera)
        self._last: np.ndarray | None = None

    def update(self, odom_base_pose: np.ndarray) -> np.ndarray | None:
        """Camera motion since the previous update (``T_prev_cur``), None on the first."""
        pose = np.asarray(odom_base_pose, dtype=np.float64)
        last, self._last = self._last, pose
        if last is None:
            return None
        base_motion = geometry.relative(last, pose)
        return geometry.compose(
            geometry.compose(self._camera_to_base, base_motion), self.base_to_camera
        )

    def reset(self) -> None:
        self._last = None


class StudentRuntime:
    """One exported student: call :meth:`step` once per camera frame, in order."""

    def __init__(
        self,
        model_dir: Path | str,
        providers: tuple[str, ...] | list[str] | None = DEFAULT_PROVIDERS,
        warmup: int = 3,
        intra_op_threads: int = 1,
    ) -> None:
        import onnxruntime as ort

        self.spec: ModelSpec = load_spec(model_dir)
        step_path = checked_file(self.spec, STEP_FILE)
        requested = list(providers or DEFAULT_PROVIDERS)
        available = set(ort.get_available_providers())
        usable = [p for p in requested if p in available] or ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # onnxruntime print()s its own provider fallback to stdout, which would corrupt a
        # CLI's output: capture it and fold the reason into our warning instead.
        ep_messages = io.StringIO()
        self._session = load_session(step_path, options, usable, ep_messages)
        self.requested_providers = requested
        self.active_providers = list(self._session.get_providers())
        wanted_gpu = [p for p in requested if p in _GPU_PROVIDERS]
        active_gpu = [p for p in self.active_providers if p in _GPU_PROVIDERS]
        self.fallback_warning: str | None = None
        if wanted_gpu and not active_gpu:
            reason = " ".join(ep_messages.getvalue().split())
            self.fallback_warning = (
                f"requested {', '.join(wanted_gpu)} but running on "
                f"{', '.join(self.active_providers)}" + (f" ({reason[:300]})" if reason else "")
            )
            log.warning("latent_memory runtime: %s", self.fallback_warning)
        check_step_graph(self.spec, self._session, step_path)
        self._query_session = None
        self._query_state: tuple[str, ...] = ()
        if self.spec.query is not None:
            query_path = checked_file(self.spec, self.spec.query.file)
            self._query_session = load_session(
                query_path, options, self.active_providers, io.StringIO()
            )
            check_query_graph(self.spec, self._query_session, query_path)
            self._query_state = tuple(
                name.removeprefix("state.")
                for name in self.spec.query.inputs
                if name.startswith("state.")
            )
        self._query_camera = self.spec.query is not None and "camera" in self.spec.query.inputs
        self._init_state = load_init_state(self.spec)
        self._mean = np.array(self.spec.mean, dtype=np.float32).reshape(3, 1, 1) * 255.0
        self._inv_std = 1.0 / (np.array(self.spec.std, dtype=np.float32).reshape(3, 1, 1) * 255.0)
        self._cue_config = cues.CueConfig(
            width=int(self.spec.cues.get("width", 320)),
            height=int(self.spec.cues.get("height", 240)),
        )
        self._cue_intrinsics = cues.scale_intrinsics(
            self.spec.intrinsics, self._cue_config.width / self.spec.image_width
        )
        self._cue_tracker = cues.CueTracker(self._cue_intrinsics, self._cue_config)
        self._output_names = [o.name for o in self._session.get_outputs()]
        self.set_camera(self.spec.intrinsics, self.spec.image_width, self.spec.image_height)
        self.reset()
        blank = np.zeros((self.spec.image_height, self.spec.image_width, 3), np.uint8)
        for _ in range(warmup):
            self.step(blank)
            if self.supports_query:
                self.query(blank)
        self.reset()

    def reset(self) -> None:
        """Forget everything: memory, pose and the previous frame."""
        self._state = {k: v.copy() for k, v in self._init_state.items()}
        self._cue_tracker.reset()
        self.frames = 0
        # What the last step spent where (ms): preprocess (the network input), grey (the
        # cue-size grey image), cues, health (``trust_cues``), onnx (the step graph) and
        # state (feed, carried state, outputs). benchmarks/profile_hot_path.py reads it.
        self.stage_ms: dict[str, float] = {}

    def forget_memory(self) -> None:
        """Reset only the memory cell's state entries (``model.json`` role ``memory``) to
        their initial values; the integrated pose, the odometry-drift filter, the
        previous frame and the frame count are kept. Called before every frame, it
        measures what the memory is worth (``run(..., reset_memory=True)``)."""
        for name in self.spec.memory_state:
            self._state[name] = self._init_state[name].copy()

    @property
    def state(self) -> dict[str, np.ndarray]:
        """The carried state tensors (copies), e.g. for snapshots."""
        return {k: v.copy() for k, v in self._state.items()}

    @property
    def camera_aware(self) -> bool:
        """Whether the network takes the camera's intrinsics (input ``camera``): then
        frames of any field of view are given as they are, with :meth:`set_camera`,
        instead of being mapped to the model's camera."""
        return "camera" in self.spec.inputs_optional

    def set_camera(self, intrinsics, width: int, height: int) -> None:
        """The camera of the frames that follow: (fx, fy, cx, cy) at ``width`` x
        ``height`` (frames of another size are taken as resized from it). The cues
        use it; a camera-aware model also reads it (:attr:`camera_aware`)."""
        k = np.asarray(intrinsics, dtype=np.float64)
        if k.shape != (4,) or not np.all(np.isfinite(k)) or k[0] <= 0 or k[1] <= 0:
            raise ValueError(f"intrinsics must be 4 finite numbers with fx, fy > 0, got {k}")
        if width < 2 or height < 2:
            raise ValueError(f"camera size {width}x{height} too small")
        self._camera_feed = cues.normalised_intrinsics(k, width, height).astype(np.float32)[None]
        # Every frame is resized to the cue resolution, so its size does not matter here.
        self._cue_tracker.intrinsics = cues.cue_intrinsics(k, width, height, self._cue_config)

    @property
    def input_camera(self) -> tuple[int, int, tuple[float, float, float, float]]:
        """The camera frames are best given as: width, height and (fx, fy, cx, cy) of the
        model's camera at the resolution its cues are computed at (the network input is
        resized from it)."""
        return self._cue_config.width, self._cue_config.height, tuple(self._cue_intrinsics)

    def restore(self, state: dict[str, np.ndarray], frames: int = 0) -> None:
        """Carry on from ``state`` (e.g. a snapshot of :attr:`state`); the next frame has
        no previous frame to compare with. Raises ModelError for arrays that do not fit."""
        restored = {}
        for name, init in self._init_state.items():
            value = state.get(name)
            if value is None or value.shape != init.shape:
                have = "missing" if value is None else f"shape {value.shape}"
                raise ModelError(f"state '{name}': {have}, the model carries {init.shape}")
            restored[name] = np.asarray(value, dtype=init.dtype).copy()
        self._state = restored
        self._cue_tracker.reset()
        self.frames = frames

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 HxWx3 of any size to the normalised ``[1, 3, H, W]`` input."""
        size = (self.spec.image_width, self.spec.image_height)
        if rgb.shape[1::-1] != size:
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        chw = rgb.transpose(2, 0, 1).astype(np.float32)
        return ((chw - self._mean) * self._inv_std)[None]

    @property
    def supports_query(self) -> bool:
        """Whether the model has a query graph (``query.onnx``): see :meth:`query`."""
        return self._query_session is not None

    def query(self, rgb: np.ndarray, state: dict[str, np.ndarray] | None = None) -> QueryResult:
        """Where the camera that took ``rgb`` (uint8 HxWx3, any size, pre-processed like
        :meth:`step`'s frames) is in the current camera's optical frame, read from the
        memory of ``state`` (default: the carried state, as after the last :meth:`step`).
        Nothing changes: the state, the frame count and the previous frame stay as they
        were. Raises ModelError when the model has no query graph."""
        start = time.perf_counter()
        if self._query_session is None:
            raise ModelError(
                f"{self.spec.directory / METADATA_FILE}: model '{self.spec.name}' has no "
                "query graph (no field 'query'; models exported before query.onnx existed)"
            )
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got {rgb.shape} {rgb.dtype}")
        state = self._state if state is None else state
        feed = {"image": self.preprocess(rgb)}
        if self._query_camera:
            feed["camera"] = self._camera_feed
        for name in self._query_state:
            feed[f"state.{name}"] = state[name]
        outputs = self._query_session.run(None, feed)
        result = dict(
            zip((o.name for o in self._query_session.get_outputs()), outputs, strict=True)
        )
        pose = result["rel_pose"][0].astype(np.float64)
        pose[3:] /= np.linalg.norm(pose[3:])
        return QueryResult(
            pose=pose,
            log_var=result["log_var"][0].astype(np.float64),
            query_ms=(time.perf_counter() - start) * 1e3,
            seen=float(result["seen"][0, 0]) if "seen" in result else None,
        )

    def step(
        self,
        rgb: np.ndarray,
        odom_motion: np.ndarray | None = None,
        dt: float | None = None,
        trust_cues: Callable[[np.ndarray, np.ndarray], bool] | None = None,
    ) -> StepResult:
        """Feed one frame; returns the pose of this frame's camera in the start frame.
        ``trust_cues(gray, cue_vector)``, when given, is asked before the network runs;
        False feeds the network "no cues" (valid 0), so that its drift filter does not
        learn from a camera that cannot be trusted."""
        clock = time.perf_counter
        start = clock()
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got {rgb.shape} {rgb.dtype}")
        feed = {"image": self.preprocess(rgb)}
        t_pre = t_gray = t_cues = t_health = clock()
        names = self.spec.inputs_optional
        if "cues" in names:
            gray = cues.to_gray(rgb, self._cue_config)
            t_gray = clock()
            feed["cues"] = self._cue_tracker.update(gray)[None]
            t_cues = clock()
            if trust_cues is not None and not trust_cues(gray, feed["cues"][0]):
                feed["cues"] = np.zeros_like(feed["cues"])
            t_health = clock()
        if "odom" in names:
            if odom_motion is None:
                feed["odom"] = _ODOM_INVALID
            else:
                feed["odom"] = np.append(odom_motion, 1.0).astype(np.float32)[None]
        if "camera" in names:
            feed["camera"] = self._camera_feed
        if "dt" in names:
            feed["dt"] = np.array([[dt if dt is not None else 0.0]], dtype=np.float32)
        for name, value in self._state.items():
            feed[f"state.{name}"] = value
        t_feed = clock()
        result = dict(zip(self._output_names, self._session.run(None, feed), strict=True))
        t_model = clock()
        for name in self._state:
            self._state[name] = result[f"state_out.{name}"]
        self.frames += 1
        pose = result["pose"][0].astype(np.float64)
        pose[3:] /= np.linalg.norm(pose[3:])
        end = clock()
        self.stage_ms = {
            "preprocess": (t_pre - start) * 1e3,
            "grey": (t_gray - t_pre) * 1e3,
            "cues": (t_cues - t_gray) * 1e3,
            "health": (t_health - t_cues) * 1e3,
            "onnx": (t_model - t_feed) * 1e3,
            "state": ((t_feed - t_health) + (end - t_model)) * 1e3,
        }
        return StepResult(
            pose=pose, log_var=result["log_var"][0].astype(np.float64), step_ms=(end - start) * 1e3
        )

    def run(
        self,
        frames: Iterable[tuple[float, np.ndarray]],
        odom_base: np.ndarray | None = None,
        base_to_camera: np.ndarray | None = None,
        reset_memory: bool = False,
        intrinsics: np.ndarray | None = None,
    ) -> RunResult:
        """A whole run from its first frame, offline: ``(stamp_s, rgb)`` frames, optional
        base poses ``(N, 7)`` from the wheel odometry at those frames (NaN rows: none),
        and the camera mount; with ``reset_memory`` the memory is forgotten before every
        frame (:meth:`forget_memory`), the memory ablation. ``intrinsics`` (fx, fy, cx,
        cy of the frames, e.g. a bag's camera_info) go to a camera-aware model
        (:meth:`set_camera`); other models assume their own. Returns a :class:`RunResult`:
        poses ``(N, 7)``, the log variance of each frame's motion ``(N, 6)`` and step
        times ``(N,)`` in ms."""
        self.reset()
        to_camera = CameraMotionFromOdometry(base_to_camera) if odom_base is not None else None
        poses, log_var, step_ms = [], [], []
        previous = None
        for i, (stamp, rgb) in enumerate(frames):
            if i == 0 and intrinsics is not None and self.camera_aware:
                self.set_camera(intrinsics, rgb.shape[1], rgb.shape[0])
            motion = None
            if to_camera is not None:
                if np.all(np.isfinite(odom_base[i])):
                    motion = to_camera.update(odom_base[i])
                else:
                    to_camera.reset()  # else the next motion would span two frames
            dt = stamp - previous if previous is not None and stamp > previous else None
            if reset_memory:
                self.forget_memory()
            result = self.step(rgb, odom_motion=motion, dt=dt)
            poses.append(result.pose)
            log_var.append(result.log_var)
            step_ms.append(result.step_ms)
            previous = stamp
        return RunResult(
            poses=np.array(poses).reshape(-1, 7),
            log_var=np.array(log_var).reshape(-1, 6),
            step_ms=np.array(step_ms),
        )
