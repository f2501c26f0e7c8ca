r"""Train a localisation model with truncated backpropagation through time.

Streams of frames run through the model window by window with the state carried across
windows (detached), so a model learns horizons longer than one window; episodes grow
from ``min_episode`` to whole sequences (the curriculum). Losses are on poses composed
over several spans inside each window, on the tracked odometry drift, and a Gaussian
likelihood for the predicted uncertainty.

Several processes train one model with ``DistributedDataParallel`` when launched by
``torchrun`` (or any launcher that sets ``WORLD_SIZE`` > 1, ``RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``)::

    torchrun --standalone --nproc_per_node 4 -m latent_memory_training.cli fit \
        --data data/train --val data/val --out runs/student --threads 2

Each process draws its own streams (rank 0 the same ones as a single-process run), so
the effective batch is ``nproc_per_node x --batch``; gradients are averaged over the
processes at every step, so all of them hold the same model. Only rank 0 validates,
shows progress and writes checkpoints (the same files as a single-process run; every
rank loads ``--resume``). The model trains on CPU, so the processes talk over gloo.
Without such a launch, or with one process, fit runs as a single process.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from latent_memory_ros import geometry
from latent_memory_ros.evaluation import trajectory_metrics
from latent_memory_training.data.prepare import PreparedSequence
from latent_memory_training.models import so3
from latent_memory_training.models.config import IMAGE_MEAN, IMAGE_STD, ModelConfig
from latent_memory_training.models.student import LocalisationModel
from latent_memory_training.training.config import DISTANCES, SCHEDULES, TrainConfig


@dataclass
class Checkpoint:
    model: ModelConfig
    train: TrainConfig
    step: int = 0
    best: float = math.inf
    history: list = field(default_factory=list)
    teacher: str | None = None
    world_size: int = 1  # processes that trained it, each drawing `batch` streams


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
        query = self._query()
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
            **query,
        }
        return obs, targets, reset

    def _query(self) -> dict[str, torch.Tensor]:
        """For each stream, an earlier frame of its episode (at least query_min_gap
        frames before the window's last frame) and where its camera is seen from the
        last frame's camera: the map-free query the memory should answer."""
        cfg = self.cfg
        last = self.pos + cfg.window - 1
        images, targets, valid = [], [], []
        for b in range(cfg.batch):
            s = self.seqs[self.seq[b]]
            latest = last[b] - cfg.query_min_gap
            ok = latest >= self.start[b]
            q = int(self.rng.integers(self.start[b], latest + 1)) if ok else int(last[b])
            image = s.images[q]
            target = geometry.relative(s.gt[last[b]], s.gt[q])
            if self.mirrored[b]:
                image = image[:, ::-1]
                target = geometry.mirror_pose(target)
            images.append(image)
            targets.append(target)
            valid.append(ok)
        return {
            "query_image": _normalise(torch.from_numpy(np.stack(images)[:, None]))[:, 0],
            "query_pose": torch.from_numpy(np.stack(targets)).float(),
            "query_valid": torch.from_numpy(np.array(valid)),
        }


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


def query_loss(
    model: LocalisationModel, state: dict, targets: dict, cfg: TrainConfig
) -> tuple[torch.Tensor, dict]:
    """Pose error of the query head at the window's last frame (valid streams only),
    plus a Gaussian likelihood for its predicted uncertainty."""
    valid = targets["query_valid"]
    if cfg.query_weight <= 0 or not bool(valid.any()):
        return torch.zeros(()), {}
    pose, log_var = model.query(state, targets["query_image"])
    target = targets["query_pose"]
    te, re = so3.pose_errors(pose[valid], target[valid])
    d = so3.relative(target[valid], pose[valid]).detach()
    err = torch.cat([d[..., :3], so3.quat_to_rotvec(d[..., 3:])], dim=-1)
    lv = log_var[valid]
    nll = 0.5 * (err**2 * torch.exp(-lv) + lv).mean()
    loss = te.mean() + re.mean() + cfg.nll_weight * nll
    return cfg.query_weight * loss, {
        "query_m": float(te.mean().detach()),
        "query_deg": float(re.mean().detach() * 57.2958),
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


class Teacher:
    """A frozen bottleneck teacher run beside the student on the same frames, its own
    state carried across windows and reset with the student's streams."""

    def __init__(self, path: Path, batch: int) -> None:
        self.model, data = load_model(path)
        if not self.model.cell.fixed_memory:
            raise ValueError(f"{path}: cell '{self.model.config.cell}' has no fixed-size memory")
        self.model.eval().requires_grad_(False)
        self.path = Path(path)
        self.config = data["model_config"]
        self.state = self.model.initial_state(batch)

    @torch.no_grad()
    def memories(self, obs: dict, reset: torch.Tensor) -> torch.Tensor:
        state = carry_state(self.model, self.state, reset)
        self.state, out = self.model.rollout(state, obs, memory=True)
        return out["memory"]


def carry_state(model: LocalisationModel, state: dict, reset: torch.Tensor) -> dict:
    """The state for the next window: detached (truncated BPTT), fresh for the streams
    that start an episode. Growing states (the full-history reference and the teacher:
    one history shared by the batch) mark a restarted stream's past as not ``valid``
    and drop the leading frames no stream still uses."""
    fresh = model.initial_state(reset.shape[0])
    out = {}
    growing = [k for k, v in fresh.items() if v.dim() >= 2 and v.shape[1] == 0]
    for k, v in state.items():
        if k not in growing:
            out[k] = torch.where(reset.view(-1, *[1] * (v.dim() - 1)), fresh[k], v.detach())
    if growing:
        valid = state["valid"] * (~reset).to(state["valid"].dtype)[:, None]
        used = valid.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else valid.shape[1]
        for k in growing:
            out[k] = (valid if k == "valid" else state[k])[:, first:].detach()
    return out


def init_from(student: LocalisationModel, teacher: LocalisationModel) -> int:
    """Copy every parameter outside the memory cell whose name and shape match (encoder,
    motion token, heads); returns how many tensors were copied."""
    theirs = teacher.state_dict()
    mine = student.state_dict()
    copied = {
        k: v
        for k, v in theirs.items()
        if not k.startswith("cell.") and k in mine and mine[k].shape == v.shape
    }
    student.load_state_dict(copied, strict=False)
    return len(copied)


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
            "teacher": ckpt.teacher,
            "world_size": ckpt.world_size,
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


class WindowStep(nn.Module):
    """One training window as one ``forward``: carry the state over (fresh for streams
    that start an episode), roll the model through the window, and its losses (poses,
    queries, distillation towards ``teacher_memory``). Returns the loss, its terms and
    the (detached) state for the next window. Everything that uses the model's parameters
    happens in here, so that DistributedDataParallel, wrapped around it, synchronises
    all of their gradients."""

    def __init__(self, model: LocalisationModel, cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(
        self,
        state: dict,
        reset: torch.Tensor,
        obs: dict,
        targets: dict,
        teacher_memory: torch.Tensor | None = None,
        distill_weight: float = 0.0,
    ) -> tuple[torch.Tensor, dict, dict]:
        # Streams starting an episode take a fresh initial state, through which the
        # learned initial memory gets gradients.
        state = carry_state(self.model, state, reset)
        state, out = self.model.rollout(state, obs, memory=teacher_memory is not None)
        loss, terms = window_loss(out, targets, self.cfg)
        q_loss, q_terms = query_loss(self.model, state, targets, self.cfg)
        loss, terms = loss + q_loss, terms | q_terms
        if teacher_memory is not None:
            distance = distill_distance(out["memory"], teacher_memory, self.cfg.distill_distance)
            loss = loss + distill_weight * distance
            terms["distill"] = float(distance.detach())
        return loss, terms, {k: v.detach() for k, v in state.items()}


def _start_distributed() -> tuple[int, int, bool]:
    """``(rank, world size, started)``: from a process group that is already up, from
    the environment of a torchrun launch (``WORLD_SIZE`` > 1), else ``(0, 1, False)``.
    ``started`` says that fit opened the group and closes it."""
    if not dist.is_available():
        return 0, 1, False
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, False
    # Gradients are CPU tensors (the model trains on CPU), which gloo reduces; the long
    # timeout covers the other ranks waiting while rank 0 validates.
    dist.init_process_group("gloo", timeout=timedelta(hours=2))
    return dist.get_rank(), dist.get_world_size(), True


def fit(
    train: list[PreparedSequence],
    val: list[PreparedSequence],
    out_dir: Path,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    resume: Path | None = None,
    progress: bool = True,
    teacher_path: Path | None = None,
) -> Path:
    """Train; writes ``last.pt`` and ``best.pt`` (by validation score) into ``out_dir``.
    With ``teacher_path`` (a bottleneck teacher's checkpoint) the student's memory view
    (its slots, or the learned projection of a cell without slots) is also pulled
    towards the frozen teacher's bottleneck at every step. Under torchrun, every
    process calls fit and trains its share (the module's docstring)."""
    rank, world, started = _start_distributed()
    try:
        return _train(
            train, val, Path(out_dir), model_cfg, cfg, resume, progress, teacher_path, rank, world
        )
    finally:
        if started:
            dist.destroy_process_group()


def _train(
    train: list[PreparedSequence],
    val: list[PreparedSequence],
    out_dir: Path,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    resume: Path | None,
    progress: bool,
    teacher_path: Path | None,
    rank: int,
    world: int,
) -> Path:
    lead = rank == 0  # validates, reports and writes checkpoints

    def in_step() -> None:  # the others wait while rank 0 validates or saves
        if world > 1:
            dist.barrier()

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = LocalisationModel(model_cfg)
    teacher = Teacher(teacher_path, cfg.batch) if teacher_path is not None else None
    if teacher is not None:
        slots, dim = teacher.config["slots"], teacher.config["dim"]
        if not model.cell.fixed_memory or (model_cfg.slots, model_cfg.dim) != (slots, dim):
            raise ValueError(
                f"cell '{model_cfg.cell}' ({model_cfg.slots} x {model_cfg.dim}) has no "
                f"fixed-size memory of the teacher's {slots} x {dim} slots to distill"
            )
    if teacher is not None and cfg.init_from_teacher and resume is None:
        copied = init_from(model, teacher.model)
        if lead:
            tqdm.write(f"started {copied} tensors from {teacher_path}")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = Checkpoint(model_cfg, cfg, teacher=str(teacher_path) if teacher_path else None)
    ckpt.world_size = world
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
    # Rank 0 draws what a single process would; the others their own streams.
    rng = np.random.default_rng(cfg.seed + ckpt.step if lead else [cfg.seed + ckpt.step, rank])
    streams = Streams(train, cfg, rng)
    state = model.initial_state(cfg.batch)
    step_fn: nn.Module = WindowStep(model, cfg)
    if world > 1:
        # Broadcasts rank 0's parameters; averages gradients in backward. Parameters can
        # go unused in a window (the query head and a cell's memory projection while no
        # stream has a query to answer and nothing is distilled), hence
        # find_unused_parameters: those unused on every rank keep no gradient, as in a
        # single process. (Its warning that every parameter was used, once some window
        # uses them all, is harmless.)
        step_fn = DistributedDataParallel(step_fn, find_unused_parameters=True)
    baseline = odometry_baseline(val) if val and lead else {}
    bar = tqdm(total=cfg.steps, initial=ckpt.step, disable=not (progress and lead), desc="fit")
    started, frames = time.perf_counter(), 0
    model.train()
    while ckpt.step < cfg.steps:
        obs, targets, reset = streams.next(ckpt.step)
        mask = torch.from_numpy(reset)
        memory, weight = None, 0.0
        if teacher is not None:
            memory, weight = teacher.memories(obs, mask), distill_lambda(cfg, ckpt.step)
        loss, terms, state = step_fn(state, mask, obs, targets, memory, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        ckpt.step += 1
        frames += cfg.batch * cfg.window * world
        bar.update(1)
        bar.set_postfix(
            loss=f"{float(loss.detach()):.4f}",
            fps=f"{frames / (time.perf_counter() - started):.0f}",
        )
        if val and (ckpt.step % cfg.val_every == 0 or ckpt.step == cfg.steps):
            if lead:
                _validate(model, val, baseline, loss, terms, ckpt, out_dir)
            in_step()
        if ckpt.step % 100 == 0 or ckpt.step == cfg.steps:
            if lead:
                save_checkpoint(out_dir / "last.pt", model, opt, ckpt)
            in_step()
    bar.close()
    if lead and not (out_dir / "best.pt").exists():
        save_checkpoint(out_dir / "best.pt", model, None, ckpt)
    in_step()  # best.pt is there for every rank once fit returns
    return out_dir / "best.pt"


def _validate(
    model: LocalisationModel,
    val: list[PreparedSequence],
    baseline: dict,
    loss: torch.Tensor,
    terms: dict,
    ckpt: Checkpoint,
    out_dir: Path,
) -> None:
    """Score the model on the validation runs, log it to the history and keep the best
    checkpoint (``best.pt``). The loss and its terms are this process's last window."""
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
