"""Export a trained model to ``models/<name>/`` as docs/model-format.md describes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import torch
from torch import nn

from latent_memory_ros import cues as cue_defs
from latent_memory_ros.atomic import atomic_path
from latent_memory_ros.model_format import (
    NON_MEMORY_STATE,
    ODOM_NONE,
    QUERY_FILE,
    STATE_INIT_FILE,
    STEP_FILE,
    write_metadata,
)
from latent_memory_training.models.config import IMAGE_MEAN, IMAGE_STD
from latent_memory_training.models.student import LocalisationModel

# The synthetic world's camera (world.md), scaled to the network's input size.
REFERENCE_WIDTH, REFERENCE_HEIGHT = 640, 480
REFERENCE_INTRINSICS = (525.0, 525.0, 319.5, 239.5)
OPSET = 18
# The per-frame inputs of step.onnx, in order, before the state.
OBSERVATION_INPUTS = ("image", "odom", "dt", "cues", "camera")


class StepGraph(nn.Module):
    """Flat tensor signature of one ``LocalisationModel.step`` for ONNX."""

    def __init__(self, model: LocalisationModel) -> None:
        super().__init__()
        self.model = model
        self.state_names = list(model.state_shapes())

    def forward(self, image, odom, dt_s, cues, camera, *states):
        state = dict(zip(self.state_names, states, strict=True))
        new_state, out = self.model.step(
            state, {"image": image, "odom": odom, "dt": dt_s, "cues": cues, "camera": camera}
        )
        return (out["pose"], out["log_var"], *(new_state[k] for k in self.state_names))


class QueryGraph(nn.Module):
    """Flat tensor signature of ``LocalisationModel.query``: the image and the state
    entries the cell's memory view reads in, the query camera's pose in the current
    camera frame and its log variance out."""

    def __init__(self, model: LocalisationModel) -> None:
        super().__init__()
        self.model = model
        self.state_names = list(model.query_inputs())

    def forward(self, image, camera, *states):
        state = dict(zip(self.state_names, states, strict=True))
        return self.model.query(state, image, camera)


def example_inputs(model: LocalisationModel) -> tuple[torch.Tensor, ...]:
    c = model.config
    odom = torch.tensor([ODOM_NONE])
    state = model.initial_state(1)
    return (
        torch.zeros(1, 3, c.image_height, c.image_width),
        odom,
        torch.zeros(1, 1),
        torch.zeros(1, cue_defs.CUE_DIM),
        reference_camera(),
        *(state[k] for k in model.state_shapes()),
    )


def reference_camera() -> torch.Tensor:
    """``[1, 4]`` normalised intrinsics of the world's reference camera."""
    k = cue_defs.normalised_intrinsics(
        np.array(REFERENCE_INTRINSICS), REFERENCE_WIDTH, REFERENCE_HEIGHT
    )
    return torch.tensor(k, dtype=torch.float32)[None]


def example_observation(model: LocalisationModel) -> dict[str, torch.Tensor]:
    """One frame's observation for ``model.step``: the exporter's example inputs."""
    n = len(OBSERVATION_INPUTS)
    return dict(zip(OBSERVATION_INPUTS, example_inputs(model)[:n], strict=True))


def model_intrinsics(width: int) -> list[float]:
    return list(cue_defs.scale_intrinsics(np.array(REFERENCE_INTRINSICS), width / REFERENCE_WIDTH))


def _export(graph: nn.Module, inputs: tuple, path: Path, input_names, output_names) -> None:
    """One single-file, static-shape graph, written atomically."""
    with atomic_path(path) as tmp, torch.no_grad():
        torch.onnx.export(
            graph.eval(),
            inputs,
            str(tmp),
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            optimize=True,
            verbose=False,
        )


def export_model(
    model: LocalisationModel,
    out_dir: Path,
    name: str,
    training: dict | None = None,
    metrics: dict | None = None,
    tracking: dict | None = None,
) -> Path:
    """Write ``step.onnx``, ``query.onnx`` (when the cell is exportable), ``state_init.npz``
    and ``model.json`` into ``out_dir``; ``tracking``: the tracking-state thresholds
    (:func:`latent_memory_ros.model_format.tracking_thresholds`), else the runtime's
    defaults apply."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    graph = StepGraph(model)
    names = graph.state_names
    _export(
        graph,
        example_inputs(model),
        out_dir / STEP_FILE,
        [*OBSERVATION_INPUTS, *(f"state.{k}" for k in names)],
        ["pose", "log_var", *(f"state_out.{k}" for k in names)],
    )
    init = model.initial_state(1)
    query_section = None
    if model.cell.exportable:
        query_graph = QueryGraph(model)
        query_inputs = ["image", "camera", *(f"state.{k}" for k in query_graph.state_names)]
        query_outputs = ["rel_pose", "log_var", *(["seen"] if model.place is not None else [])]
        image, camera = example_inputs(model)[0], reference_camera()
        _export(
            query_graph,
            (image, camera, *(init[k].detach() for k in query_graph.state_names)),
            out_dir / QUERY_FILE,
            query_inputs,
            query_outputs,
        )
        query_section = {
            "file": QUERY_FILE,
            "inputs": query_inputs,
            "outputs": query_outputs,
            "frame": "rel_pose: xyz_qxyzw (m) of the query image's camera in the current "
            "camera optical frame; log_var: x, y, z (m^2), rx, ry, rz (rad^2)"
            + ("; seen: probability that the place is in the memory" if model.place else ""),
        }
    else:
        (out_dir / QUERY_FILE).unlink(missing_ok=True)  # a stale one from an earlier export
    np.savez(
        out_dir / STATE_INIT_FILE,
        **{k: v.detach().numpy().astype(np.float32) for k, v in init.items()},
    )
    c = model.config
    metadata = {
        "name": name,
        "cell": c.cell,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": c.to_dict(),
        "training": training or {},
        "metrics": metrics or {},
        "image": {
            "height": c.image_height,
            "width": c.image_width,
            "encoding": "rgb8",
            "mean": list(IMAGE_MEAN),
            "std": list(IMAGE_STD),
            "intrinsics": model_intrinsics(c.image_width),
        },
        "cues": {
            "version": cue_defs.CUES_VERSION,
            "width": 320,
            "height": 240,
            "dim": cue_defs.CUE_DIM,
        },
        "inputs_optional": ["odom", "dt", "cues", "camera"],
        "state": [
            {
                "name": k,
                "shape": [1, *s],
                "dtype": "float32",
                "role": "memory" if k in model.memory_shapes() else NON_MEMORY_STATE[k],
            }
            for k, s in model.state_shapes().items()
        ],
        "pose": {
            "parameterisation": "xyz_qxyzw",
            "frame": "camera optical frame (x right, y down, z forward) of the first frame",
            "units": "m",
        },
        "log_var": "log variance of this frame's motion: x, y, z (m^2), rx, ry, rz (rad^2)",
    }
    if query_section is not None:
        metadata["query"] = query_section
    if tracking is not None:
        metadata["tracking"] = tracking
    write_metadata(out_dir, metadata)
    return out_dir
