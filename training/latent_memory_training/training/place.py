"""Train and calibrate a model's place memory (models/place.py) on rendered runs.

Everything but the place memory's descriptor head stays as it is (the encoder, the cell,
the pose heads: the per-frame pose does not change). The head learns with a supervised
contrastive loss over the views of one run at a time: views whose cameras are within
:data:`SAME_PLACE` of each other show the same place, views farther than
:data:`OTHER_PLACE` are negatives, those in between are ignored (too alike to push
apart, too far to call the same). Calibration, on validation runs, then picks the write
threshold, fits the ``seen`` probability and the answers' log variance, by running the
place memory over each run with the ground-truth poses, so what is measured is place
recognition alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from latent_memory_ros import geometry
from latent_memory_ros.evaluation import query_errors, query_indices
from latent_memory_training.data.prepare import PreparedSequence
from latent_memory_training.data.streams import normalise
from latent_memory_training.models.place import place_contrastive_loss
from latent_memory_training.models.student import LocalisationModel

SAME_PLACE = (0.5, 10.0)  # m, degrees: the query recall's threshold (evaluation.py)
OTHER_PLACE = (1.0, 25.0)
ENCODE_CHUNK = 256


@torch.no_grad()
def encode(model: LocalisationModel, seq: PreparedSequence, frames: np.ndarray) -> torch.Tensor:
    """The frozen encoder's tokens ``[n, G, E]`` of the chosen frames of a run."""
    out = []
    camera = torch.from_numpy(seq.camera.astype(np.float32))[None]
    for i in range(0, len(frames), ENCODE_CHUNK):
        images = torch.from_numpy(seq.images[frames[i : i + ENCODE_CHUNK]])
        x = normalise(images[None])[0]
        out.append(model.encoder(x, camera.expand(len(x), -1)))
    return torch.cat(out)


def pose_distances(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Translation (m) and rotation (deg) between every pose of ``a`` and of ``b``."""
    d = geometry.relative(a[:, None], b[None, :])
    angle = np.linalg.norm(geometry.quat_to_rotvec(d[..., 3:]), axis=-1)
    return np.linalg.norm(d[..., :3], axis=-1), np.degrees(angle)


def _within(dist: tuple[np.ndarray, np.ndarray], limits: tuple[float, float]) -> np.ndarray:
    return (dist[0] < limits[0]) & (dist[1] < limits[1])


@dataclass
class RunViews:
    tokens: torch.Tensor  # [n, G, E]
    gt: np.ndarray  # [n, 7]


def train_descriptors(
    model: LocalisationModel,
    runs: list[RunViews],
    steps: int,
    batch: int = 192,
    lr: float = 2e-3,
    seed: int = 0,
    log_every: int = 100,
) -> list[dict]:
    """Train ``model.place``'s descriptor head; returns the loss history."""
    rng = np.random.default_rng(seed)
    params = [p for p in model.place.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(steps, 1))))
    )
    history, running = [], []
    model.place.train()
    for step in range(1, steps + 1):
        run = runs[rng.integers(len(runs))]
        pick = rng.choice(len(run.gt), size=min(batch, len(run.gt)), replace=False)
        dist = pose_distances(run.gt[pick], run.gt[pick])
        positive = torch.from_numpy(_within(dist, SAME_PLACE))
        ignore = torch.from_numpy(_within(dist, OTHER_PLACE)) & ~positive
        descriptors = model.place.describe(run.tokens[pick])
        loss = place_contrastive_loss(descriptors, positive, ignore=ignore)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(float(loss.detach()))
        if step % log_every == 0 or step == steps:
            history.append({"step": step, "loss": float(np.mean(running))})
            running = []
    model.place.eval()
    return history


@torch.no_grad()
def replay(model: LocalisationModel, descriptors: torch.Tensor, poses: np.ndarray) -> dict:
    """The place memory's state after writing a run's views in order, with ``poses``."""
    place = model.place
    state = place.initial_state(1)
    pose = torch.from_numpy(poses.astype(np.float32))
    for t in range(len(descriptors)):
        state = place.write(state, descriptors[t : t + 1], pose[t : t + 1])
    return state


@torch.no_grad()
def recognition(
    model: LocalisationModel,
    run: RunViews,
    others: list[torch.Tensor],
    every: int = 30,
    min_gap: int = 30,
) -> dict[str, np.ndarray]:
    """Queries at the run's end about every ``every``-th view (as the held-out benchmark
    asks them), answered from the place memory written with the ground-truth poses; and
    queries with views of other runs (places never seen). Returns the best cosines, the
    answers' errors and whether each answer is right (within :data:`SAME_PLACE`)."""
    place = model.place
    descriptors = place.describe(run.tokens)
    state = replay(model, descriptors, run.gt)
    now = torch.from_numpy(run.gt[-1:].astype(np.float32))
    asked = query_indices(len(run.gt), every, min_gap)
    rel, _, _ = place.answer(state, now.expand(len(asked), -1), descriptors[asked])
    expand = {k: v.expand(len(asked), *v.shape[1:]) for k, v in state.items()}
    best = place.similarity(expand, descriptors[asked]).max(dim=1).values
    truth = geometry.relative(run.gt[-1], run.gt[asked])
    trans, rot = query_errors(rel.double().numpy(), truth)
    unseen = torch.cat(others)
    expand = {k: v.expand(len(unseen), *v.shape[1:]) for k, v in state.items()}
    unseen_best = place.similarity(expand, place.describe(unseen)).max(dim=1).values
    return {
        "best": best.numpy(),
        "trans_m": trans,
        "rot_deg": rot,
        "right": (trans < SAME_PLACE[0]) & (rot < SAME_PLACE[1]),
        "unseen_best": unseen_best.numpy(),
        "slots_used": int((state["place_age"] >= 0).sum()),
    }
