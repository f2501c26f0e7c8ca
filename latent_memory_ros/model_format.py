"""The files between the trainer and the node: ``models/<name>/model.json`` and its graphs.

Both sides import this module, the exporter to write the metadata and the runtime to
check it, so the contract (docs/model-format.md) is written down once.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from latent_memory_ros.atomic import atomic_path

FORMAT = "latent-memory-model/1"
STEP_FILE = "step.onnx"
QUERY_FILE = "query.onnx"
METADATA_FILE = "model.json"
STATE_INIT_FILE = "state_init.npz"
OPTIONAL_INPUTS = ("odom", "dt", "cues", "camera")
# The ``odom`` input row: camera motion since the previous frame (xyz, qxyzw) and a
# valid flag; ODOM_NONE is the row for "no odometry this frame".
ODOM_DIM = 8
ODOM_MOTION = slice(0, 7)  # the motion as a pose, xyz_qxyzw
ODOM_TRANSLATION = slice(0, 3)
ODOM_ROTATION = slice(3, 7)  # quaternion, qxyzw
ODOM_VALID = 7
ODOM_NONE = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class ModelError(RuntimeError):
    """A model directory that cannot be used; the message names the file and the field."""


# What each state entry is: the memory cell's state ("memory"), the integrated pose
# ("pose") or the odometry-drift filter ("filter"), field ``state[i].role``. The model's
# entries outside its cell have these roles by name; a model.json without the field
# (older exports) is read with them, every other entry being memory.
STATE_ROLES = ("memory", "pose", "filter")
NON_MEMORY_STATE = {"pose": "pose", "bias": "filter", "bias_certainty": "filter"}
# Tracking-state thresholds on the predicted per-frame translation sigma (m), field
# ``tracking``: a model's sigma has its own scale, so the exporter derives them from the
# model's held-out sigma (:func:`tracking_thresholds`) and the node uses them unless its
# parameters say otherwise. A model.json without the field (older exports) gets these,
# derived the same way for the v1 model.
DEFAULT_TRACKING = {"uncertain_sigma_m": 0.00085, "lost_sigma_m": 0.007}


@dataclass(frozen=True)
class StateSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    role: str = "memory"  # one of STATE_ROLES


QUERY_OUTPUTS = ("rel_pose", "log_var")
QUERY_SEEN = "seen"  # [1, 1]: the probability that the place is in the memory


@dataclass(frozen=True)
class QuerySpec:
    """The optional ``query`` section: the graph that answers "where was the camera that
    took this image, seen from the current camera?" from the memory, without changing it."""

    file: str
    inputs: tuple[str, ...]  # "image" and "state.<name>" for the state entries it reads
    # rel_pose and log_var, and "seen" where the model says whether it knows the place
    outputs: tuple[str, ...] = QUERY_OUTPUTS


@dataclass(frozen=True)
class ModelSpec:
    directory: Path
    name: str
    cell: str
    image_width: int
    image_height: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    intrinsics: tuple[float, float, float, float]  # at image_width x image_height
    inputs_optional: tuple[str, ...]
    state: tuple[StateSpec, ...]
    cues: dict
    sha256: dict
    raw: dict
    query: QuerySpec | None = None
    tracking: dict = field(default_factory=lambda: dict(DEFAULT_TRACKING))

    @property
    def uses_odom(self) -> bool:
        return "odom" in self.inputs_optional

    @property
    def uses_cues(self) -> bool:
        return "cues" in self.inputs_optional

    @property
    def memory_state(self) -> tuple[str, ...]:
        """Names of the state entries that are the memory cell's (role ``memory``)."""
        return tuple(s.name for s in self.state if s.role == "memory")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _field(data: dict, path: str, where: Path, kind: type | tuple[type, ...]):
    node = data
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            raise ModelError(f"{where}: missing field '{path}'")
        node = node[key]
    if not isinstance(node, kind):
        raise ModelError(f"{where}: field '{path}' must be {kind}, got {type(node).__name__}")
    return node


def load_spec(directory: Path | str) -> ModelSpec:
    """Read and check ``model.json`` (the graph itself is checked by the runtime)."""
    directory = Path(directory)
    meta_path = directory / METADATA_FILE
    if not directory.is_dir():
        raise ModelError(f"{directory}: model directory does not exist")
    if not meta_path.is_file():
        raise ModelError(f"{meta_path}: file missing (every model directory has one)")
    try:
        data = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ModelError(f"{meta_path}: not valid JSON ({err})") from err
    fmt = _field(data, "format", meta_path, str)
    if fmt != FORMAT:
        raise ModelError(f"{meta_path}: field 'format' is '{fmt}', this runtime reads '{FORMAT}'")
    if _field(data, "image.encoding", meta_path, str) != "rgb8":
        raise ModelError(f"{meta_path}: field 'image.encoding' must be 'rgb8'")
    optional = tuple(_field(data, "inputs_optional", meta_path, list))
    unknown = set(optional) - set(OPTIONAL_INPUTS)
    if unknown:
        raise ModelError(f"{meta_path}: field 'inputs_optional' has unknown {sorted(unknown)}")
    states = []
    for i, entry in enumerate(_field(data, "state", meta_path, list)):
        name = _field(entry, "name", meta_path, str) if isinstance(entry, dict) else None
        if name is None:
            raise ModelError(f"{meta_path}: field 'state[{i}]' must be an object")
        shape = _field(entry, "shape", meta_path, list)
        if not all(isinstance(d, int) and d > 0 for d in shape):
            raise ModelError(f"{meta_path}: field 'state[{i}].shape' must be positive integers")
        role = entry.get("role", NON_MEMORY_STATE.get(name, "memory"))
        if role not in STATE_ROLES:
            raise ModelError(
                f"{meta_path}: field 'state[{i}].role' is {role!r}, not one of {STATE_ROLES}"
            )
        states.append(StateSpec(name, tuple(shape), _field(entry, "dtype", meta_path, str), role))
    sha = _field(data, "sha256", meta_path, dict)
    query = _query_spec(data, meta_path, {s.name for s in states}) if "query" in data else None
    for key in ("mean", "std", "intrinsics"):
        values = _field(data, f"image.{key}", meta_path, list)
        if not all(isinstance(v, (int, float)) for v in values):
            raise ModelError(f"{meta_path}: field 'image.{key}' must be numbers")
    return ModelSpec(
        tracking=_tracking(data, meta_path),
        directory=directory,
        name=_field(data, "name", meta_path, str),
        cell=_field(data, "cell", meta_path, str),
        image_width=_field(data, "image.width", meta_path, int),
        image_height=_field(data, "image.height", meta_path, int),
        mean=tuple(data["image"]["mean"]),
        std=tuple(data["image"]["std"]),
        intrinsics=tuple(data["image"]["intrinsics"]),
        inputs_optional=optional,
        state=tuple(states),
        cues=data.get("cues", {}),
        sha256=sha,
        raw=data,
        query=query,
    )


