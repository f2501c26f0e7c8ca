"""Memory cells: one interface, ``step(state, tokens) -> (state, readout)``.

A cell owns a fixed-size state (a dict of tensors with a leading batch dimension) and
reads the tokens of one frame: ``tokens[:, 0]`` is the frame's motion token, the rest
are image tokens. ``sequence`` is the training form; for recurrent cells it is the same
loop, so stepping and sequence agree by construction. The chunked cells (``tlb``,
``crt``) compute ``sequence`` a chunk at a time, in parallel over the frames of a chunk,
as their papers do; their tests check that it equals stepping.

Every ``step`` is written for ``torch.onnx.export(dynamo=True)``: static shapes, no
Python branches on tensor values (``torch.where`` / arithmetic instead), no in-place
writes to the state. The cells:

- ``kinaema``: gated recurrent transformer memory of N slots (the default student);
- ``tlb``: Temporal Latent Bottleneck, a fast stream per frame and S slow vectors
  rewritten once per chunk of frames;
- ``crt``: Compact Recurrent Transformer, a shallow causal transformer over a segment of
  frames with one GRU-kept memory vector prepended as a token;
- ``relit``: gated linear attention with a per-head matrix state (ReLiT);
- ``arelit``: the same attention with the matrix state approximated by r
  cosine-modulated rank-1 terms (AReLiT);
- ``gru``: a GRU over a pooled frame summary, state matched to ``kinaema``'s.

Every cell also shows its state as a memory of N x E slots (``slots`` x ``dim``),
``memory(state)``: what the query head reads and distillation matches to the teacher's
``B_t``. It is the state itself where the state holds such slots (``kinaema``'s memory,
``tlb``'s slow vectors, the teacher's bottleneck) and otherwise a learned linear
projection of the state entries that carry the memory (``crt``, ``relit``, ``arelit``,
``gru``), each slot layer-normalised like the slot memories.

``REFERENCE_CELLS`` holds ``full``, a full-history causal transformer whose state (a
cache of every past frame) grows: the reference the fixed-size cells are measured
against; it is not exportable, and its memory view is that growing cache. It also holds
``bottleneck``, the distillation teacher (not exportable either: its history grows).
"""

from __future__ import annotations

import math

import torch
from torch import nn

State = dict[str, torch.Tensor]


class MemoryCell(nn.Module):
    """Base class. Subclasses set ``state_shapes`` (without batch), ``readout_dim`` and
    ``memory_entries``; those whose state has no N x E slots call ``_project_memory``."""

    state_shapes: dict[str, tuple[int, ...]]
    readout_dim: int
    exportable = True
    # The state entries the memory view reads (query.onnx takes them as inputs): one N x E
    # slot memory, or the entries a learned projection maps to N x E.
    memory_entries: tuple[str, ...]
    # (N, E) of the projection's slots; None where the memory entry is the slots itself.
    projected_slots: tuple[int, int] | None = None

    def initial_state(self, batch: int) -> State:
        return {k: torch.zeros((batch, *s)) for k, s in self.state_shapes.items()}

    @property
    def fixed_memory(self) -> bool:
        """Whether the memory view has a fixed size (N x E): every cell but ``full``."""
        return all(0 not in self.state_shapes[k] for k in self.memory_entries)

    def memory(self, state: State) -> torch.Tensor:
        """The memory as ``[B, N, E]`` slots, read from ``state`` without changing it."""
        if self.projected_slots is None:
            (key,) = self.memory_entries
            return state[key]
        flat = torch.cat([state[k].flatten(1) for k in self.memory_entries], dim=1)
        slots = self.projection(flat).unflatten(1, self.projected_slots)
        return nn.functional.layer_norm(slots, self.projected_slots[1:])

    def _project_memory(self, slots: int, dim: int) -> None:
        """Show ``memory_entries`` (set, with ``state_shapes``, before the call) as
        ``slots`` x ``dim`` through a learned linear map, trained by the query and
        distillation losses."""
        size = sum(math.prod(self.state_shapes[k]) for k in self.memory_entries)
        self.projection = nn.Linear(size, slots * dim)
        self.projected_slots = (slots, dim)

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

    memory_entries = ("memory",)

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


