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

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from latent_memory_ros import cues, geometry
from latent_memory_ros.datasets import read_sequence
from latent_memory_ros.evaluation import (
    query_errors,
    query_indices,
    seen_reliability,
    trajectory_metrics,
)
from latent_memory_training.data.prepare import PreparedSequence, find_sources, load_prepared
from latent_memory_training.data.streams import normalise
from latent_memory_training.models import so3
from latent_memory_training.models.config import ModelConfig
from latent_memory_training.models.place import place_contrastive_loss
from latent_memory_training.models.student import LocalisationModel
from latent_memory_training.training.checkpoint import Checkpoint, save_checkpoint
from latent_memory_training.training.config import TrainConfig
from latent_memory_training.training.rollout import rollout_runs

SAME_PLACE = (0.5, 10.0)  # m, degrees: the query recall's threshold (evaluation.py)
OTHER_PLACE = (1.0, 25.0)
ENCODE_CHUNK = 256
# Calibration: the write thresholds tried, and the share of the slots validation runs
# (600 frames) may fill, so that runs three times as long still fit.
WRITE_THRESHOLDS = (0.7, 0.8, 0.85, 0.9, 0.95)
MAX_SLOT_SHARE = 0.4
# Revisits, chosen per mode on long validation runs: the (loop_above, loop_gain,
# loop_margin) settings tried, and what a setting must not do with odometry. It must make
# no run worse than without revisits (REVISIT_SAFE_RATIO: a margin of 5 % let through a
# setting 1.03x on the worst of 20 validation runs that was 1.45x its odometry on an
# unseen run). And with the runs' odometry made perfect (their true motion), where every
# pull can only add error, it may add at most REVISIT_PERFECT_ODOMETRY_M of ATE on
# average: a matched view is not the same pose (on 40 long validation runs, at a cosine
# of 0.95-0.96 the true offset to the slot's view is 0.06 m / 3.3 degrees at the median,
# 0.38 m / 9.2 at the 90th percentile; at 0.98-0.99, 0.02 m / 1.7 and 0.11 m / 4.3; at
# 0.99 and above, 0.01 m / 1.0 and 0.04 m / 2.7), so on a robot whose odometry is better than
# the validation runs' a pull toward the slot moves it away from the truth. 2 cm keeps an
# odometry good to 4 cm within about 1.1x (errors adding in quadrature);
# docs/benchmarks.md, "Revisits with perfect odometry".
REVISIT_GRID = (
    (0.90, 0.1, 0.0),
    (0.95, 0.1, 0.0),
    (0.90, 0.1, 0.05),
    (0.95, 0.1, 0.05),
    (0.95, 0.3, 0.05),
    (0.95, 0.05, 0.05),
    (0.97, 0.05, 0.05),
    (0.98, 0.05, 0.05),
    (0.98, 0.1, 0.05),
    (0.99, 0.1, 0.05),
    (0.99, 0.2, 0.05),
    (0.99, 0.3, 0.05),
)
REVISIT_BUFFERS = ("loop_above", "loop_gain", "loop_margin")  # the order of a setting
REVISIT_MIN_AGE = 150
# "No run worse" up to the float32 noise of re-integrating a run: a run that takes no
# revisit at all replays to 1.000001-1.000008 of its plain rollout (40 long validation
# runs), and at exactly 1.0 that noise refused every setting above 0.97 cosine.
REVISIT_SAFE_RATIO = 1.001
REVISIT_PERFECT_ODOMETRY_M = 0.02


