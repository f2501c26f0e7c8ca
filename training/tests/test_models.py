"""The memory-cell interface and the localisation model's structure."""

import numpy as np
import pytest
import torch

from latent_memory_ros import geometry
from latent_memory_ros.cues import CUE_VALID
from latent_memory_training.export.onnx_export import reference_camera
from latent_memory_training.models import so3
from latent_memory_training.models.cells import CELLS, REFERENCE_CELLS
from latent_memory_training.models.config import ModelConfig
from latent_memory_training.models.student import LocalisationModel


def _obs(batch: int, steps: int, seed: int = 0, odom: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rot = torch.randn(batch, steps, 3, generator=g) * 0.02
    motion = torch.cat(
        [torch.randn(batch, steps, 3, generator=g) * 0.02, so3.rotvec_to_quat(rot)], -1
    )
    valid = torch.full((batch, steps, 1), 1.0 if odom else 0.0)
    cues = torch.randn(batch, steps, 15, generator=g) * 0.05
    cues[..., CUE_VALID] = 1.0
    return {
        "image": torch.randn(batch, steps, 3, 96, 128, generator=g),
        "odom": torch.cat([motion, valid], -1),
        "dt": torch.full((batch, steps, 1), 1 / 30),
        "cues": cues,
        "camera": reference_camera()[:, None].expand(batch, steps, 4),
    }


@pytest.mark.parametrize("name", sorted(CELLS))
def test_cell_step_equals_sequence(name):
    torch.manual_seed(0)
    cell = CELLS[name](slots=4, dim=32, heads=4)
    tokens = torch.randn(2, 12, 5, 32)
    state, seq_out = cell.sequence(cell.initial_state(2), tokens)
    step_state = cell.initial_state(2)
    for t in range(12):
        step_state, r = cell.step(step_state, tokens[:, t])
        torch.testing.assert_close(r, seq_out[:, t], atol=1e-5, rtol=0)
    for k in state:
        torch.testing.assert_close(step_state[k], state[k], atol=1e-5, rtol=0)
        assert state[k].shape == (2, *cell.state_shapes[k])


def test_untrained_model_integrates_odometry_exactly():
    """Zero-initialised corrections: before training the model is the odometry."""
    torch.manual_seed(0)
    model = LocalisationModel(ModelConfig())
    obs = _obs(1, 20)
    obs["cues"][..., CUE_VALID] = 0.0  # no vision: the bias filter must stay at zero
    with torch.no_grad():
        _, out = model.rollout(model.initial_state(1), obs)
    expected = geometry.integrate(obs["odom"][0, :, :7].double().numpy())
    np.testing.assert_allclose(out["pose"][0].double().numpy(), expected, atol=1e-5)


def _drift_run(drift_per_frame: float, frames: int = 300, noise: float = 1e-3):
    """A rollout whose vision sees the true rotation with ``noise`` (rad per frame) while
    the odometry's yaw is off by ``drift_per_frame``; returns the model's outputs."""
    torch.manual_seed(0)
    model = LocalisationModel(ModelConfig(vision_rot_noise=noise))
    obs = _obs(1, frames)
    drift = torch.tensor([0.0, drift_per_frame, 0.0])
    rot = so3.quat_to_rotvec(obs["odom"][..., 3:7])
    jitter = torch.randn(rot.shape, generator=torch.Generator().manual_seed(3)) * noise
    obs["cues"][..., 1:4] = rot - drift + jitter
    with torch.no_grad():
        state, out = model.rollout(model.initial_state(1), obs)
    return state, out, drift


def test_drift_filter_removes_a_real_drift():
    """The filter's estimate (rad/s) finds the drift; what it applies is the estimate
    less what it cannot tell from zero (the vision floor, two standard deviations)."""
    state, out, drift = _drift_run(1e-3)
    dt = 1 / 30
    # 300 frames of 1 mrad vision noise: the estimate is good to about 0.06 mrad
    torch.testing.assert_close(state["bias"][0] * dt, drift, atol=1.5e-4, rtol=0)
    floor = ModelConfig().vision_bias_floor * dt
    applied = out["bias"][0, -1]
    assert drift[1] - floor - 2.5e-4 < applied[1] < drift[1] - floor + 1.5e-4
    assert float(applied[[0, 2]].abs().max()) == 0.0
    assert float(state["bias_certainty"].min()) > 1.0  # far more certain than the prior


def test_drift_filter_leaves_good_odometry_alone():
    """No drift, noisy vision: nothing is applied (an estimate within its own
    uncertainty and the vision floor is not told from zero)."""
    _, out, _ = _drift_run(0.0)
    assert float(out["bias"][0].abs().max()) == 0.0


def test_drift_filter_ignores_outliers():
    """A wrong two-view rotation (0.2 rad) is rejected by the chi-square gate: the
    estimate itself does not move."""
    torch.manual_seed(0)
    model = LocalisationModel(ModelConfig())
    obs = _obs(1, 60)
    rot = so3.quat_to_rotvec(obs["odom"][..., 3:7])
    obs["cues"][..., 1:4] = rot
    obs["cues"][0, 30, 2] += 0.2
    with torch.no_grad():
        state, _ = model.rollout(model.initial_state(1), obs)
    assert float(state["bias"].abs().max()) < 1e-6


def test_memory_is_fixed_size():
    model = LocalisationModel(ModelConfig())
    state = model.initial_state(1)
    sizes = {k: v.shape for k, v in state.items()}
    with torch.no_grad():
        state, _ = model.rollout(state, _obs(1, 30))
    assert {k: v.shape for k, v in state.items()} == sizes


@pytest.mark.parametrize("name", sorted({**CELLS, **REFERENCE_CELLS}))
def test_every_cell_answers_queries_without_changing_the_state(name):
    """Every cell has the query head, reading only the state entries of its memory view
    (what query.onnx takes); fixed-size memories are also output for distillation."""
    torch.manual_seed(0)
    model = LocalisationModel(ModelConfig(cell=name, dim=32, slots=4)).eval()
    image = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fixed = name != "full"  # full's memory view grows: it is never distilled
        state, out = model.rollout(model.initial_state(2), _obs(2, 5), memory=fixed)
        before = {k: v.clone() for k, v in state.items()}
        camera = reference_camera().expand(2, 4)
        pose, log_var = model.query(state, image, camera)
        entries = {k: state[k] for k in model.cell.memory_entries}
        only_entries = model.query(entries, image, camera)
    assert pose.shape == (2, 7) and log_var.shape == (2, 6)
    assert torch.isfinite(pose).all() and torch.isfinite(log_var).all()
    torch.testing.assert_close(only_entries, (pose, log_var), atol=0, rtol=0)
    assert state.keys() == before.keys()
    assert all(torch.equal(state[k], before[k]) for k in state)
    if fixed:
        assert out["memory"].shape == (2, 5, 4, 32)