# Shared pieces of the other cells ------------------------------------------------------

_MASKED = -1e9  # additive attention bias of a key a query must not see (exp underflows to 0)


class Attention(nn.Module):
    """Multi-head attention of ``x`` over ``context`` with an optional additive bias.

    Written out, rather than ``nn.MultiheadAttention``, so that per-batch key masks and
    recency biases broadcast as ``[B, H, Lq, Lk]`` and export plainly to ONNX.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, lq, e = x.shape
        lk, h = context.shape[1], self.heads
        d = e // h
        q = self.q(x).reshape(b, lq, h, d).transpose(1, 2)
        k, v = self.kv(context).reshape(b, lk, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        scores = (q @ k.transpose(-1, -2)) * d**-0.5
        if bias is not None:
            scores = scores + bias
        return self.out((scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, lq, e))


class Block(nn.Module):
    """Pre-norm attention + MLP.

    Without ``context`` it is self-attention over ``x``; with one it attends to it,
    normalised like ``x`` (self-attention over a longer history) or, when ``cross``, by
    a norm of its own (cross-attention to another stream).
    """

    def __init__(self, dim: int, heads: int, cross: bool = False, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.context_norm = nn.LayerNorm(dim) if cross else None
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.norm(x)
        if context is None:
            c = h
        elif self.context_norm is None:
            c = self.norm(context)
        else:
            c = self.context_norm(context)
        x = x + self.attn(h, c, bias)
        return x + self.mlp(self.norm2(x))


class FrameSummary(nn.Module):
    """One vector per frame: the motion token beside the mean image token, projected."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[..., K, E]`` -> ``[..., E]``."""
        pooled = torch.cat([tokens[..., 0, :], tokens[..., 1:, :].mean(dim=-2)], dim=-1)
        return self.norm(self.proj(pooled))


def _next_slot(filled: torch.Tensor) -> torch.Tensor:
    """One-hot ``[B, C]`` of the first empty slot of a prefix-filled 0/1 mask."""
    before = torch.cat([torch.ones_like(filled[:, :1]), filled[:, :-1]], dim=1)
    return (1.0 - filled) * before


def _prefix(filled: torch.Tensor, n: int) -> torch.Tensor:
    """A ``filled`` mask like the given one with its first ``n`` slots set."""
    first = torch.arange(filled.shape[1], device=filled.device) < n
    return first.to(filled.dtype).expand_as(filled)


def _place(buffer: torch.Tensor, values: torch.Tensor, start: int) -> torch.Tensor:
    """``buffer[:, start:start + L] = values`` without writing into ``buffer``."""
    end = start + values.shape[1]
    return torch.cat([buffer[:, :start], values, buffer[:, end:]], dim=1)


class ChunkedCell(MemoryCell):
    """A cell that buffers one vector per frame and acts once per chunk of ``chunk`` frames.

    The state holds the buffer and a ``filled`` 0/1 mask of its slots (a prefix). A
    subclass implements ``step`` (one frame, with ``torch.where`` on the mask: exportable)
    and ``_chunk`` (consecutive frames of one chunk at once), so ``sequence`` runs chunk
    by chunk, in parallel within a chunk. Streams of a batch at different points of their
    chunks (training resets some of them) fall back to the step loop.
    """

    chunk: int

    def _chunk(self, state: State, tokens: torch.Tensor, start: int) -> tuple[State, torch.Tensor]:
        """Frames ``start .. start + L - 1`` of the current chunk; ``tokens`` is ``[B, L, K, E]``."""
        raise NotImplementedError

    def sequence(self, state: State, tokens: torch.Tensor) -> tuple[State, torch.Tensor]:
        filled = state["filled"]
        n = int(round(float(filled[0].sum()))) if filled.shape[0] else 0
        if not torch.equal(filled, _prefix(filled, n)):
            return super().sequence(state, tokens)
        readouts, t, total = [], 0, tokens.shape[1]
        while t < total:
            length = min(self.chunk - n, total - t)
            state, r = self._chunk(state, tokens[:, t : t + length], n)
            readouts.append(r)
            t, n = t + length, (n + length) % self.chunk
        if not readouts:
            return state, tokens.new_zeros(tokens.shape[0], 0, self.readout_dim)
        return state, torch.cat(readouts, dim=1)