@torch.no_grad()
def encode(model: LocalisationModel, images: np.ndarray, camera: np.ndarray) -> torch.Tensor:
    """The frozen encoder's tokens ``[n, G, E]`` of uint8 views ``[n, h, w, 3]`` at the
    network's size, taken with normalised intrinsics ``camera``."""
    out = []
    camera = torch.from_numpy(camera.astype(np.float32))[None]
    for i in range(0, len(images), ENCODE_CHUNK):
        x = normalise(torch.from_numpy(images[i : i + ENCODE_CHUNK])[None])[0]
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
    answers = rel.double().numpy()
    trans, rot = query_errors(answers, truth)
    d = geometry.relative(truth, answers)
    errors = np.concatenate([d[:, :3], geometry.quat_to_rotvec(d[:, 3:])], axis=1)
    unseen = torch.cat(others)
    expand = {k: v.expand(len(unseen), *v.shape[1:]) for k, v in state.items()}
    unseen_best = place.similarity(expand, place.describe(unseen)).max(dim=1).values
    return {
        "best": best.numpy(),
        "trans_m": trans,
        "rot_deg": rot,
        "errors": errors,
        "right": (trans < SAME_PLACE[0]) & (rot < SAME_PLACE[1]),
        "unseen_best": unseen_best.numpy(),
        "slots_used": int((state["place_age"] >= 0).sum()),
    }


def views_of(model: LocalisationModel, path: Path, every: int = 1) -> RunViews:
    """Every ``every``-th view of a run (any format :mod:`latent_memory_ros.datasets`
    reads) as the frozen encoder's tokens, with the ground-truth camera poses. Only
    images and poses: place training needs no cues."""
    seq = read_sequence(path)
    size = (model.config.image_width, model.config.image_height)
    frames = np.arange(0, len(seq), every)
    images = np.stack(
        [cv2.resize(seq.images[i], size, interpolation=cv2.INTER_AREA) for i in frames]
    )
    camera = cues.normalised_intrinsics(seq.intrinsics, *seq.size)
    gt = geometry.relative(seq.gt_camera[:1], seq.gt_camera)[frames]
    return RunViews(encode(model, images, camera), gt)


