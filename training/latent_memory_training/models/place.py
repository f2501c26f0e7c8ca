"""A place memory: a fixed number of slots, each a learned descriptor of a view and the
pose the model had when it saw it, beside the memory cell.

The memory cells alone did not learn to answer queries: with one query per training
window, held-out recall stayed at the "here" answer's (lessons.md, "A third look";
docs/benchmarks.md, "Place memory"). Place recognition is learnable on its own, with a
contrastive loss between views of the same place (:func:`place_contrastive_loss`), so
the memory keeps what a query needs explicitly:

- every frame, the descriptor of the image (a small head on the encoder's tokens, L2
  normalised) is compared with the slots in use; a view unlike every slot (cosine below
  ``write_below``) is written into a free slot, else into the one seen longest ago, with
  the pose the model has after this frame; a view like a slot marks that slot as seen now
  (its age goes back to 0), so places the robot comes back to stay;
- a query image's descriptor picks the most similar slot: the answer is that slot's pose
  seen from the current pose, ``seen`` a calibrated probability that the place is in the
  memory (a logistic function of the best cosine, fitted on validation runs), and the log
  variance a calibrated constant.

The state is ``place_keys`` (K x D), ``place_poses`` (K x 7) and ``place_age`` (K: frames
since the slot was written or seen, -1 for a free slot): fixed size, so frame 1,000,000
costs what frame 10 cost. Everything is written with one-hot masks (exportable to ONNX).
"""

from __future__ import annotations

import torch
from torch import nn

from latent_memory_training.models import so3

State = dict[str, torch.Tensor]
FREE = -1.0  # place_age of a slot never written
PER_TOKEN = 8  # features kept of each image token
ADDED_BUFFERS = ("loop_margin", "loop_far")  # filled with their defaults if a checkpoint lacks them