def tracking_thresholds(calibration: dict) -> dict:
    """The ``tracking`` field from ``heldout``'s ``calibration`` results: UNCERTAIN above
    the p99 of the per-frame translation sigma with odometry (so a run with good odometry
    is OK on 99 % of its frames, and one without is UNCERTAIN on most), LOST above
    5 x its p99.9 or 1.5 x the p99.9 images only, whichever is larger (so LOST is
    never where the model usually runs without odometry)."""
    with_odom = calibration["model_odom"]["sigma_trans_m"]
    images = calibration["model_images"]["sigma_trans_m"]
    return {
        "uncertain_sigma_m": float(with_odom["p99"]),
        "lost_sigma_m": float(max(5.0 * with_odom["p99.9"], 1.5 * images["p99.9"])),
        "derived_from": "held-out per-frame translation sigma: uncertain = p99 with "
        "odometry, lost = max(5 x p99.9 with odometry, 1.5 x p99.9 images only)",
    }


def _tracking(data: dict, meta_path: Path) -> dict:
    if "tracking" not in data:
        return dict(DEFAULT_TRACKING)
    values = {}
    for key in DEFAULT_TRACKING:
        value = _field(data, f"tracking.{key}", meta_path, (int, float))
        if not (math.isfinite(value) and value > 0):
            raise ModelError(f"{meta_path}: field 'tracking.{key}' must be positive, got {value}")
        values[key] = float(value)
    if values["uncertain_sigma_m"] >= values["lost_sigma_m"]:
        raise ModelError(
            f"{meta_path}: field 'tracking.uncertain_sigma_m' must be below 'lost_sigma_m'"
        )
    return values


def _query_spec(data: dict, meta_path: Path, state_names: set[str]) -> QuerySpec:
    file = _field(data, "query.file", meta_path, str)
    if Path(file).name != file or not file.endswith(".onnx"):
        raise ModelError(
            f"{meta_path}: field 'query.file' must be an .onnx file name beside model.json, "
            f"got '{file}'"
        )
    inputs = _field(data, "query.inputs", meta_path, list)
    if "image" not in inputs or not all(isinstance(i, str) for i in inputs):
        raise ModelError(f"{meta_path}: field 'query.inputs' must list 'image' and state inputs")
    allowed = {"image", "camera"} | {f"state.{name}" for name in state_names}
    for name in inputs:
        if name not in allowed:
            raise ModelError(
                f"{meta_path}: field 'query.inputs' has '{name}', which is neither 'image', "
                "'camera' nor 'state.<name>' of an entry of field 'state'"
            )
    if len(set(inputs)) != len(inputs):
        raise ModelError(f"{meta_path}: field 'query.inputs' repeats a name")
    outputs = data["query"].get("outputs", list(QUERY_OUTPUTS))
    if (
        not isinstance(outputs, list)
        or outputs[:2] != list(QUERY_OUTPUTS)
        or not set(outputs) <= {*QUERY_OUTPUTS, QUERY_SEEN}
        or len(set(outputs)) != len(outputs)
    ):
        raise ModelError(
            f"{meta_path}: field 'query.outputs' must be {list(QUERY_OUTPUTS)}, optionally "
            f"followed by '{QUERY_SEEN}'; got {outputs!r}"
        )
    return QuerySpec(file=file, inputs=tuple(inputs), outputs=tuple(outputs))


def write_metadata(directory: Path, metadata: dict) -> None:
    """Write ``model.json`` atomically, with the sha256 of every ``.onnx`` beside it."""
    directory = Path(directory)
    metadata = dict(metadata, format=FORMAT)
    metadata["sha256"] = {p.name: file_sha256(p) for p in sorted(directory.glob("*.onnx"))}
    with atomic_path(directory / METADATA_FILE) as tmp:
        tmp.write_text(json.dumps(metadata, indent=2, sort_keys=False) + "\n")


def default_model_dir() -> Path:
    """The installed default model, or the source checkout's when the package is not installed."""
    try:
        from ament_index_python.packages import (
            PackageNotFoundError,
            get_package_share_directory,
        )
    except ImportError:
        pass
    else:
        try:
            return Path(get_package_share_directory("latent_memory_ros")) / "models" / "default"
        except (PackageNotFoundError, OSError):  # OSError: AMENT_PREFIX_PATH unset or empty
            pass
    return Path(__file__).resolve().parent.parent / "models" / "default"
