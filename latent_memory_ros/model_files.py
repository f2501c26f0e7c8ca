"""An exported model's files, opened and checked against its model.json: graphs whose
sha256 matches, onnxruntime sessions, their inputs and outputs, and the initial state.
:class:`~latent_memory_ros.runtime.StudentRuntime` runs what this module opens; every
error is a :class:`~latent_memory_ros.model_format.ModelError` naming the file and field.
"""

from __future__ import annotations

import contextlib
import io
import logging
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from latent_memory_ros import cues
from latent_memory_ros.model_format import (
    METADATA_FILE,
    ODOM_DIM,
    OPTIONAL_INPUTS,
    STATE_INIT_FILE,
    ModelError,
    ModelSpec,
    StateSpec,
    file_sha256,
)

__all__ = [
    "check_query_graph",
    "check_step_graph",
    "checked_file",
    "load_init_state",
    "load_session",
]

# The runtime's logger: these warnings are the runtime's to whoever configured it.
log = logging.getLogger("latent_memory_ros.runtime")


def checked_file(spec: ModelSpec, name: str) -> Path:
    """A graph file of the model directory, present and matching ``sha256.<name>``."""
    path = spec.directory / name
    if not path.is_file():
        raise ModelError(f"{path}: file missing")
    expected = spec.sha256.get(name)
    if expected is None:
        raise ModelError(f"{spec.directory / METADATA_FILE}: field 'sha256.{name}' missing")
    if file_sha256(path) != expected:
        raise ModelError(
            f"{path}: sha256 does not match field 'sha256.{name}' of model.json"
            " (the graph was changed after export)"
        )
    return path


def load_session(path: Path, options: Any, providers: list[str], messages: io.StringIO) -> Any:
    """An onnxruntime session of ``path``; what onnxruntime prints goes to ``messages``."""
    import onnxruntime as ort

    try:
        with contextlib.redirect_stdout(messages):
            return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises several unrelated types
        raise ModelError(f"{path}: onnxruntime cannot load it ({err})") from err


def check_step_graph(spec: ModelSpec, session: Any, step_path: Path) -> None:
    """The step graph's inputs, outputs and state types are the ones model.json implies."""
    meta = spec.directory / "model.json"
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    want_in = {"image": [1, 3, spec.image_height, spec.image_width]}
    want_in |= {
        "odom": [1, ODOM_DIM],
        "dt": [1, 1],
        "cues": [1, cues.CUE_DIM],
        "camera": [1, 4],
    }
    for name in OPTIONAL_INPUTS:
        if name not in spec.inputs_optional:
            if name in inputs:
                raise ModelError(
                    f"{meta}: field 'inputs_optional' lacks '{name}' but {step_path.name} "
                    f"takes input '{name}'"
                )
            del want_in[name]
    for s in spec.state:
        want_in[f"state.{s.name}"] = list(s.shape)
    want_out = {"pose": [1, 7], "log_var": [1, 6]}
    want_out |= {f"state_out.{s.name}": list(s.shape) for s in spec.state}
    _check_signature(
        meta, step_path.name, inputs, outputs, want_in, want_out, "'state' / 'inputs_optional'"
    )
    _check_state_types(meta, step_path.name, inputs, spec.state)
    if "cues" in spec.inputs_optional and spec.cues.get("version") != cues.CUES_VERSION:
        raise ModelError(
            f"{meta}: field 'cues.version' is '{spec.cues.get('version')}', "
            f"this runtime computes '{cues.CUES_VERSION}'"
        )


def check_query_graph(spec: ModelSpec, session: Any, query_path: Path) -> None:
    """Likewise for the query graph and model.json's ``query``."""
    meta = spec.directory / METADATA_FILE
    shapes = {f"state.{s.name}": list(s.shape) for s in spec.state}
    shapes["image"] = [1, 3, spec.image_height, spec.image_width]
    shapes["camera"] = [1, 4]
    want_in = {name: shapes[name] for name in spec.query.inputs}
    want_out = {"rel_pose": [1, 7], "log_var": [1, 6]}
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    _check_signature(meta, query_path.name, inputs, outputs, want_in, want_out, "'query.inputs'")
    _check_state_types(meta, query_path.name, inputs, spec.state)


def load_init_state(spec: ModelSpec) -> dict[str, np.ndarray]:
    """The initial state from ``state_init.npz``, each array exactly as model.json's
    ``state`` declares it. Without the file the state starts at zeros (said once),
    unless the model carries a pose (role ``pose``): an all-zero quaternion is no
    rotation, and every pose would come out NaN."""
    path = spec.directory / STATE_INIT_FILE
    if not path.is_file():
        poses = [s.name for s in spec.state if s.role == "pose"]
        if poses:
            raise ModelError(
                f"{path}: file missing; the model needs its learned initial state "
                f"(model.json field 'state': {poses} is a pose, which cannot start at "
                "zeros)"
            )
        log.warning("latent_memory runtime: %s missing: the state starts at zeros", path)
        return {s.name: np.zeros(s.shape, dtype=s.dtype) for s in spec.state}
    try:
        saved = np.load(path, allow_pickle=False)  # a model file must not run code
        if not isinstance(saved, np.lib.npyio.NpzFile):
            raise ValueError("one .npy array, not an .npz archive")
        with saved:
            arrays = {name: saved[name] for name in saved.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ModelError(f"{path}: not a readable .npz archive of arrays ({err})") from err
    state = {}
    for s in spec.state:
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
