"""The student network at run time, without ROS: ONNX session, carried state, pre-processing.

The node and the offline evaluation both drive a :class:`StudentRuntime`; it knows
nothing of messages, topics or clocks.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from latent_memory_ros import cues, geometry
from latent_memory_ros.defaults import DEFAULT_PROVIDERS
from latent_memory_ros.model_format import (
    METADATA_FILE,
    ODOM_DIM,
    ODOM_NONE,
    OPTIONAL_INPUTS,
    STATE_INIT_FILE,
    STEP_FILE,
    ModelError,
    ModelSpec,
    StateSpec,
    file_sha256,
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
        intra_op_threads: int = 0,
    ) -> None:
        import onnxruntime as ort

        self.spec: ModelSpec = load_spec(model_dir)
        step_path = self._checked_file(STEP_FILE)
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
        self._session = self._load_session(step_path, options, usable, ep_messages)
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
        self._check_graph(step_path)
        self._query_session = None
        self._query_state: tuple[str, ...] = ()
        if self.spec.query is not None:
            query_path = self._checked_file(self.spec.query.file)
            self._query_session = self._load_session(
                query_path, options, self.active_providers, io.StringIO()
            )
            self._check_query_graph(query_path)
            self._query_state = tuple(
                name.removeprefix("state.")
                for name in self.spec.query.inputs
                if name.startswith("state.")
            )
        self._query_camera = self.spec.query is not None and "camera" in self.spec.query.inputs
        self._init_state = self._load_init_state()
        self._mean = np.array(self.spec.mean, dtype=np.float32).reshape(3, 1, 1) * 255.0
        self._inv_std = 1.0 / (np.array(self.spec.std, dtype=np.float32).reshape(3, 1, 1) * 255.0)
        self._cue_config = cues.CueConfig(
            width=int(self.spec.cues.get("width", 320)),
            height=int(self.spec.cues.get("height", 240)),
        )
        self._cue_intrinsics = cues.scale_intrinsics(
            self.spec.intrinsics, self._cue_config.width / self.spec.image_width
        )
        self.set_camera(self.spec.intrinsics, self.spec.image_width, self.spec.image_height)
        self.reset()
        blank = np.zeros((self.spec.image_height, self.spec.image_width, 3), np.uint8)
        for _ in range(warmup):
            self.step(blank)
            if self.supports_query:
                self.query(blank)
        self.reset()

    def _checked_file(self, name: str) -> Path:
        """A graph file of the model directory, present and matching ``sha256.<name>``."""
        path = self.spec.directory / name
        if not path.is_file():
            raise ModelError(f"{path}: file missing")
        expected = self.spec.sha256.get(name)
        if expected is None:
            raise ModelError(
                f"{self.spec.directory / METADATA_FILE}: field 'sha256.{name}' missing"
            )
        if file_sha256(path) != expected:
            raise ModelError(
                f"{path}: sha256 does not match field 'sha256.{name}' of model.json"
                " (the graph was changed after export)"
            )
        return path

    @staticmethod
    def _load_session(path: Path, options, providers: list[str], messages: io.StringIO):
        import onnxruntime as ort

        try:
            with contextlib.redirect_stdout(messages):
                return ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # onnxruntime raises several unrelated types
            raise ModelError(f"{path}: onnxruntime cannot load it ({err})") from err

    def _check_graph(self, step_path: Path) -> None:
        meta = self.spec.directory / "model.json"
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        want_in = {"image": [1, 3, self.spec.image_height, self.spec.image_width]}
        want_in |= {
            "odom": [1, ODOM_DIM],
            "dt": [1, 1],
            "cues": [1, cues.CUE_DIM],
            "camera": [1, 4],
        }
        for name in OPTIONAL_INPUTS:
            if name not in self.spec.inputs_optional:
                if name in inputs:
                    raise ModelError(
                        f"{meta}: field 'inputs_optional' lacks '{name}' but {step_path.name} "
                        f"takes input '{name}'"
                    )
                del want_in[name]
        for s in self.spec.state:
            want_in[f"state.{s.name}"] = list(s.shape)
        want_out = {"pose": [1, 7], "log_var": [1, 6]}
        want_out |= {f"state_out.{s.name}": list(s.shape) for s in self.spec.state}
        _check_signature(
            meta, step_path.name, inputs, outputs, want_in, want_out, "'state' / 'inputs_optional'"
        )
        _check_state_types(meta, step_path.name, inputs, self.spec.state)
        if (
            "cues" in self.spec.inputs_optional
            and self.spec.cues.get("version") != cues.CUES_VERSION
        ):
            raise ModelError(
                f"{meta}: field 'cues.version' is '{self.spec.cues.get('version')}', "
                f"this runtime computes '{cues.CUES_VERSION}'"
            )

    def _check_query_graph(self, query_path: Path) -> None:
        meta = self.spec.directory / METADATA_FILE
        shapes = {f"state.{s.name}": list(s.shape) for s in self.spec.state}
        shapes["image"] = [1, 3, self.spec.image_height, self.spec.image_width]
        shapes["camera"] = [1, 4]
        want_in = {name: shapes[name] for name in self.spec.query.inputs}
        want_out = {"rel_pose": [1, 7], "log_var": [1, 6]}
        inputs = {i.name: i for i in self._query_session.get_inputs()}
        outputs = {o.name: o for o in self._query_session.get_outputs()}
        _check_signature(
            meta, query_path.name, inputs, outputs, want_in, want_out, "'query.inputs'"
        )
        _check_state_types(meta, query_path.name, inputs, self.spec.state)

    def _load_init_state(self) -> dict[str, np.ndarray]:
        """The initial state from ``state_init.npz``, each array exactly as model.json's
        ``state`` declares it. Without the file the state starts at zeros (said once),
        unless the model carries a pose (role ``pose``): an all-zero quaternion is no
        rotation, and every pose would come out NaN."""
        path = self.spec.directory / STATE_INIT_FILE
        if not path.is_file():
            poses = [s.name for s in self.spec.state if s.role == "pose"]
            if poses:
                raise ModelError(
                    f"{path}: file missing; the model needs its learned initial state "
                    f"(model.json field 'state': {poses} is a pose, which cannot start at "
                    "zeros)"
                )
            log.warning("latent_memory runtime: %s missing: the state starts at zeros", path)
            return {s.name: np.zeros(s.shape, dtype=s.dtype) for s in self.spec.state}
        try:
            saved = np.load(path, allow_pickle=False)  # a model file must not run code
            if not isinstance(saved, np.lib.npyio.NpzFile):
                raise ValueError("one .npy array, not an .npz archive")
            with saved:
                arrays = {name: saved[name] for name in saved.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise ModelError(f"{path}: not a readable .npz archive of arrays ({err})") from err
        state = {}
        for s in self.spec.state:
            value = arrays.get(s.name)
            if value is None:
                raise ModelError(f"{path}: array '{s.name}' missing (model.json field 'state')")
            if value.shape != s.shape or value.dtype != np.dtype(s.dtype):
                raise ModelError(
                    f"{path}: array '{s.name}' is {value.dtype} {value.shape}, model.json "
                    f"field 'state' declares {s.dtype} {s.shape}"
                )
            state[s.name] = value
        return state

    def reset(self) -> None:
        """Forget everything: memory, pose and the previous frame."""
        self._state = {k: v.copy() for k, v in self._init_state.items()}
        self._prev_gray: np.ndarray | None = None
        self.frames = 0

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
        self._camera_cue_intrinsics = cues.cue_intrinsics(k, width, height, self._cue_config)

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
        self._prev_gray = None
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
        start = time.perf_counter()
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got {rgb.shape} {rgb.dtype}")
        feed = {"image": self.preprocess(rgb)}
        names = self.spec.inputs_optional
        if "cues" in names:
            gray = cues.to_gray(rgb, self._cue_config)
            feed["cues"] = cues.two_view_cues(
                self._prev_gray, gray, self._camera_cue_intrinsics, self._cue_config
            )[None]
            self._prev_gray = gray
            if trust_cues is not None and not trust_cues(gray, feed["cues"][0]):
                feed["cues"] = np.zeros_like(feed["cues"])
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
        outputs = self._session.run(None, feed)
        result = dict(zip((o.name for o in self._session.get_outputs()), outputs, strict=True))
        for name in self._state:
            self._state[name] = result[f"state_out.{name}"]
        self.frames += 1
        pose = result["pose"][0].astype(np.float64)
        pose[3:] /= np.linalg.norm(pose[3:])
        return StepResult(
            pose=pose,
            log_var=result["log_var"][0].astype(np.float64),
            step_ms=(time.perf_counter() - start) * 1e3,
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


# onnxruntime's names of the element types a state entry's model.json dtype can be.
_ORT_TYPES = {
    "float32": "tensor(float)",
    "float16": "tensor(float16)",
    "float64": "tensor(double)",
    "int32": "tensor(int32)",
    "int64": "tensor(int64)",
}


def _check_state_types(meta: Path, graph: str, inputs: dict, states: Iterable[StateSpec]) -> None:
    """Each state input of the graph has the dtype model.json declares: otherwise
    onnxruntime fails only at the first step, with its own traceback."""
    for i, s in enumerate(states):
        arg = inputs.get(f"state.{s.name}")
        if arg is not None and arg.type != _ORT_TYPES.get(s.dtype):
            raise ModelError(
                f"{meta}: field 'state[{i}].dtype' is '{s.dtype}' but {graph} input "
                f"'state.{s.name}' is {arg.type}"
            )


def _check_signature(
    meta: Path,
    graph: str,
    inputs: dict,
    outputs: dict,
    want_in: dict[str, list[int]],
    want_out: dict[str, list[int]],
    described_by: str,
) -> None:
    """The graph's inputs and outputs are exactly the ones model.json implies."""
    for kind, have, want in (("input", inputs, want_in), ("output", outputs, want_out)):
        extra = set(have) - set(want)
        if extra:
            raise ModelError(
                f"{meta}: {graph} has {kind}s {sorted(extra)} that field {described_by} "
                "does not describe"
            )
        for name, shape in want.items():
            if name not in have:
                raise ModelError(f"{meta}: {graph} lacks {kind} '{name}'")
            if list(have[name].shape) != shape:
                raise ModelError(
                    f"{meta}: {graph} {kind} '{name}' has shape "
                    f"{list(have[name].shape)}, model.json implies {shape}"
                )
