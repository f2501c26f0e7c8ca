"""Whole runs through a model in PyTorch, from each run's first frame, as one batch: the
one rollout that validation, the held-out curve of a training and the distillation
benchmark share."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from latent_memory_ros import geometry
from latent_memory_ros.evaluation import trajectory_metrics
from latent_memory_training.data.prepare import PreparedSequence
from latent_memory_training.data.streams import observations
from latent_memory_training.models.student import LocalisationModel

KEYS = ("ate_rmse_m", "rpe_trans_m", "rpe_rot_deg")
CHUNK = 64

# Called after frame ``t`` with the state then and the poses of frames 0..t.
StopHook = Callable[[int, dict, np.ndarray], None]


@torch.no_grad()
def rollout_runs(
    model: LocalisationModel,
    seqs: list[PreparedSequence],
    use_odom: bool,
    reset_memory: bool = False,
    stops: tuple[int, ...] = (),
    on_stop: StopHook | None = None,
) -> np.ndarray:
    """Poses ``(B, n, 7)`` of the runs' first ``n`` frames (the shortest run's length).

    ``reset_memory`` is the memory ablation: the memory cell's state goes back to its
    initial value before every frame, while the pose and the odometry-drift filter carry
    on. ``on_stop`` is called after each frame in ``stops``."""
    was_training = model.training
    model.eval()
    n = min(len(s) for s in seqs)
    state = model.initial_state(len(seqs))
    cell = model.memory_shapes()
    fresh = {k: v for k, v in state.items() if k in cell} if reset_memory else {}
    poses: list[np.ndarray] = []
    edges = sorted({0, n, *range(0, n, 1 if reset_memory else CHUNK), *(t + 1 for t in stops)})
    edges = [e for e in edges if e <= n]
    for t0, t1 in zip(edges[:-1], edges[1:], strict=True):
        state = {**state, **fresh}
        device = state["pose"].device
        obs = {k: v.to(device) for k, v in observations(seqs, t0, t1, use_odom).items()}
        state, out = model.rollout(state, obs)
        poses.append(out["pose"].double().cpu().numpy())
        if on_stop is not None and t1 - 1 in stops:
            on_stop(t1 - 1, state, np.concatenate(poses, axis=1))
    if was_training:
        model.train()
    return np.concatenate(poses, axis=1)


def run_metrics(seqs: list[PreparedSequence], est: np.ndarray) -> list[dict]:
    """evo metrics of each run's estimate against its ground truth."""
    n = est.shape[1]
    return [
        trajectory_metrics(s.stamps[:n], est[i], s.stamps[:n], s.gt[:n]) for i, s in enumerate(seqs)
    ]


def evaluate(
    model: LocalisationModel,
    seqs: list[PreparedSequence],
    use_odom: bool,
    reset_memory: bool = False,
) -> dict:
    """Mean evo metrics over the runs, and each run's ATE (``per_sequence_ate_m``)."""
    rows = run_metrics(seqs, rollout_runs(model, seqs, use_odom, reset_memory))
    return {k: float(np.mean([r[k] for r in rows])) for k in KEYS} | {
        "per_sequence_ate_m": [float(r["ate_rmse_m"]) for r in rows]
    }


def odometry_baseline(seqs: list[PreparedSequence]) -> dict:
    """The same metrics for integrating the wheel odometry alone."""
    n = min(len(s) for s in seqs)
    est = np.stack([geometry.integrate(s.odom[:n, :7].astype(np.float64)) for s in seqs])
    rows = run_metrics(seqs, est)
    return {k: float(np.mean([r[k] for r in rows])) for k in KEYS} | {
        "per_sequence_ate_m": [float(r["ate_rmse_m"]) for r in rows]
    }