# The cells -----------------------------------------------------------------------------


class TLBCell(ChunkedCell):
    """Temporal Latent Bottleneck (Didolkar et al., 2022) in streaming form.

    Fast stream, every frame: the frame's tokens go through a self-attention block and a
    block that cross-attends to the S slow vectors (``slots``); the readout is the fast
    output of the motion token beside the mean output. A projection of the readout is
    written into the buffer of the current chunk. Slow stream, once per ``chunk`` frames:
    the slow vectors cross-attend to the full buffer (slow vectors as queries), are mixed
    with their old values by a sticky sigmoid gate and layer-normalised (bounded however
    long the run, as in the Kinaema cell), and the buffer is cleared.

    The slow state is fixed within a chunk, so ``sequence`` runs a chunk's fast stream
    in parallel. Simplification: the frames of a chunk do not attend to each other in
    the fast stream (each frame's tokens already carry its motion). The slow vectors are
    the memory view.
    """

    memory_entries = ("slow",)

    def __init__(self, slots: int = 8, dim: int = 64, heads: int = 4, chunk: int = 8) -> None:
        super().__init__()
        self.slots, self.dim, self.chunk = slots, dim, chunk
        self.state_shapes = {"slow": (slots, dim), "chunk": (chunk, dim), "filled": (chunk,)}
        self.readout_dim = 2 * dim
        self.initial_slow = nn.Parameter(torch.randn(slots, dim) * 0.02)
        self.fast_self = Block(dim, heads)
        self.fast_cross = Block(dim, heads, cross=True)
        self.write = nn.Linear(2 * dim, dim)
        self.rewrite = Block(dim, heads, cross=True)
        self.gate = nn.Linear(2 * dim, dim)
        nn.init.constant_(self.gate.bias, -2.0)  # sticky slow state, as Kinaema's memory

    def initial_state(self, batch: int) -> State:
        state = super().initial_state(batch)
        state["slow"] = self.initial_slow.unsqueeze(0).expand(batch, -1, -1).clone()
        return state

    def _fast(self, tokens: torch.Tensor, slow: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.fast_cross(self.fast_self(tokens), slow)
        readout = torch.cat([h[:, 0], h.mean(dim=1)], dim=-1)
        return readout, self.write(readout)

    def _update_slow(self, slow: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        candidate = self.rewrite(slow, chunk)
        g = torch.sigmoid(self.gate(torch.cat([candidate, slow], dim=-1)))
        return nn.functional.layer_norm(g * candidate + (1.0 - g) * slow, (self.dim,))

    def step(self, state: State, tokens: torch.Tensor) -> tuple[State, torch.Tensor]:
        slow = state["slow"]
        readout, summary = self._fast(tokens, slow)
        slot = _next_slot(state["filled"])
        chunk = torch.where(slot[..., None] > 0.5, summary[:, None], state["chunk"])
        filled = state["filled"] + slot
        full = filled[:, -1:] > 0.5
        slow = torch.where(full[..., None], self._update_slow(slow, chunk), slow)
        chunk = torch.where(full[..., None], torch.zeros_like(chunk), chunk)
        filled = torch.where(full, torch.zeros_like(filled), filled)
        return {"slow": slow, "chunk": chunk, "filled": filled}, readout

    def _chunk(self, state: State, tokens: torch.Tensor, start: int) -> tuple[State, torch.Tensor]:
        b, n = tokens.shape[:2]
        slow = state["slow"]
        readout, summary = self._fast(tokens.flatten(0, 1), slow.repeat_interleave(n, dim=0))
        chunk = _place(state["chunk"], summary.reshape(b, n, -1), start)
        filled = _prefix(state["filled"], start + n)
        if start + n == self.chunk:
            slow = self._update_slow(slow, chunk)
            chunk, filled = torch.zeros_like(chunk), torch.zeros_like(filled)
        return {"slow": slow, "chunk": chunk, "filled": filled}, readout.reshape(b, n, -1)


class CRTCell(ChunkedCell):
    """Compact Recurrent Transformer (Mucllari et al., 2025) in streaming form.

    Each frame becomes one summary vector (motion token beside the mean image token). A
    shallow causal transformer (``layers`` blocks, learned positions) runs over
    [memory ; the segment's frames so far]; the readout is the current frame's output.
    The one memory vector is kept by a GRU cell: at a segment's last frame the GRU reads
    the mean of the segment's outputs, and the segment buffer is cleared. The GRU keeps
    the memory in (-1, 1) however long the run. ``segment`` defaults to ``slots`` frames.
    The memory view is a projection of the memory vector.

    ``sequence`` runs each segment's transformer once over all its frames.
    """

    memory_entries = ("memory",)

    def __init__(
        self,
        slots: int = 8,
        dim: int = 64,
        heads: int = 4,
        segment: int | None = None,
        layers: int = 2,
    ) -> None:
        super().__init__()
        self.dim, self.chunk = dim, segment or slots
        c = self.chunk
        self.state_shapes = {"memory": (dim,), "segment": (c, dim), "filled": (c,)}
        self.readout_dim = dim
        self.summary = FrameSummary(dim)
        self.position = nn.Parameter(torch.randn(c + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.rnn = nn.GRUCell(dim, dim)
        self.register_buffer("causal", torch.tril(torch.ones(c + 1, c + 1)), persistent=False)
        self._project_memory(slots, dim)

    def _transform(
        self, memory: torch.Tensor, segment: torch.Tensor, filled: torch.Tensor
    ) -> torch.Tensor:
        """Outputs ``[B, C, E]`` of the segment's positions (empty ones are garbage)."""
        x = torch.cat([memory[:, None], segment], dim=1) + self.position
        visible = torch.cat([torch.ones_like(filled[:, :1]), filled], dim=1)
        bias = ((self.causal * visible[:, None, :] - 1.0) * -_MASKED)[:, None]
        for block in self.blocks:
            x = block(x, bias=bias)
        return self.norm(x[:, 1:])

    def step(self, state: State, tokens: torch.Tensor) -> tuple[State, torch.Tensor]:
        slot = _next_slot(state["filled"])
        segment = torch.where(
            slot[..., None] > 0.5, self.summary(tokens)[:, None], state["segment"]
        )
        filled = state["filled"] + slot
        out = self._transform(state["memory"], segment, filled)
        readout = (out * slot[..., None]).sum(dim=1)
        full = filled[:, -1:] > 0.5
        memory = torch.where(full, self.rnn(out.mean(dim=1), state["memory"]), state["memory"])
        segment = torch.where(full[..., None], torch.zeros_like(segment), segment)
        filled = torch.where(full, torch.zeros_like(filled), filled)
        return {"memory": memory, "segment": segment, "filled": filled}, readout

    def _chunk(self, state: State, tokens: torch.Tensor, start: int) -> tuple[State, torch.Tensor]:
        n = tokens.shape[1]
        segment = _place(state["segment"], self.summary(tokens), start)
        filled = _prefix(state["filled"], start + n)
        out = self._transform(state["memory"], segment, filled)
        memory = state["memory"]
        if start + n == self.chunk:
            memory = self.rnn(out.mean(dim=1), memory)
            segment, filled = torch.zeros_like(segment), torch.zeros_like(filled)
        return {"memory": memory, "segment": segment, "filled": filled}, out[:, start : start + n]


def _phi(x: torch.Tensor) -> torch.Tensor:
    """Positive feature map of linear attention: elu + 1."""
    return nn.functional.elu(x) + 1.0


class _LinearAttentionCell(MemoryCell):
    """The layer ReLiT and AReLiT share around their state.

    Per frame: a summary vector u (motion token beside the mean image token), per head
    q, k, v and two input gates gamma (over key features) and beta (over value features)
    in (0, 1), biased small so the memory starts sticky. The readout is
    ``h = u + W_o attn; h + MLP(LN(h))`` (a transformer layer with the attention below).
    """

    eps = 1e-6

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.readout_dim = dim
        self.summary = FrameSummary(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.gates = nn.Linear(dim, 2 * dim)
        nn.init.constant_(self.gates.bias, -2.0)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def _project(self, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """u ``[B, E]``; phi(q), phi(k), v, gamma, beta, each ``[B, H, d]``."""
        u = self.summary(tokens)
        b, h, d = u.shape[0], self.heads, self.head_dim
        q, k, v = self.qkv(u).reshape(b, 3, h, d).unbind(1)
        gamma, beta = torch.sigmoid(self.gates(u)).reshape(b, 2, h, d).unbind(1)
        return u, _phi(q), _phi(k), v, gamma, beta

    def _output(self, u: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        h = u + self.out(attn.flatten(1))
        return h + self.mlp(self.norm(h))


class ReLiTCell(_LinearAttentionCell):
    """Gated linear attention with a per-head matrix state (ReLiT, Pramanik et al.).

    With feature map phi = elu + 1 and the input gates of the paper's key-value gating
    (gamma per key feature, beta per value feature, both from the frame):

        S <- (1 - gamma beta^T) * S + (gamma beta^T) * phi(k) v^T      [H, d_k, d_v]
        z <- (1 - gamma) * z + gamma * phi(k)                          [H, d_k]
        attn = phi(q)^T S / (phi(q)^T z + eps)

    Both are convex mixtures of bounded terms, so the state stays bounded however long
    the run. The state size is fixed by ``dim`` and ``heads``; ``slots`` only sizes the
    memory view, a projection of S and z.
    """

    memory_entries = ("kv", "norm")

    def __init__(self, slots: int = 8, dim: int = 64, heads: int = 4) -> None:
        super().__init__(dim, heads)
        d = self.head_dim
        self.state_shapes = {"kv": (heads, d, d), "norm": (heads, d)}
        self._project_memory(slots, dim)

    def step(self, state: State, tokens: torch.Tensor) -> tuple[State, torch.Tensor]:
        u, q, k, v, gamma, beta = self._project(tokens)
        w = gamma[..., :, None] * beta[..., None, :]
        kv = (1.0 - w) * state["kv"] + w * (k[..., :, None] * v[..., None, :])
        norm = (1.0 - gamma) * state["norm"] + gamma * k
        num = (q[..., None, :] @ kv).squeeze(-2)
        den = (q * norm).sum(dim=-1, keepdim=True)
        return {"kv": kv, "norm": norm}, self._output(u, num / (den + self.eps))


class AReLiTCell(_LinearAttentionCell):
    """ReLiT with its matrix state approximated by r = ``slots`` rank-1 terms (AReLiT).

    Each term j keeps a key vector and a value vector that accumulate the frame's
    (gated) key and value modulated by c_j(t) = a_j cos(w_j t - p_j):

        K_j <- (1 - gamma) * K_j + c_j(t) gamma * phi(k)     [H, r, d_k]
        V_j <- (1 - beta) * V_j + c_j(t) beta * v            [H, r, d_v]
        z   <- (1 - gamma) * z + gamma * phi(k)              [H, d_k]
        attn = (1/r) sum_j V_j (K_j . phi(q)) / (phi(q) . z + eps)

    Expanding the product, frames i and l meet through sum_j c_j(t_i) c_j(t_l), which
    should be r for i = l and 0 otherwise. The paper uses r cosines of frequencies
    spread over [-pi, pi]. Here the r terms are the real Fourier basis of period r (a
    constant, cos/sin pairs at w = 2 pi f / r with a = sqrt 2, and cos(pi t) when r is
    even), for which that sum is exactly r [t_i = t_l mod r]: frames fewer than r apart
    never interfere, frames a multiple of r apart share terms (weighed down by the
    gates' decay). The step counter t is carried modulo r (exact: every w r is a
    multiple of 2 pi), so it stays small over any run, and the convex gated updates
    keep the state bounded. The memory view is a projection of K, V and z (not of the
    step counter).
    """

    memory_entries = ("keys", "values", "norm")

    def __init__(self, slots: int = 8, dim: int = 64, heads: int = 4) -> None:
        super().__init__(dim, heads)
        r, d = slots, self.head_dim
        self.r = r
        self.state_shapes = {
            "keys": (heads, r, d),
            "values": (heads, r, d),
            "norm": (heads, d),
            "tick": (1,),
        }
        terms = [(0.0, 0.0, 1.0)]
        for f in range(1, (r + 1) // 2):
            w = 2.0 * math.pi * f / r
            terms += [(w, 0.0, math.sqrt(2.0)), (w, math.pi / 2, math.sqrt(2.0))]
        if r % 2 == 0 and r > 1:
            terms.append((math.pi, 0.0, 1.0))
        freq, phase, amp = torch.tensor(terms[:r]).T
        self.register_buffer("freq", freq, persistent=False)
        self.register_buffer("phase", phase, persistent=False)
        self.register_buffer("amp", amp, persistent=False)
        self._project_memory(slots, dim)

    def step(self, state: State, tokens: torch.Tensor) -> tuple[State, torch.Tensor]:
        u, q, k, v, gamma, beta = self._project(tokens)
        tick = state["tick"]
        c = (self.amp * torch.cos(tick * self.freq - self.phase))[:, None, :, None]
        keys = (1.0 - gamma[:, :, None]) * state["keys"] + c * (gamma * k)[:, :, None]
        values = (1.0 - beta[:, :, None]) * state["values"] + c * (beta * v)[:, :, None]
        norm = (1.0 - gamma) * state["norm"] + gamma * k
        match = (keys * q[:, :, None]).sum(dim=-1, keepdim=True)
        num = (match * values).sum(dim=2) / self.r
        den = (q * norm).sum(dim=-1, keepdim=True)
        after = tick + 1.0
        tick = torch.where(after > self.r - 0.5, after - self.r, after)
        new = {"keys": keys, "values": values, "norm": norm, "tick": tick}
        return new, self._output(u, num / (den + self.eps))


class GRUMemoryCell(MemoryCell):
    """GRU baseline: the frame summary (motion token beside the mean image token, a
    linear layer) into a GRU cell whose hidden state, the readout, has ``slots * dim``
    floats, as many as the Kinaema cell's memory. A GRU's state is bounded in (-1, 1).
    The memory view is a projection of the hidden state."""

    memory_entries = ("hidden",)

    def __init__(self, slots: int = 8, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        hidden = slots * dim
        self.state_shapes = {"hidden": (hidden,)}
        self.readout_dim = hidden
        self.summary = FrameSummary(dim)
        self.rnn = nn.GRUCell(dim, hidden)
        self._project_memory(slots, dim)

    def step(self, state: State, tokens: torch.Tensor) -> tuple[State, torch.Tensor]:
        hidden = self.rnn(self.summary(tokens), state["hidden"])
        return {"hidden": hidden}, hidden


def _key_mask(valid: torch.Tensor) -> torch.Tensor:
    """``[B, 1, 1, Lk]`` additive bias hiding the keys of other episodes."""
    return torch.where(valid > 0, 0.0, _MASKED)[:, None, None, :].to(valid.dtype)


class FullHistoryTransformer(MemoryCell):
    """The full-history reference: causal attention of each frame over all past frames.

    Not a fixed-size cell (its state grows by one summary per frame and layer) and not
    exportable, but it has the cells' interface. Each frame becomes a summary vector;
    ``layers`` pre-norm blocks attend causally over the history with an ALiBi recency
    bias (fixed per-head slopes, so order matters). The state is the per-layer cache of
    block inputs, ``[B, t, E]`` each; ``sequence`` runs all frames at once under a causal
    mask. ``state_shapes`` gives length 0 (the initial cache) for the growing axis;
    ``slots`` is unused. Its memory view, for queries (it is never distilled), is the
    whole history as the last layer sees it.
    """

    exportable = False

    def __init__(self, slots: int = 8, dim: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.dim = dim
        # ``valid`` marks the cached frames of the current episode: training carries one
        # state for several streams, which restart at different times.
        self.state_shapes = {f"cache{i}": (0, dim) for i in range(layers)} | {"valid": (0,)}
        self.memory_entries = (f"cache{layers - 1}",)
        self.readout_dim = dim
        self.summary = FrameSummary(dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        slopes = 2.0 ** (-8.0 * torch.arange(1, heads + 1) / heads)
        self.register_buffer("slopes", slopes, persistent=False)

    def _attend(self, state: State, x: torch.Tensor) -> tuple[State, torch.Tensor]:
        past, new = state["cache0"].shape[1], x.shape[1]
        distance = (
            torch.arange(past, past + new, device=x.device)[:, None]
            - torch.arange(past + new, device=x.device)[None, :]
        ).to(x.dtype)
        bias = torch.where(
            distance >= 0,
            -self.slopes[:, None, None] * distance,
            torch.full_like(distance, _MASKED),
        )
        valid = torch.cat([state["valid"], torch.ones_like(x[..., 0])], dim=1)
        bias = bias + _key_mask(valid)
        out = {"valid": valid}
        for i, block in enumerate(self.blocks):
            cache = torch.cat([state[f"cache{i}"], x], dim=1)
            out[f"cache{i}"] = cache
            x = block(x, cache, bias)
        return out, self.norm(x)

    def step(self, state: State, tokens: torch.Tensor) -> tuple[State, torch.Tensor]:
        state, out = self._attend(state, self.summary(tokens)[:, None])
        return state, out[:, 0]

    def sequence(self, state: State, tokens: torch.Tensor) -> tuple[State, torch.Tensor]:
        """``tokens`` is ``[B, T, K, E]``; all T frames at once under a causal mask."""
        return self._attend(state, self.summary(tokens))


class BottleneckTeacher(MemoryCell):
    """The distillation teacher: the whole history, read through a fixed-size bottleneck.

    Each frame adds one summary vector to the history (the same ``FrameSummary`` as
    ``full``). At step t, N learned latent slots cross-attend (block-causally: to the
    history up to t only, with an ALiBi recency bias) and then attend among themselves,
    giving ``B_t`` (N x E, the shape of the student's memory). The readout sees only
    ``B_t`` and the current frame's tokens: a block over [B_t ; tokens], pooled like
    ``kinaema``'s, so the pose heads of teacher and student read the same format and
    can be copied. ``B_t`` is kept in the state as ``bottleneck`` (not carried into the
    next step: it is recomputed from the history) for distillation and queries.
    Not exportable: the history grows.
    """

    exportable = False
    memory_entries = ("bottleneck",)

    def __init__(self, slots: int = 8, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.slots, self.dim = slots, dim
        self.state_shapes = {"history": (0, dim), "valid": (0,), "bottleneck": (slots, dim)}
        self.readout_dim = 2 * dim
        self.summary = FrameSummary(dim)
        self.latents = nn.Parameter(torch.randn(slots, dim) * 0.02)
        self.read = Block(dim, heads, cross=True)
        self.mix = TransformerBlock(dim, heads)
        self.block = TransformerBlock(dim, heads)
        slopes = 2.0 ** (-8.0 * torch.arange(1, heads + 1) / heads)
        self.register_buffer("slopes", slopes, persistent=False)

    def step(self, state: State, tokens: torch.Tensor) -> tuple[State, torch.Tensor]:
        history = torch.cat([state["history"], self.summary(tokens)[:, None]], dim=1)
        valid = torch.cat([state["valid"], torch.ones_like(tokens[:, :1, 0])], dim=1)
        b, t = history.shape[:2]
        age = torch.arange(t - 1, -1, -1, device=history.device, dtype=history.dtype)
        bias = (-self.slopes[:, None, None] * age).expand(b, -1, self.slots, -1)
        bias = bias + _key_mask(valid)
        latents = self.latents.unsqueeze(0).expand(b, -1, -1)
        memory = self.mix(self.read(latents, history, bias))
        memory = nn.functional.layer_norm(memory, (self.dim,))
        out = self.block(torch.cat([memory, tokens], dim=1))
        readout = torch.cat([memory.mean(dim=1), out[:, self.slots]], dim=-1)
        return {"history": history, "valid": valid, "bottleneck": memory}, readout


CELLS: dict[str, type[MemoryCell]] = {
    "kinaema": KinaemaCell,
    "tlb": TLBCell,
    "crt": CRTCell,
    "relit": ReLiTCell,
    "arelit": AReLiTCell,
    "gru": GRUMemoryCell,
}
REFERENCE_CELLS: dict[str, type[MemoryCell]] = {
    "full": FullHistoryTransformer,
    "bottleneck": BottleneckTeacher,
}
