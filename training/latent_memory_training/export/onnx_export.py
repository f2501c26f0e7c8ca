"""Export a trained model to ``models/<name>/`` as docs/model-format.md describes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import torch
from torch import nn

from latent_memory_ros import cues as cue_defs
from latent_memory_ros.model_format import STATE_INIT_FILE, STEP_FILE, write_metadata
from latent_memory_training.models.config import IMAGE_MEAN, IMAGE_STD
from latent_memory_training.models.student import LocalisationModel

# The synthetic world's camera (world.md), scaled to the network's input size.
REFERENCE_WIDTH = 640
REFERENCE_INTRINSICS = (525.0, 525.0, 319.5, 239.5)
OPSET = 18


class StepGraph(nn.Module):
    """Flat tensor signature of one ``LocalisationModel.step`` for ONNX."""

    def __init__(self, model: LocalisationModel) -> None:
        super().__init__()
        self.model = model
        self.state_names = list(model.state_shapes())

    def forward(self, image, odom, dt_s, cues, *states):
        state = dict(zip(self.state_names, states, strict=True))
        new_state, out = self.model.step(
            state, {"image": image, "odom": odom, "dt": dt_s, "cues": cues}
        )
        return (out["pose"], out["log_var"], *(new_state[k] for k in self.state_names))


def example_inputs(model: LocalisationModel) -> tuple[torch.Tensor, ...]:
    c = model.config
    odom = torch.zeros(1, 8)
    odom[0, 6] = 1.0
    state = model.initial_state(1)
    return (
        torch.zeros(1, 3, c.image_height, c.image_width),
        odom,
        torch.zeros(1, 1),
        torch.zeros(1, cue_defs.CUE_DIM),
        *(state[k] for k in model.state_shapes()),
    )


def model_intrinsics(width: int) -> list[float]:
    return list(cue_defs.scale_intrinsics(np.array(REFERENCE_INTRINSICS), width / REFERENCE_WIDTH))


def export_model(
    model: LocalisationModel,
    out_dir: Path,
    name: str,
    training: dict | None = None,
    metrics: dict | None = None,
) -> Path:
    """Write ``step.onnx``, ``state_init.npz`` and ``model.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    graph = StepGraph(model).eval()
    names = graph.state_names
    tmp = out_dir / (STEP_FILE + ".tmp")
    with torch.no_grad():
        torch.onnx.export(
            graph,
            example_inputs(model),
            str(tmp),
            input_names=["image", "odom", "dt", "cues", *(f"state.{k}" for k in names)],
            output_names=["pose", "log_var", *(f"state_out.{k}" for k in names)],
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    tmp.replace(out_dir / STEP_FILE)
    init = model.initial_state(1)
    np.savez(
        out_dir / STATE_INIT_FILE,
        **{k: v.detach().numpy().astype(np.float32) for k, v in init.items()},
    )
    c = model.config
    write_metadata(
        out_dir,
        {
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
            "inputs_optional": ["odom", "dt", "cues"],
            "state": [
                {"name": k, "shape": [1, *s], "dtype": "float32"}
                for k, s in model.state_shapes().items()
            ],
            "pose": {
                "parameterisation": "xyz_qxyzw",
                "frame": "camera optical frame (x right, y down, z forward) of the first frame",
                "units": "m",
            },
            "log_var": "log variance of this frame's motion: x, y, z (m^2), rx, ry, rz (rad^2)",
        },
    )
    return out_dir