class PlaceMemory(nn.Module):
    def __init__(self, token_dim: int, grid: int, slots: int, dim: int) -> None:
        super().__init__()
        self.slots, self.dim = slots, dim
        # Each token reduced, then the grid flattened: the layout of a view says where
        # the camera looks from, which a pooled descriptor would lose.
        self.reduce = nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, PER_TOKEN))
        self.head = nn.Sequential(nn.Linear(grid * PER_TOKEN, 256), nn.GELU(), nn.Linear(256, dim))
        # Not trained by gradients: the write threshold and the calibration of ``seen``
        # and of the answer's log variance (calibrate_place_memory sets them).
        self.register_buffer("write_below", torch.tensor(0.8))
        self.register_buffer("seen_scale", torch.tensor(20.0))
        self.register_buffer("seen_offset", torch.tensor(-16.0))
        self.register_buffer("answer_log_var", torch.full((6,), -2.0))
        # Revisits: a view more like a slot at least loop_min_age frames old than
        # loop_above pulls the pose loop_gain of the way to the slot's pose (0: never);
        # with odometry and images only each have their own (chosen on validation runs).
        self.register_buffer("loop_min_age", torch.tensor(150.0))
        self.register_buffer("loop_above", torch.tensor([0.95, 0.95]))  # odometry, images
        self.register_buffer("loop_gain", torch.tensor([0.0, 0.0]))
        # Perceptual aliasing (two places that look alike) is what makes a revisit wrong:
        # as in Lowe's ratio test, a revisit needs the best slot to beat every slot whose
        # pose is at least loop_far metres from it by loop_margin in cosine (per mode).
        self.register_buffer("loop_margin", torch.tensor([0.0, 0.0]))
        self.register_buffer("loop_far", torch.tensor(1.0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before the revisit margin existed revisit without one.
        for name in ADDED_BUFFERS:
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            "place_keys": (self.slots, self.dim),
            "place_poses": (self.slots, 7),
            "place_age": (self.slots,),
        }

    def initial_state(self, batch: int) -> State:
        poses = torch.zeros(batch, self.slots, 7)
        poses[..., 6] = 1.0
        return {
            "place_keys": torch.zeros(batch, self.slots, self.dim),
            "place_poses": poses,
            "place_age": torch.full((batch, self.slots), FREE),
        }

    def describe(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, G, E]`` image tokens -> ``[B, D]`` unit descriptors."""
        return nn.functional.normalize(self.head(self.reduce(tokens).flatten(1)), dim=-1)

    def similarity(self, state: State, descriptor: torch.Tensor) -> torch.Tensor:
        """Cosine of ``descriptor`` to every slot, -2 for free slots: ``[B, K]``."""
        sims = torch.einsum("bkd,bd->bk", state["place_keys"], descriptor)
        return torch.where(state["place_age"] >= 0, sims, torch.full_like(sims, -2.0))

    def revisit(
        self, state: State, descriptor: torch.Tensor, pose: torch.Tensor, odom_valid: torch.Tensor
    ) -> torch.Tensor:
        """The pose after a revisit: where this view is very like a slot written or seen
        at least ``loop_min_age`` frames ago, part of the way to that slot's pose (the
        drift accumulated since), unless a slot far from it is nearly as alike.
        ``odom_valid`` ``[B, 1]`` picks the mode's threshold, margin and gain."""
        sims = self.similarity(state, descriptor)
        best, match = sims.max(dim=1)
        pick = nn.functional.one_hot(match, self.slots).to(pose.dtype)
        age = (state["place_age"] * pick).sum(dim=1)
        place = (state["place_poses"] * pick[..., None]).sum(dim=1)
        far = (state["place_poses"][..., :3] - place[:, None, :3]).norm(dim=-1) >= self.loop_far
        rival = torch.where(far, sims, torch.full_like(sims, -2.0)).max(dim=1).values
        mode = torch.cat([odom_valid, 1 - odom_valid], dim=1)  # [B, 2]: which one applies
        above = (mode * self.loop_above).sum(dim=1)
        distinct = best - rival >= (mode * self.loop_margin).sum(dim=1)
        loop = ((best > above) & (age >= self.loop_min_age) & distinct).to(pose.dtype)[:, None]
        gain = loop * (mode * self.loop_gain).sum(dim=1, keepdim=True)
        delta = so3.relative(pose, place)
        step = so3.motion_to_pose(so3.quat_to_rotvec(delta[:, 3:]) * gain, delta[:, :3] * gain)
        return so3.compose(pose, step)

    def write(self, state: State, descriptor: torch.Tensor, pose: torch.Tensor) -> State:
        """One frame: write a new view, or mark the slot it resembles as seen."""
        sims = self.similarity(state, descriptor)
        best, match = sims.max(dim=1)
        age = state["place_age"]
        used = (age >= 0).to(age.dtype)
        novel = (best < self.write_below).to(age.dtype)[:, None]
        # A free slot first (the lowest index), else the one seen longest ago.
        target = torch.argmax((1 - used) * 1e9 + age, dim=1)
        write = nn.functional.one_hot(target, self.slots).to(age.dtype) * novel
        seen = nn.functional.one_hot(match, self.slots).to(age.dtype) * (1 - novel)
        fresh = torch.clamp(write + seen, max=1.0)
        new_age = torch.where(fresh > 0, torch.zeros_like(age), age + used)
        w = write[..., None]
        return {
            "place_keys": state["place_keys"] * (1 - w) + w * descriptor[:, None],
            "place_poses": state["place_poses"] * (1 - w) + w * pose[:, None],
            "place_age": new_age,
        }

    def answer(
        self, state: State, pose: torch.Tensor, descriptor: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The best slot's pose in the current camera frame (``pose``: the current pose),
        the log variance and the probability ``seen`` ``[B, 1]``."""
        sims = self.similarity(state, descriptor)
        best, match = sims.max(dim=1)
        pick = nn.functional.one_hot(match, self.slots).to(sims.dtype)[..., None]
        place = (state["place_poses"] * pick).sum(dim=1)
        place = torch.cat([place[:, :3], nn.functional.normalize(place[:, 3:], dim=-1)], -1)
        rel = so3.relative(pose, place)
        seen = torch.sigmoid(self.seen_scale * best + self.seen_offset)[:, None]
        return rel, self.answer_log_var.expand(pose.shape[0], -1), seen


def place_contrastive_loss(
    descriptors: torch.Tensor,
    positives: torch.Tensor,
    ignore: torch.Tensor | None = None,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., 2020) over a batch of unit descriptors
    ``[N, D]``: ``positives[i, j]`` says that views i and j show the same place (i != j);
    pairs in ``ignore`` count neither way; every other view in the batch is a negative.
    Anchors without a positive are skipped."""
    logits = descriptors @ descriptors.T / temperature
    eye = torch.eye(len(descriptors), dtype=torch.bool, device=descriptors.device)
    excluded = eye if ignore is None else eye | ignore
    logits = logits.masked_fill(excluded, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = positives & ~eye
    count = pos.sum(dim=1)
    has = count > 0
    mean_pos = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    return -(mean_pos[has] / count[has]).mean()
