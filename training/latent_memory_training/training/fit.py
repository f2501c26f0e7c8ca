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
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from latent_memory_training.data.prepare import PreparedSequence
from latent_memory_training.data.streams import Streams
from latent_memory_training.data.world_stream import RoomPool
from latent_memory_training.models.config import ModelConfig
from latent_memory_training.models.student import LocalisationModel
from latent_memory_training.training.checkpoint import Checkpoint, load_model, save_checkpoint
from latent_memory_training.training.config import TrainConfig
from latent_memory_training.training.losses import (
    distill_distance,
    distill_lambda,
    query_loss,
    window_loss,
)
from latent_memory_training.training.rollout import evaluate, odometry_baseline


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


CHECKPOINT_IN_MODEL_DIR = "checkpoint.pt"
"""The PyTorch weights ``export`` keeps beside the ONNX graphs, for fine-tuning."""


def fine_tuning_checkpoint(path: Path) -> Path:
    """The checkpoint ``--init-from`` names: a ``.pt`` file, or a model directory's
    :data:`CHECKPOINT_IN_MODEL_DIR`. Raises FileNotFoundError saying which is missing."""
    path = Path(path)
    if path.is_dir():
        inside = path / CHECKPOINT_IN_MODEL_DIR
        if not inside.is_file():
            raise FileNotFoundError(
                f"{path} holds no {CHECKPOINT_IN_MODEL_DIR}: it was exported without its "
                "PyTorch weights (ONNX graphs alone cannot be trained on); pass the "
                "checkpoint it was exported from, or re-export it with this version"
            )
        return inside
    if not path.is_file():
        raise FileNotFoundError(f"--init-from {path} does not exist")
    return path


def start_from(model: LocalisationModel, checkpoint: Path) -> int:
    """Load every weight of ``checkpoint`` into ``model`` (fine-tuning starts from all of
    them); returns how many tensors. Raises ValueError naming what does not fit."""
    theirs = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    mine = model.state_dict()
    wrong = [k for k in mine if k not in theirs or theirs[k].shape != mine[k].shape]
    if wrong:
        raise ValueError(
            f"{checkpoint} does not fit this model: {', '.join(wrong[:8])}"
            f"{' ...' if len(wrong) > 8 else ''} missing or of another shape"
        )
    model.load_state_dict(theirs)
    return len(mine)


def freeze(model: LocalisationModel, parts: str) -> list[str]:
    """Keep the named top-level parts (comma-separated, e.g. ``encoder,motion_token``) as
    they are: no gradients, no updates. Returns the names; raises ValueError for a name
    the model has not, listing those it has."""
    names = [p.strip() for p in parts.split(",") if p.strip()]
    known = {name.split(".")[0] for name, _ in model.named_parameters()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"--freeze {', '.join(unknown)}: no such part; the model's parts are "
            f"{', '.join(sorted(known))}"
        )
    for name, parameter in model.named_parameters():
        if name.split(".")[0] in names:
            parameter.requires_grad_(False)
    return names


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
    train: list[PreparedSequence] | RoomPool,
    val: list[PreparedSequence],
    out_dir: Path,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    resume: Path | None = None,
    progress: bool = True,
    teacher_path: Path | None = None,
    heldout: list[PreparedSequence] | None = None,
) -> Path:
    """Train; writes ``last.pt`` and ``best.pt`` (by validation score) into ``out_dir``.
    ``train`` is a fixed set of sequences or a :class:`RoomPool` of fresh rooms (built
    for the step a resumed run starts at). ``heldout`` runs are scored every
    ``cfg.heldout_every`` steps into the history, never used to choose a checkpoint:
    the curve of a long training on runs it never sees.
    With ``teacher_path`` (a bottleneck teacher's checkpoint) the student's memory view
    (its slots, or the learned projection of a cell without slots) is also pulled
    towards the frozen teacher's bottleneck at every step. Under torchrun, every
    process calls fit and trains its share (the module's docstring)."""
    rank, world, started = _start_distributed()
    try:
        return _train(
            train,
            val,
            Path(out_dir),
            model_cfg,
            cfg,
            resume,
            progress,
            teacher_path,
            rank,
            world,
            heldout or [],
        )
    finally:
        if started:
            dist.destroy_process_group()


