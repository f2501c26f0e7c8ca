"""Every memory cell: stepping equals ``sequence``, the state keeps its size and stays
bounded over long runs, and the memory view is N x E slots (export parity of every
cell: test_export.py)."""

import numpy as np
import pytest
import torch

from latent_memory_training.models.cells import CELLS, REFERENCE_CELLS

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
        if growing and cell.state_shapes[k][0] == 0:
            assert v.shape == (1, 2000, *shapes[k][2:])
        else:
            assert v.shape == shapes[k] == (1, *cell.state_shapes[k])
            assert float(v.abs().max()) < 1e3, k


@pytest.mark.parametrize("name", sorted(ALL_CELLS))
def test_memory_view_is_slots_read_from_the_memory_entries(name):
    """``memory(state)`` is ``[B, slots, dim]`` for every fixed-size cell: the state
    entry itself where it holds slots, else a projection with each slot normalised."""
    cell = _small(name)
    tokens = torch.randn(2, 6, 5, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        state, _ = cell.sequence(cell.initial_state(2), tokens)
        before = {k: v.clone() for k, v in state.items()}
        memory = cell.memory(state)
        only_entries = cell.memory({k: state[k] for k in cell.memory_entries})
    torch.testing.assert_close(only_entries, memory, atol=0, rtol=0)
    _assert_same(state, before)
    if name == "full":  # the growing cache: queried, never distilled
        assert not cell.fixed_memory and memory.shape == (2, 6, 32)
        return
    assert cell.fixed_memory and memory.shape == (2, 4, 32)
    projected = name in {"crt", "relit", "arelit", "gru"}
    assert (cell.projected_slots is not None) == projected
    if projected:
        torch.testing.assert_close(memory.mean(-1), torch.zeros(2, 4), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            memory.var(-1, unbiased=False), torch.ones(2, 4), atol=1e-2, rtol=0
        )
        assert "filled" not in cell.memory_entries and "tick" not in cell.memory_entries
    else:
        assert torch.equal(memory, state[cell.memory_entries[0]])


@pytest.mark.parametrize("r", [1, 2, 5, 8])
def test_arelit_terms_separate_frames_fewer_than_r_apart(r):
    """sum_j c_j(t) c_j(t') = r when t = t' (mod r), else 0 (what the docstring claims)."""
    cell = CELLS["arelit"](slots=r, dim=16, heads=4)
    t = torch.arange(3 * r, dtype=torch.float64)[:, None]
    c = cell.amp.double() * torch.cos(t * cell.freq.double() - cell.phase.double())
    assert c.shape == (3 * r, r)
    same = (t - t.T).remainder(r) == 0
    torch.testing.assert_close(c @ c.T, r * same.double(), atol=1e-5, rtol=0)
