"""Every memory cell: stepping equals ``sequence``, the state keeps its size and stays
bounded over long runs, and each exportable cell's ONNX graph matches PyTorch."""

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from latent_memory_ros import cues as cue_defs
from latent_memory_ros import geometry
from latent_memory_ros.runtime import StudentRuntime
from latent_memory_training.export.onnx_export import export_model
from latent_memory_training.models.cells import CELLS, REFERENCE_CELLS
from latent_memory_training.models.config import ModelConfig
from latent_memory_training.models.student import LocalisationModel

ALL_CELLS = {**CELLS, **REFERENCE_CELLS}
EXPORTABLE = sorted(name for name, cls in CELLS.items() if cls.exportable)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _small(name: str, dim: int = 32):
    torch.manual_seed(0)
    return ALL_CELLS[name](slots=4, dim=dim, heads=4).eval()


def _stepped(cell, state, tokens):
    readouts = []
    for t in range(tokens.shape[1]):
        state, r = cell.step(state, tokens[:, t])
        readouts.append(r)
    return state, torch.stack(readouts, dim=1)


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)


def test_registries():
    assert "kinaema" in CELLS and set(CELLS) >= {"tlb", "crt", "relit", "arelit", "gru"}
    assert all(cls.exportable for cls in CELLS.values())
    assert REFERENCE_CELLS["full"].exportable is False


@pytest.mark.parametrize("name", sorted(ALL_CELLS))
@pytest.mark.parametrize("steps", [20, 7])  # chunks and segments are 4 frames here
def test_step_equals_sequence(name, steps):
    cell = _small(name)
    tokens = torch.randn(2, steps, 5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        seq_state, seq = cell.sequence(cell.initial_state(2), tokens)
        step_state, step = _stepped(cell, cell.initial_state(2), tokens)
    assert seq.shape == (2, steps, cell.readout_dim)
    torch.testing.assert_close(step, seq, atol=1e-5, rtol=0)
    _assert_same(step_state, seq_state)


@pytest.mark.parametrize("name", sorted(ALL_CELLS))
def test_sequence_continues_from_a_state_part_way_through_a_chunk(name):
    cell = _small(name)
    tokens = torch.randn(2, 14, 5, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        state, first = _stepped(cell, cell.initial_state(2), tokens[:, :3])
        seq_state, seq = cell.sequence(state, tokens[:, 3:])
        step_state, step = _stepped(cell, state, tokens[:, 3:])
    torch.testing.assert_close(step, seq, atol=1e-5, rtol=0)
    _assert_same(step_state, seq_state)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_sequence_of_streams_at_different_points_of_their_chunks(name):
    """Training restarts some streams of a batch: their chunk buffers then disagree."""
    cell = _small(name)
    tokens = torch.randn(2, 9, 5, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        state, _ = _stepped(cell, cell.initial_state(2), tokens[:, :3])
        fresh = cell.initial_state(2)
        mixed = {k: torch.cat([v[:1], fresh[k][1:]]) for k, v in state.items()}
        seq_state, seq = cell.sequence(mixed, tokens[:, 3:])
        step_state, step = _stepped(cell, mixed, tokens[:, 3:])
    torch.testing.assert_close(step, seq, atol=1e-5, rtol=0)
    _assert_same(step_state, seq_state)


@pytest.mark.parametrize("name", sorted(ALL_CELLS))
def test_state_keeps_its_size_and_stays_bounded_over_2000_steps(name):
    cell = _small(name, dim=16)
    g = torch.Generator().manual_seed(4)
    state = cell.initial_state(1)
    shapes = {k: v.shape for k, v in state.items()}
    growing = not cell.exportable
    worst = 0.0
    with torch.no_grad():
        for t in range(2000):
            tokens = torch.randn(1, 5, 16, generator=g) * (1.0 + 2.0 * (t % 3))
            state, readout = cell.step(state, tokens)
            worst = max(worst, float(readout.abs().max()))
            if not growing and t % 100 == 0:
                assert {k: v.shape for k, v in state.items()} == shapes
    assert np.isfinite(worst) and worst < 1e3
    for k, v in state.items():
        assert torch.isfinite(v).all()
        if growing:
            assert v.shape == (1, 2000, *shapes[k][2:])
        else:
            assert v.shape == shapes[k] == (1, *cell.state_shapes[k])
            assert float(v.abs().max()) < 1e3, k


@pytest.mark.parametrize("r", [1, 2, 5, 8])
def test_arelit_terms_separate_frames_fewer_than_r_apart(r):
    """sum_j c_j(t) c_j(t') = r when t = t' (mod r), else 0 (what the docstring claims)."""
    cell = CELLS["arelit"](slots=r, dim=16, heads=4)
    t = torch.arange(3 * r, dtype=torch.float64)[:, None]
    c = cell.amp.double() * torch.cos(t * cell.freq.double() - cell.phase.double())
    assert c.shape == (3 * r, r)
    same = (t - t.T).remainder(r) == 0
    torch.testing.assert_close(c @ c.T, r * same.double(), atol=1e-5, rtol=0)


def _frames(n: int):
    """A camera panning over a real photo (small frames), with roughly agreeing odometry."""
    photo = cv2.resize(skimage.data.astronaut(), (480, 360))
    rng = np.random.default_rng(0)
    for t in range(n):
        x = 20 + t
        rgb = np.ascontiguousarray(photo[60:300, x : x + 320])
        odom = np.concatenate(
            [rng.normal(0, 0.01, 3), geometry.rotvec_to_quat(rng.normal(0, 0.01, 3))]
        )
        yield rgb, (None if t == 0 else odom)


@pytest.mark.parametrize("name", EXPORTABLE)
def test_exported_cell_matches_pytorch_over_100_steps(name, tmp_path):
    torch.manual_seed(0)
    model = LocalisationModel(ModelConfig(cell=name))
    # Zero-initialised heads and corrections would make parity trivially true for them.
    with torch.no_grad():
        for layer in (model.delta, model.log_var, model.speed, model.bias_rate):
            layer.weight.normal_(0.0, 0.05)
        for p in model.cell.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    export_model(model.eval(), tmp_path, f"parity-{name}")
    rt = StudentRuntime(tmp_path, providers=["CPUExecutionProvider"], warmup=0)
    assert rt.spec.cell == name
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
        for key, value in rt.state.items():
            worst = max(worst, np.abs(value - state[key].numpy()).max())
    assert set(rt.state) == set(state)
    assert worst < 1e-4
    assert rt.frames == 100
