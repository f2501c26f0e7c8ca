"""Train a localisation model with truncated backpropagation through time.

Streams of frames run through the model window by window with the state carried across
windows (detached), so a model learns horizons longer than one window; episodes grow
from ``min_episode`` to whole sequences (the curriculum). Losses are on poses composed
over several spans inside each window, on the tracked odometry drift, and a Gaussian
likelihood for the predicted uncertainty.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from latent_memory_ros import geometry
from latent_memory_ros.evaluation import trajectory_metrics
from latent_memory_training.data.prepare import PreparedSequence
from latent_memory_training.models import so3
from latent_memory_training.models.config import IMAGE_MEAN, IMAGE_STD, ModelConfig
from latent_memory_training.models.student import LocalisationModel
from latent_memory_training.training.config import TrainConfig


@dataclass
class Checkpoint:
    model: ModelConfig
    train: TrainConfig
    step: int = 0
    best: float = math.inf
    history: list = field(default_factory=list)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGE_MEAN).view(1, 1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGE_STD).view(1, 1, 3, 1, 1) * 255.0
    return (images.permute(0, 1, 4, 2, 3).float() - mean) / std


class Streams:
    """``batch`` parallel episodes over random sequences, cut into windows."""

    def __init__(self, seqs: list[PreparedSequence], cfg: TrainConfig, rng: np.random.Generator):
        self.seqs, self.cfg, self.rng = seqs, cfg, rng
        self.pos = np.zeros(cfg.batch, dtype=int)
        self.end = np.zeros(cfg.batch, dtype=int)
        self.seq = np.zeros(cfg.batch, dtype=int)
        self.start = np.zeros(cfg.batch, dtype=int)
        self.odom_on = np.ones(cfg.batch, dtype=bool)
        self.mirrored = np.zeros(cfg.batch, dtype=bool)

    def _episode_length(self, step: int) -> int:
        cfg = self.cfg
        grow = min(1.0, step / max(cfg.curriculum_steps, 1))
        longest = max(len(s) for s in self.seqs)
        return int(cfg.min_episode + grow * (longest - cfg.min_episode))

    def next(self, step: int) -> tuple[dict, dict, np.ndarray]:
        cfg, w = self.cfg, self.cfg.window
        reset = self.pos + w > self.end
        for b in np.flatnonzero(reset):
            self.seq[b] = self.rng.integers(len(self.seqs))
            n = len(self.seqs[self.seq[b]])
            length = min(n, max(w, self._episode_length(step)))
            self.start[b] = self.rng.integers(0, n - length + 1)
            self.pos[b] = self.start[b]
            self.end[b] = self.start[b] + length
            self.odom_on[b] = self.rng.random() >= cfg.odom_drop
            self.mirrored[b] = self.rng.random() < 0.5
        keys = ("images", "cues", "odom", "gt", "bias", "stamps")
        batch = {k: [] for k in keys}
        for b in range(cfg.batch):
            s, p = self.seqs[self.seq[b]], self.pos[b]
            for k in keys:
                batch[k].append(getattr(s, k)[p : p + w])
        arr = {k: np.stack(v) for k, v in batch.items()}
        _mirror_in_place(arr, self.mirrored)
        first = self.pos == self.start
        # An episode's first frame looks like a run's first frame to the runtime: no
        # previous frame for cues, no previous odometry pose.
        arr["cues"][first, 0] = 0.0
        arr["odom"][first, 0] = (0, 0, 0, 0, 0, 0, 1, 0)
        arr["odom"][~self.odom_on] = (0, 0, 0, 0, 0, 0, 1, 0)
        # Targets: poses in the frame of the episode's first camera.
        origin = np.stack([self.seqs[self.seq[b]].gt[self.start[b]] for b in range(cfg.batch)])
        gt = _relative_np(origin[:, None], arr["gt"])
        gt[self.mirrored] = geometry.mirror_pose(gt[self.mirrored])
        dt = np.diff(arr["stamps"], axis=1, prepend=arr["stamps"][:, :1])
        dt[first, 0] = 0.0
        self.pos += w
        obs = {
            "image": _normalise(torch.from_numpy(arr["images"])),
            "odom": torch.from_numpy(arr["odom"]).float(),
            "dt": torch.from_numpy(dt[..., None]).float(),
            "cues": torch.from_numpy(arr["cues"]).float(),
        }
        targets = {
            "gt": torch.from_numpy(gt).float(),
            "bias": torch.from_numpy(arr["bias"]).float(),
            "odom_on": torch.from_numpy(self.odom_on.copy()),
        }
        return obs, targets, reset


def _mirror_in_place(arr: dict[str, np.ndarray], rows: np.ndarray) -> None:
    """Left-right mirror the inputs of the chosen streams (targets are mirrored by the
    caller), so that no constant rotation offset can be learned (shared/docs/lessons.md).
    Images flip; in the optical frame a mirror is x -> -x, so positions negate x and
    rotation vectors keep x and negate y and z; the cues' rotations, heading and flow
    transform the same way."""
    if not rows.any():
        return
    arr["images"][rows] = arr["images"][rows, :, :, ::-1]
    arr["odom"][rows, :, :7] = geometry.mirror_pose(arr["odom"][rows, :, :7])
    arr["bias"][rows] *= (1.0, -1.0, -1.0)
    flip = np.ones(arr["cues"].shape[-1], dtype=np.float32)
    flip[[2, 3, 4, 9, 13, 14]] = -1.0
    arr["cues"][rows] *= flip


def _relative_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return geometry.relative(np.broadcast_to(a, b.shape), b)


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


@torch.no_grad()
def evaluate(model: LocalisationModel, seqs: list[PreparedSequence], use_odom: bool) -> dict:
    """Roll every sequence from its first frame; mean evo metrics over sequences."""
    model.eval()
    state = model.initial_state(len(seqs))
    n = min(len(s) for s in seqs)
    odom = np.stack([s.odom[:n] for s in seqs])
    if not use_odom:
        odom[:] = (0, 0, 0, 0, 0, 0, 1, 0)
    stamps = np.stack([s.stamps[:n] for s in seqs])
    dt = np.diff(stamps, axis=1, prepend=stamps[:, :1])
    poses = []
    for t0 in range(0, n, 64):
        sl = slice(t0, min(n, t0 + 64))
        obs = {
            "image": _normalise(torch.from_numpy(np.stack([s.images[sl] for s in seqs]))),
            "odom": torch.from_numpy(odom[:, sl]).float(),
            "dt": torch.from_numpy(dt[:, sl, None]).float(),
            "cues": torch.from_numpy(np.stack([s.cues[sl] for s in seqs])).float(),
        }
        state, out = model.rollout(state, obs)
        poses.append(out["pose"].double().numpy())
    est = np.concatenate(poses, axis=1)
    rows = [
        trajectory_metrics(s.stamps[:n], est[i], s.stamps[:n], s.gt[:n]) for i, s in enumerate(seqs)
    ]
    model.train()
    return {
        k: float(np.mean([r[k] for r in rows]))
        for k in ("ate_rmse_m", "rpe_trans_m", "rpe_rot_deg")
    }


def odometry_baseline(seqs: list[PreparedSequence]) -> dict:
    """The same metrics for integrating the wheel odometry alone."""
    rows = []
    for s in seqs:
        steps = s.odom[:, :7].astype(np.float64)
        est = geometry.integrate(steps)
        rows.append(trajectory_metrics(s.stamps, est, s.stamps, s.gt))
    return {
        k: float(np.mean([r[k] for r in rows]))
        for k in ("ate_rmse_m", "rpe_trans_m", "rpe_rot_deg")
    }


def save_checkpoint(path: Path, model: LocalisationModel, opt, ckpt: Checkpoint) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model_config": asdict(ckpt.model),
            "train_config": asdict(ckpt.train),
            "step": ckpt.step,
            "best": ckpt.best,
            "history": ckpt.history,
            "model": model.state_dict(),
            "optimizer": opt.state_dict() if opt is not None else None,
        },
        tmp,
    )
    tmp.replace(path)


def load_model(path: Path) -> tuple[LocalisationModel, dict]:
    data = torch.load(path, map_location="cpu", weights_only=False)
    model = LocalisationModel(ModelConfig(**data["model_config"]))
    model.load_state_dict(data["model"])
    return model, data


def fit(
    train: list[PreparedSequence],
    val: list[PreparedSequence],
    out_dir: Path,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    resume: Path | None = None,
    progress: bool = True,
) -> Path:
    """Train; writes ``last.pt`` and ``best.pt`` (by validation score) into ``out_dir``."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir)
    model = LocalisationModel(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = Checkpoint(model_cfg, cfg)
    if resume is not None:
        data = torch.load(resume, map_location="cpu", weights_only=False)
        model.load_state_dict(data["model"])
        if data.get("optimizer"):
            opt.load_state_dict(data["optimizer"])
        ckpt.step, ckpt.best, ckpt.history = data["step"], data["best"], data["history"]
    start = ckpt.step  # a resumed run continues the cosine schedule where it stopped
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, (s + start) / max(cfg.steps, 1))))
    )
    rng = np.random.default_rng(cfg.seed + ckpt.step)
    streams = Streams(train, cfg, rng)
    state = model.initial_state(cfg.batch)
    baseline = odometry_baseline(val) if val else {}
    bar = tqdm(total=cfg.steps, initial=ckpt.step, disable=not progress, desc="fit")
    started, frames = time.perf_counter(), 0
    model.train()
    while ckpt.step < cfg.steps:
        obs, targets, reset = streams.next(ckpt.step)
        mask = torch.from_numpy(reset)
        # Carried state is detached (truncated BPTT); streams starting an episode take a
        # fresh initial state, through which the learned initial memory gets gradients.
        fresh = model.initial_state(cfg.batch)
        state = {
            k: torch.where(mask.view(-1, *[1] * (v.dim() - 1)), fresh[k], v.detach())
            for k, v in state.items()
        }
        state, out = model.rollout(state, obs)
        loss, terms = window_loss(out, targets, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        ckpt.step += 1
        frames += cfg.batch * cfg.window
        bar.update(1)
        bar.set_postfix(
            loss=f"{float(loss.detach()):.4f}",
            fps=f"{frames / (time.perf_counter() - started):.0f}",
        )
        if val and (ckpt.step % cfg.val_every == 0 or ckpt.step == cfg.steps):
            with_odom = evaluate(model, val, use_odom=True)
            images_only = evaluate(model, val, use_odom=False)
            # One number to pick the best checkpoint: each mode relative to its baseline.
            score = with_odom["ate_rmse_m"] / baseline["ate_rmse_m"] + images_only["ate_rmse_m"]
            entry = {
                "step": ckpt.step,
                "loss": float(loss.detach()),
                **terms,
                "val_ate_odom_mode_m": with_odom["ate_rmse_m"],
                "val_ate_images_only_m": images_only["ate_rmse_m"],
                "val_odometry_ate_m": baseline["ate_rmse_m"],
                "score": score,
            }
            ckpt.history.append(entry)
            tqdm.write(json.dumps(entry))
            if score < ckpt.best:
                ckpt.best = score
                save_checkpoint(out_dir / "best.pt", model, None, ckpt)
        if ckpt.step % 100 == 0 or ckpt.step == cfg.steps:
            save_checkpoint(out_dir / "last.pt", model, opt, ckpt)
    bar.close()
    if not (out_dir / "best.pt").exists():
        save_checkpoint(out_dir / "best.pt", model, None, ckpt)
    return out_dir / "best.pt"
