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


def test_bias_state_tracks_odometry_minus_vision():
    torch.manual_seed(0)
    model = LocalisationModel(ModelConfig(initial_bias_rate=0.05))
    obs = _obs(1, 200)
    drift = torch.tensor([0.0, 5e-4, 0.0])
    rot = so3.quat_to_rotvec(obs["odom"][..., 3:7])
    obs["cues"][..., 1:4] = rot - drift  # vision sees the true rotation
    with torch.no_grad():
        _, out = model.rollout(model.initial_state(1), obs)
    torch.testing.assert_close(out["bias"][0, -1], drift, atol=2e-5, rtol=0)


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
