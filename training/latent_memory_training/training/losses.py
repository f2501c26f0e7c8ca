"""The training losses: poses composed over several spans, the tracked odometry drift,
Gaussian likelihoods for the predicted uncertainties, map-free queries, distillation."""

from __future__ import annotations

import math

import torch
from torch import nn

from latent_memory_training.models import so3
from latent_memory_training.models.student import LocalisationModel
from latent_memory_training.training.config import DISTANCES, SCHEDULES, TrainConfig

DEGREES = 180.0 / math.pi


def window_loss(out: dict, targets: dict, cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    pred, gt = out["pose"], targets["gt"]
    w = pred.shape[1]
    terms = {}
    total = torch.zeros(())
    for s in cfg.spans:
        if s >= w:
            continue
        p = so3.relative(pred[:, :-s], pred[:, s:])
        g = so3.relative(gt[:, :-s], gt[:, s:])
        te, re = so3.pose_errors(p, g)
        term = (te.mean() + re.mean()) / s
        terms[f"span{s}"] = float(term.detach())
        total = total + term
    on = targets["odom_on"].float()[:, None, None]
    bias_err = ((out["bias"] - targets["bias"]) * 1000.0) ** 2 * on
    bias_loss = bias_err.sum() / (on.sum() * 3 * w + 1e-9)
    terms["bias_mrad2"] = float(bias_loss.detach())
    gt_motion = so3.relative(gt[:, :-1], gt[:, 1:])
    d = so3.relative(gt_motion, out["motion"][:, 1:]).detach()
    err = torch.cat([d[..., :3], so3.quat_to_rotvec(d[..., 3:])], dim=-1)
    lv = out["log_var"][:, 1:]
    nll = 0.5 * (err**2 * torch.exp(-lv) + lv).mean()
    terms["nll"] = float(nll.detach())
    total = total + cfg.bias_weight * bias_loss + cfg.nll_weight * nll
    return total, terms


def query_loss(
    model: LocalisationModel, state: dict, targets: dict, cfg: TrainConfig
) -> tuple[torch.Tensor, dict]:
    """Pose error of the query head at the window's last frame (valid streams only),
    plus a Gaussian likelihood for its predicted uncertainty."""
    valid = targets["query_valid"]
    # A place memory learns from its own contrastive loss (training/place.py).
    if cfg.query_weight <= 0 or model.place is not None or not bool(valid.any()):
        return torch.zeros(()), {}
    pose, log_var = model.query(state, targets["query_image"], targets["query_camera"])
    target = targets["query_pose"]
    te, re = so3.pose_errors(pose[valid], target[valid])
    d = so3.relative(target[valid], pose[valid]).detach()
    err = torch.cat([d[..., :3], so3.quat_to_rotvec(d[..., 3:])], dim=-1)
    lv = log_var[valid]
    nll = 0.5 * (err**2 * torch.exp(-lv) + lv).mean()
    loss = te.mean() + re.mean() + cfg.nll_weight * nll
    return cfg.query_weight * loss, {
        "query_m": float(te.mean().detach()),
        "query_deg": float(re.mean().detach() * DEGREES),
    }


def distill_distance(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean per-slot distance between memories ``[B, T, N, E]``: ``mse_ln`` (squared
    error after LayerNorm of each slot) or ``cosine`` (1 - cosine similarity)."""
    if kind == "mse_ln":
        e = student.shape[-1]
        diff = nn.functional.layer_norm(student, (e,)) - nn.functional.layer_norm(teacher, (e,))
        return (diff**2).mean()
    if kind == "cosine":
        return (1.0 - nn.functional.cosine_similarity(student, teacher, dim=-1)).mean()
    raise ValueError(f"unknown distillation distance '{kind}'; choose from {', '.join(DISTANCES)}")


def distill_lambda(cfg: TrainConfig, step: int) -> float:
    if cfg.distill_schedule == "constant":
        return cfg.distill_weight
    if cfg.distill_schedule == "anneal":
        return (
            cfg.distill_weight * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(cfg.steps, 1))))
        )
    raise ValueError(
        f"unknown schedule '{cfg.distill_schedule}'; choose from {', '.join(SCHEDULES)}"
    )