def _train(
    train: list[PreparedSequence] | RoomPool,
    val: list[PreparedSequence],
    out_dir: Path,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    resume: Path | None,
    progress: bool,
    teacher_path: Path | None,
    rank: int,
    world: int,
    heldout: list[PreparedSequence],
) -> Path:
    lead = rank == 0  # validates, reports and writes checkpoints

    def in_step() -> None:  # the others wait while rank 0 validates or saves
        if world > 1:
            dist.barrier()

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available to torch here")
    # Mixed precision: bfloat16 autocast (no loss scaling needed); off on the CPU path.
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp)
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
    if cfg.init_from and resume is None:
        source = fine_tuning_checkpoint(Path(cfg.init_from))
        copied = start_from(model, source)
        if lead:
            tqdm.write(f"fine-tuning: started all {copied} tensors from {source}")
    if cfg.freeze:
        frozen = freeze(model, cfg.freeze)
        if lead:
            tqdm.write(f"frozen: {', '.join(frozen)}")
    model.to(device)
    if teacher is not None:
        teacher.model.to(device)
        teacher.state = teacher.model.initial_state(cfg.batch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = Checkpoint(model_cfg, cfg, teacher=str(teacher_path) if teacher_path else None)
    ckpt.world_size = world
    if resume is not None:
        data = torch.load(resume, map_location=device, weights_only=False)
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
    heldout_baseline = odometry_baseline(heldout) if heldout and lead else {}
    bar = tqdm(total=cfg.steps, initial=ckpt.step, disable=not (progress and lead), desc="fit")
    started, frames = time.perf_counter(), 0
    model.train()
    while ckpt.step < cfg.steps:
        if isinstance(train, RoomPool):
            train.advance(ckpt.step)
        obs, targets, reset = streams.next(ckpt.step)
        obs = {k: v.to(device, non_blocking=True) for k, v in obs.items()}
        targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
        mask = torch.from_numpy(reset).to(device)
        memory, weight = None, 0.0
        if teacher is not None:
            memory, weight = teacher.memories(obs, mask), distill_lambda(cfg, ckpt.step)
        with autocast:
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
                extra = (
                    {"rooms_seen": train.rooms_seen, "render_wait_s": round(train.waited_s, 1)}
                    if isinstance(train, RoomPool)
                    else {}
                )
                extra["train_fps"] = round(frames / (time.perf_counter() - started), 1)
                _validate(model, val, baseline, loss, terms | extra, ckpt, out_dir)
            in_step()
        if heldout and cfg.heldout_every and ckpt.step % cfg.heldout_every == 0 and lead:
            _score_heldout(model, heldout, heldout_baseline, ckpt)
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
    # One number to pick the best checkpoint: with odometry the mean per-run ratio to
    # integrating it (so one run cannot hide behind the others' mean), images only the ATE.
    ratios = np.divide(with_odom["per_sequence_ate_m"], baseline["per_sequence_ate_m"])
    score = float(ratios.mean()) + images_only["ate_rmse_m"]
    entry = {
        "step": ckpt.step,
        "loss": float(loss.detach()),
        **terms,
        "val_ate_odom_mode_m": with_odom["ate_rmse_m"],
        "val_ate_images_only_m": images_only["ate_rmse_m"],
        "val_odometry_ate_m": baseline["ate_rmse_m"],
        "val_worst_ratio_to_odometry": float(ratios.max()),
        "score": score,
    }
    ckpt.history.append(entry)
    tqdm.write(json.dumps(entry))
    if score < ckpt.best:
        ckpt.best = score
        save_checkpoint(out_dir / "best.pt", model, None, ckpt)


def _score_heldout(
    model: LocalisationModel, heldout: list[PreparedSequence], baseline: dict, ckpt: Checkpoint
) -> None:
    """Held-out ATE at this step, into the history (never used to choose a checkpoint)."""
    with_odom = evaluate(model, heldout, use_odom=True)
    images_only = evaluate(model, heldout, use_odom=False)
    ratios = np.divide(with_odom["per_sequence_ate_m"], baseline["per_sequence_ate_m"])
    entry = {
        "step": ckpt.step,
        "heldout_ate_odom_mode_m": with_odom["ate_rmse_m"],
        "heldout_ate_images_only_m": images_only["ate_rmse_m"],
        "heldout_odometry_ate_m": baseline["ate_rmse_m"],
        "heldout_worst_ratio_to_odometry": float(ratios.max()),
    }
    ckpt.history.append(entry)
    tqdm.write(json.dumps(entry))
