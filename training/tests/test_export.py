"""Export parity: PyTorch and the ROS-free runtime agree over a 100-step rollout."""

import json
import shutil

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from latent_memory_ros import cues as cue_defs
from latent_memory_ros import geometry
from latent_memory_ros.model_format import ModelError
from latent_memory_ros.runtime import StudentRuntime
from latent_memory_training.export.onnx_export import export_model
from latent_memory_training.models.cells import CELLS
from latent_memory_training.models.config import ModelConfig
from latent_memory_training.models.student import LocalisationModel

EXPORTABLE = sorted(name for name, cls in CELLS.items() if cls.exportable)


def perturbed_model(cell: str) -> LocalisationModel:
    """A model whose zero-initialised heads and cell weights are perturbed: with zeros
    there, parity would hold trivially for them."""
    torch.manual_seed(0)
    model = LocalisationModel(ModelConfig(cell=cell))
    with torch.no_grad():
        for layer in (model.delta, model.log_var, model.speed, model.bias_rate):
            layer.weight.normal_(0.0, 0.05)
        for p in model.cell.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = perturbed_model("kinaema")
    out = tmp_path_factory.mktemp("model")
    export_model(model, out, "parity")
    return model, out


def _frames(n: int):
    """A camera panning over a real photo, with odometry that roughly agrees."""
    photo = cv2.resize(skimage.data.astronaut(), (960, 720))
    rng = np.random.default_rng(0)
    for t in range(n):
        x = 40 + 2 * t
        rgb = np.ascontiguousarray(photo[60:540, x : x + 640])
        odom = np.concatenate(
            [rng.normal(0, 0.01, 3), geometry.rotvec_to_quat(rng.normal(0, 0.01, 3))]
        )
        yield rgb, (None if t == 0 else odom)


@pytest.mark.parametrize("cell", EXPORTABLE)
def test_runtime_matches_pytorch_over_100_steps(cell, tmp_path):
    model = perturbed_model(cell)
    model_dir = export_model(model, tmp_path, f"parity-{cell}")
    rt = StudentRuntime(model_dir, providers=["CPUExecutionProvider"])
    state = model.initial_state(1)
    cfg = cue_defs.CueConfig()
    k = cue_defs.scale_intrinsics(np.array(rt.spec.intrinsics), cfg.width / rt.spec.image_width)
    prev = None
    worst = 0.0
    for rgb, odom in _frames(100):
        res = rt.step(rgb, odom_motion=odom, dt=1 / 30)
        gray = cue_defs.to_gray(rgb, cfg)
        obs = {
            "image": torch.from_numpy(rt.preprocess(rgb)),
            "odom": torch.tensor(
                [[*(odom if odom is not None else [0, 0, 0, 0, 0, 0, 1]), float(odom is not None)]]
            ).float(),
            "dt": torch.tensor([[1 / 30]]),
            "cues": torch.from_numpy(cue_defs.two_view_cues(prev, gray, k, cfg))[None],
        }
        prev = gray
        with torch.no_grad():
            state, out = model.step(state, obs)
        worst = max(worst, np.abs(res.log_var - out["log_var"][0].numpy()).max())
        worst = max(worst, np.abs(res.pose - out["pose"][0].double().numpy()).max())
        for name, value in rt.state.items():
            worst = max(worst, np.abs(value - state[name].numpy()).max())
    assert rt.spec.cell == cell and set(rt.state) == set(state)
    assert worst < 1e-4
    assert rt.frames == 100


def test_reset_restores_the_initial_state(exported):
    _, model_dir = exported
    rt = StudentRuntime(model_dir, providers=["CPUExecutionProvider"], warmup=0)
    initial = rt.state
    for rgb, odom in _frames(5):
        rt.step(rgb, odom_motion=odom)
    assert not np.allclose(rt.state["pose"], initial["pose"])
    rt.reset()
    for name, value in rt.state.items():
        np.testing.assert_array_equal(value, initial[name])


def _broken_copy(src, tmp_path, edit):
    dst = tmp_path / "broken"
    shutil.copytree(src, dst)
    meta = json.loads((dst / "model.json").read_text())
    edit(meta, dst)
    (dst / "model.json").write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m, d: m.pop("image"), "field 'image.encoding'"),
        (lambda m, d: m.update(format="other/9"), "field 'format'"),
        (lambda m, d: m["state"][0].update(shape=[1, 3, 3]), "state.memory"),
        (lambda m, d: m["state"].pop(), "state.bias"),
        (lambda m, d: m["sha256"].update({"step.onnx": "0" * 64}), "sha256"),
        (lambda m, d: m.update(inputs_optional=["odom", "dt"]), "inputs_optional"),
        (lambda m, d: (d / "step.onnx").unlink(), "step.onnx: file missing"),
    ],
)
def test_bad_model_is_refused_with_a_message_naming_the_field(exported, tmp_path, edit, message):
    _, model_dir = exported
    broken = _broken_copy(model_dir, tmp_path, edit)
    with pytest.raises(ModelError, match=message.replace(".", r"\.")):
        StudentRuntime(broken, providers=["CPUExecutionProvider"], warmup=0)


def test_missing_model_directory(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        StudentRuntime(tmp_path / "nope", providers=["CPUExecutionProvider"])