def fit_seen(best: np.ndarray, right: np.ndarray) -> tuple[float, float]:
    """Logistic regression of whether an answer is right on its best cosine: ``(scale,
    offset)`` of ``seen = sigmoid(scale * cosine + offset)``."""
    x = torch.from_numpy(best.astype(np.float64))
    y = torch.from_numpy(right.astype(np.float64))
    params = torch.tensor([10.0, -8.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(params[0] * x + params[1], y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(params[0].detach()), float(params[1].detach())


def calibrate(
    model: LocalisationModel,
    runs: list[RunViews],
    thresholds: tuple[float, ...] = WRITE_THRESHOLDS,
    max_share: float = MAX_SLOT_SHARE,
) -> dict:
    """Choose the write threshold on validation runs (the highest recognition recall
    among those that fill at most ``max_share`` of the slots, leaving room for runs
    longer than these), then fit ``seen`` (asked also about other runs' views: places
    never seen) and the answers' log variance. Sets the place memory's buffers; returns
    what was measured."""
    place = model.place
    trials = []
    for threshold in thresholds:
        place.write_below.fill_(threshold)
        res = [
            recognition(model, r, [runs[(i + 1) % len(runs)].tokens[::20]])
            for i, r in enumerate(runs)
        ]
        trials.append(
            {
                "write_below": threshold,
                "recall": float(np.concatenate([r["right"] for r in res]).mean()),
                "slots_used": float(np.mean([r["slots_used"] for r in res])),
                "results": res,
            }
        )
    room = [t for t in trials if t["slots_used"] <= max_share * place.slots] or trials[:1]
    chosen = max(room, key=lambda t: t["recall"])
    place.write_below.fill_(chosen["write_below"])
    res = chosen["results"]
    right = np.concatenate([r["right"] for r in res])
    best = np.concatenate([r["best"] for r in res])
    unseen = np.concatenate([r["unseen_best"] for r in res])
    scale, offset = fit_seen(
        np.concatenate([best, unseen]), np.concatenate([right, np.zeros(len(unseen), bool)])
    )
    place.seen_scale.fill_(scale)
    place.seen_offset.fill_(offset)
    errors = np.concatenate([r["errors"][r["right"]] for r in res])
    place.answer_log_var.copy_(torch.from_numpy(np.log(np.mean(errors**2, axis=0))).float())
    seen = 1 / (1 + np.exp(-(scale * best + offset)))
    seen_unseen = 1 / (1 + np.exp(-(scale * unseen + offset)))
    return {
        "write_below": chosen["write_below"],
        "trials": [{k: v for k, v in t.items() if k != "results"} for t in trials],
        "recognition_recall": float(right.mean()),
        "seen_scale": scale,
        "seen_offset": offset,
        "seen_calibration": seen_reliability(
            np.concatenate([seen, seen_unseen]),
            np.concatenate([right, np.zeros(len(unseen), bool)]),
        ),
        "answer_log_var": place.answer_log_var.tolist(),
    }


def describe_run(model: LocalisationModel, seq: PreparedSequence) -> torch.Tensor:
    """The place memory's descriptor of every frame of a prepared run ``[n, D]``."""
    with torch.no_grad():
        return model.place.describe(encode(model, seq.images, seq.camera))


@torch.no_grad()
def replay_revisits(
    model: LocalisationModel, descriptors: torch.Tensor, poses: np.ndarray, use_odom: bool
) -> np.ndarray:
    """A run's poses with the place memory's revisits as its buffers say, from the poses
    ``poses`` the model gave without them and the run's ``descriptors``
    (:func:`describe_run`): the per-frame motion does not depend on the pose (the cell
    never sees it), so re-integrating it with the revisits' pulls is exactly what a
    rollout with them gives, at the cost of the place memory alone."""
    place = model.place
    motion = torch.from_numpy(geometry.relative(poses[:-1], poses[1:]).astype(np.float32))
    valid = torch.full((1, 1), float(use_odom))
    state = place.initial_state(1)
    pose = torch.from_numpy(poses[:1].astype(np.float32))
    out = []
    for t in range(len(poses)):
        if t:
            pose = so3.compose(pose, motion[t - 1 : t])
        pose = place.revisit(state, descriptors[t : t + 1], pose, valid)
        state = place.write(state, descriptors[t : t + 1], pose)
        out.append(pose[0].double().numpy())
    return np.stack(out)


def _ates(seqs: list[PreparedSequence], estimates: list[np.ndarray]) -> list[float]:
    """ATE of each run's estimate (its first frames, as many as it has)."""
    return [
        trajectory_metrics(s.stamps[: len(e)], e, s.stamps[: len(e)], s.gt[: len(e)])["ate_rmse_m"]
        for s, e in zip(seqs, estimates, strict=True)
    ]


def _revisit_ates(model, seqs, descriptors, poses, use_odom: bool) -> list[float]:
    """Each run's ATE with the revisits replayed on ``poses`` (:func:`replay_revisits`)."""
    pairs = zip(descriptors, poses, strict=True)
    return _ates(seqs, [replay_revisits(model, d, p, use_odom) for d, p in pairs])


def choose_revisits(model: LocalisationModel, seqs: list[PreparedSequence]) -> dict:
    """Per mode, the revisit setting of :data:`REVISIT_GRID` with the lowest mean ATE on
    ``seqs`` (long validation runs with revisits), or none (gain 0) when none is better.
    With odometry a setting must also make no run worse than the model without revisits
    (:data:`REVISIT_SAFE_RATIO`; that model is never much worse than the odometry), and
    add at most :data:`REVISIT_PERFECT_ODOMETRY_M` of ATE on average to the runs replayed
    with perfect odometry (their true motion). Images only there is no odometry to stay
    close to, and every setting helps on average (docs/benchmarks.md). Sets the buffers;
    returns the trials."""
    place = model.place
    place.loop_min_age.fill_(REVISIT_MIN_AGE)
    descriptors = [describe_run(model, s) for s in seqs]
    chosen, trials = [], []
    for mode, use_odom in enumerate((True, False)):
        place.loop_gain.zero_()
        plain = rollout_runs(model, seqs, use_odom)
        without = _ates(seqs, list(plain))
        best = (float(np.mean(without)), (0.95, 0.0, 0.0))
        trials.append({"odometry": use_odom, "loop_gain": 0.0, "ate_m": best[0]})
        for setting in REVISIT_GRID:
            named = dict(zip(REVISIT_BUFFERS, setting, strict=True))
            for name, value in named.items():
                getattr(place, name)[mode] = value
            ates = _revisit_ates(model, seqs, descriptors, list(plain), use_odom)
            worst = max(a / w for a, w in zip(ates, without, strict=True))
            trial = {"odometry": use_odom, **named, "ate_m": float(np.mean(ates))}
            trial |= {"worst_ratio_to_without": worst, "per_run_ate_m": ates}
            safe = True
            if use_odom:
                perfect = _revisit_ates(
                    model, seqs, descriptors, [s.gt[: plain.shape[1]] for s in seqs], True
                )
                trial |= {"perfect_odometry_ate_m": float(np.mean(perfect))}
                trial |= {"perfect_odometry_worst_ate_m": max(perfect)}
                safe = (
                    worst <= REVISIT_SAFE_RATIO and np.mean(perfect) <= REVISIT_PERFECT_ODOMETRY_M
                )
            trials.append(trial)
            if safe and np.mean(ates) < best[0]:
                best = (float(np.mean(ates)), setting)
        chosen.append(best[1])
        place.loop_gain.zero_()
    for name, column in zip(REVISIT_BUFFERS, zip(*chosen, strict=True), strict=True):
        getattr(place, name).copy_(torch.tensor(column))
    return {
        "loop_min_age": REVISIT_MIN_AGE,
        **{name: getattr(place, name).tolist() for name in REVISIT_BUFFERS},
        "loop_far_m": float(place.loop_far),
        "runs": len(seqs),
        "trials": trials,
    }


def run(args) -> int:
    """``latent_memory_train place``: add a trained, calibrated place memory to a
    checkpoint (everything else kept) and write the result as a new checkpoint. Without
    ``--data`` and ``--val`` the checkpoint's place memory is kept as it is and only the
    revisits are chosen again (``--revisit-val``)."""
    if (args.data is None) != (args.val is None):
        raise SystemExit("place: give --data and --val together (or neither, with --revisit-val)")
    retrain = args.data is not None
    if not retrain and args.revisit_val is None:
        raise SystemExit("place: without --data and --val there is nothing to do but --revisit-val")
    data = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    config = ModelConfig(**data["model_config"])
    if retrain:
        config.place_slots, config.place_dim = args.slots, args.dim
    elif not config.place_slots:
        raise SystemExit(f"place: {args.checkpoint} has no place memory to choose revisits for")
    model = LocalisationModel(config)
    missing = model.load_state_dict(data["model"], strict=not retrain).missing_keys
    unexpected = [k for k in missing if not k.startswith("place.")]
    if unexpected:
        raise ValueError(f"{args.checkpoint} does not fit the model: {unexpected[:8]} missing")
    torch.set_num_threads(args.threads)
    model.eval().requires_grad_(False)
    measured: dict = {}
    if retrain:
        model.place.requires_grad_(True)
        train = [views_of(model, s.path, args.every) for s in find_sources(args.data)]
        val = [views_of(model, s.path) for s in find_sources([args.val])]
        measured["history"] = train_descriptors(model, train, args.steps, seed=args.seed)
        measured |= calibrate(model, val)
    if args.revisit_val is not None:
        long_runs = load_prepared(
            find_sources(args.revisit_val), model.config.image_width, model.config.image_height
        )
        measured["revisits"] = choose_revisits(model, long_runs)
    model.requires_grad_(True)
    ckpt = Checkpoint(config, TrainConfig(**data["train_config"]), step=data["step"])
    ckpt.history = [*data["history"], {"place": measured}]
    save_checkpoint(args.out, model, None, ckpt)
    revisits = measured.get("revisits", {})
    summary = {k: v for k, v in measured.items() if k not in ("trials", "history", "revisits")}
    if revisits:
        summary["revisits"] = {k: v for k, v in revisits.items() if k != "trials"}
    print(json.dumps(summary, indent=1))
    for t in [*measured.get("trials", []), *revisits.get("trials", [])]:
        print(json.dumps(t))
    return 0
