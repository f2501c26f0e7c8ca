"""Memory cells: one interface, ``step(state, tokens) -> (state, readout)``.

A cell owns a fixed-size state (a dict of tensors with a leading batch dimension) and
reads the tokens of one frame. ``sequence`` is the training form; for recurrent cells
it is the same loop, so stepping and sequence agree by construction.
"""

from __future__ import annotations

import torch
from torch import nn

State = dict[str, torch.Tensor]


class MemoryCell(nn.Module):
    """Base class. Subclasses set ``state_shapes`` (without batch) and ``readout_dim``."""

    state_shapes: dict[str, tuple[int, ...]]
    readout_dim: int

    def initial_state(self, batch: int) -> State:
        return {k: torch.zeros((batch, *s)) for k, s in self.state_shapes.items()}

    def step(self, state: State, tokens: torch.Tensor) -> tuple[State, torch.Tensor]:
        raise NotImplementedError

    def sequence(self, state: State, tokens: torch.Tensor) -> tuple[State, torch.Tensor]:
        """``tokens`` is ``[B, T, K, E]``; returns the last state and ``[B, T, R]`` readouts."""
        readouts = []
        for t in range(tokens.shape[1]):
            state, r = self.step(state, tokens[:, t])
            readouts.append(r)
        return state, torch.stack(readouts, dim=1)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + MLP block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class KinaemaCell(MemoryCell):
    """Gated recurrent transformer memory (Kinaema): N slots x E.

    Token 0 of each frame is the motion token. Each step: the motion token corrects
    every slot, a transformer block runs over [memory ; frame tokens], and a per-slot,
    per-channel sigmoid gate mixes the block's memory outputs with the corrected memory,
    and each slot is layer-normalised.
    The readout is the updated memory pooled over slots beside the motion token's output.
    """

    def __init__(self, slots: int = 8, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.slots, self.dim = slots, dim
        self.state_shapes = {"memory": (slots, dim)}
        self.readout_dim = 2 * dim
        self.initial_memory = nn.Parameter(torch.randn(slots, dim) * 0.02)
        self.correction = nn.Linear(dim, slots * dim)
        self.block = TransformerBlock(dim, heads)
        self.gate = nn.Linear(2 * dim, dim)
        # Start with a sticky memory: the gate opens only where training finds it useful.
        nn.init.constant_(self.gate.bias, -2.0)
        nn.init.zeros_(self.correction.weight)
        nn.init.zeros_(self.correction.bias)

    def initial_state(self, batch: int) -> State:
        return {"memory": self.initial_memory.unsqueeze(0).expand(batch, -1, -1).clone()}

    def step(self, state: State, tokens: torch.Tensor) -> tuple[State, torch.Tensor]:
        memory = state["memory"]
        b = memory.shape[0]
        corrected = memory + self.correction(tokens[:, 0]).view(b, self.slots, self.dim)
        out = self.block(torch.cat([corrected, tokens], dim=1))
        candidate = out[:, : self.slots]
        g = torch.sigmoid(self.gate(torch.cat([candidate, corrected], dim=-1)))
        # Normalising each slot keeps the memory bounded however long the run: frame
        # 1,000,000 sees the same scale as frame 10.
        memory = nn.functional.layer_norm(g * candidate + (1.0 - g) * corrected, (self.dim,))
        readout = torch.cat([memory.mean(dim=1), out[:, self.slots]], dim=-1)
        return {"memory": memory}, readout


CELLS: dict[str, type[MemoryCell]] = {"kinaema": KinaemaCell}
