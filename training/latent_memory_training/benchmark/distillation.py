"""Distillation on the held-out split: the full-history reference, the bottleneck teacher,
the student trained without and with distillation, side by side.

Every model runs in PyTorch (the reference and the teacher are not exportable: their
state grows), the whole held-out set as one batch from each run's first frame, with the
wheel odometry and with images only. Per model: ATE (SE(3) and Sim(3)) and RPE from evo
(:func:`latent_memory_ros.evaluation.trajectory_metrics`, averaged over runs), and query
recall: every ``query_every`` frames each run is asked where the cameras of
``queries`` earlier frames (at least ``query_min_gap`` back; revisits make some of them
near) are, seen from the current camera; recall is the share within (0.25 m, 5°) and
(0.5 m, 10°). Two references put the recall in context: ``identity`` (answer "here":
how often the earlier camera is trivially close) and ``trajectory`` (the model's own
trajectory between the two frames: what a model that knew which frame the query was
would answer). The gap closed by distillation is
``(ATE_undistilled - ATE_distilled) / (ATE_undistilled - ATE_teacher)``.

Per mode, :func:`evaluate_modes` adds the memory ablation (``reset``: the same runs with
the cell's state, ``model.cell.initial_state``, restored before every step while the
pose and the odometry-drift filter carry on; ``memory_gain`` = 1 - ATE carried / ATE
reset) and ``ratio``: each run's ATE over the odometry's (with odometry) or no motion's
(images only), with the worst run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from latent_memory_ros import geometry
from latent_memory_ros.evaluation import (
    memory_gain,
    no_motion_metrics,
    query_errors,
    query_recall,
    ratio_to_baseline,
)
from latent_memory_training.data.prepare import PreparedSequence
from latent_memory_training.data.streams import normalise
from latent_memory_training.models.student import LocalisationModel
from latent_memory_training.training.checkpoint import load_model
from latent_memory_training.training.rollout import odometry_baseline, rollout_runs, run_metrics

KEYS = ("ate_rmse_m", "ate_sim3_rmse_m", "rpe_trans_m", "rpe_rot_deg")
MODES = (("odom", True), ("images", False))
BASELINES = {"odom": "odometry", "images": "no_motion"}


@torch.no_grad()
def evaluate_model(
    model: LocalisationModel,
    seqs: list[PreparedSequence],
    use_odom: bool,
    query_every: int = 150,
    queries: int = 8,
    query_min_gap: int = 30,
    seed: int = 0,
    reset_memory: bool = False,
) -> dict:
    """Roll every run from its first frame; trajectory metrics and query errors. With
    ``reset_memory`` the cell's state is its initial one before every step (the pose and
    the bias filter carry on)."""
    rng = np.random.default_rng(seed)
    n = min(len(s) for s in seqs)
    b = len(seqs)
    camera = torch.from_numpy(np.stack([s.camera for s in seqs])).float()
    q_pred, q_true, q_traj = [], [], []

    def ask(t: int, state: dict, est_now: np.ndarray) -> None:
        for _ in range(queries):
            q = rng.integers(0, t - query_min_gap + 1, size=b)
            image = np.stack([s.images[qi] for s, qi in zip(seqs, q, strict=True)])
            pose, _ = model.query(state, normalise(torch.from_numpy(image[:, None]))[:, 0], camera)
            q_pred.append(pose.double().numpy())
            pairs = zip(seqs, q, strict=True)
            q_true.append(np.stack([geometry.relative(s.gt[t], s.gt[qi]) for s, qi in pairs]))
            q_traj.append(
                np.stack(
                    [geometry.relative(est_now[i, t], est_now[i, qi]) for i, qi in enumerate(q)]
                )
            )

    stops = tuple(t for t in range(query_every, n, query_every) if t >= query_min_gap)
    est = rollout_runs(model, seqs, use_odom, reset_memory, stops, ask if queries else None)
    rows = run_metrics(seqs, est)
    result = {k: float(np.mean([r[k] for r in rows])) for k in KEYS}
    result["per_sequence_ate_m"] = [float(r["ate_rmse_m"]) for r in rows]
    if q_pred:
        pred, true, traj = (np.concatenate(x) for x in (q_pred, q_true, q_traj))
        te, re = query_errors(pred, true)
        result["queries"] = int(len(te))
        result["query"] = query_recall(te, re) | {
            "median_m": float(np.median(te)),
            "median_deg": float(np.median(re)),
        }
        identity = np.broadcast_to(np.array([0, 0, 0, 0, 0, 0, 1.0]), true.shape)
        result["query_identity"] = query_recall(*query_errors(identity, true))
        result["query_trajectory"] = query_recall(*query_errors(traj, true))
    return result


def evaluate_modes(
    model: LocalisationModel,
    seqs: list[PreparedSequence],
    query_every: int = 150,
    query_min_gap: int = 30,
    ablation: bool = True,
) -> dict:
    """Both modes (``odom``, ``images``) of :func:`evaluate_model`, each with its
    per-run ``ratio`` to its baseline (integrating the odometry; not moving) and, with
    ``ablation``, the same run with the memory reset before every frame (``reset``) and
    the ``memory_gain``."""
    n = min(len(s) for s in seqs)
    names = [s.name for s in seqs]
    odometry = odometry_baseline(seqs)["per_sequence_ate_m"]
    still = [no_motion_metrics(s.stamps[:n], s.stamps[:n], s.gt[:n])["ate_rmse_m"] for s in seqs]
    baselines = {"odom": odometry, "images": still}
    out = {}
    for mode, use_odom in MODES:
        r = evaluate_model(model, seqs, use_odom, query_every, query_min_gap=query_min_gap)
        r["ratio"] = ratio_to_baseline(
            names, r["per_sequence_ate_m"], baselines[mode], BASELINES[mode]
        )
        if ablation:
            reset = evaluate_model(model, seqs, use_odom, queries=0, reset_memory=True)
            r["reset"] = {k: reset[k] for k in (*KEYS, "per_sequence_ate_m")}
            r["memory_gain"] = memory_gain(r["ate_rmse_m"], reset["ate_rmse_m"])
        out[mode] = r
    return out


def gap_closed(undistilled: float, distilled: float, teacher: float) -> float:
    return float((undistilled - distilled) / (undistilled - teacher))


def run(
    checkpoints: dict[str, Path],
    seqs: list[PreparedSequence],
    out: Path,
    query_every: int = 150,
    query_min_gap: int = 30,
    ablation: bool = True,
) -> dict:
    torch.set_num_threads(2)
    results: dict = {"sequences": len(seqs), "frames": min(len(s) for s in seqs), "models": {}}
    out = Path(out)
    # Models already scored into ``out`` on the same data (same checkpoint file, same
    # step) are kept, so a table can grow as its models finish training.
    done = json.loads(out.read_text()) if out.is_file() else {}
    same_data = {k: done.get(k) for k in ("sequences", "frames")} == {
        k: results[k] for k in ("sequences", "frames")
    }
    for name, path in checkpoints.items():
        model, data = load_model(path)
        previous = done.get("models", {}).get(name, {}) if same_data else {}
        scored = "ratio" in previous.get("odom", {}) and (
            not ablation or "memory_gain" in previous["odom"]
        )
        if scored and (previous["checkpoint"], previous["step"]) == (str(path), data["step"]):
            results["models"][name] = previous
            continue
        entry = {"checkpoint": str(path), "cell": model.config.cell, "step": data["step"]}
        entry["teacher"] = data.get("teacher")
        entry["distill"] = {
            k: data["train_config"].get(k)
            for k in ("distill_weight", "distill_distance", "distill_schedule", "init_from_teacher")
        }
        entry |= evaluate_modes(model, seqs, query_every, query_min_gap, ablation)
        for mode, _ in MODES:
            shown = (*KEYS, "query", "memory_gain", "ratio")
            print(name, mode, json.dumps({k: entry[mode].get(k) for k in shown}), flush=True)
        results["models"][name] = entry
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
    m = results["models"]
    if {"student", "teacher"} <= set(m):
        # Every model named distilled* against the same student and teacher.
        results["gap_closed"] = {
            name: {
                mode: gap_closed(
                    m["student"][mode]["ate_rmse_m"],
                    m[name][mode]["ate_rmse_m"],
                    m["teacher"][mode]["ate_rmse_m"],
                )
                for mode in ("odom", "images")
            }
            for name in m
            if name.startswith("distilled")
        }
    out.write_text(json.dumps(results, indent=2))
    return results


def table(results: dict) -> str:
    head = (
        "| model | cell | steps | mode | ATE SE(3) m | ATE Sim(3) m | RPE m | RPE ° "
        "| ATE memory reset m | memory gain | ATE / baseline mean, worst (run) | runs worse "
        "| query ≤0.25 m,5° (here) | query ≤0.5 m,10° (here) |"
    )
    lines = [head, "|" + " --- |" * 14]
    nan = float("nan")
    for name, e in results["models"].items():
        for mode, _ in MODES:
            r = e[mode]
            q, here = r.get("query", {}), r.get("query_identity", {})
            ratio = r.get("ratio", {})
            cells = [
                name, e["cell"], str(e["step"]), "odometry + images" if mode == "odom" else "images only",
                f"{r['ate_rmse_m']:.3f}", f"{r['ate_sim3_rmse_m']:.3f}", f"{r['rpe_trans_m']:.4f}",
                f"{r['rpe_rot_deg']:.3f}",
                f"{r.get('reset', {}).get('ate_rmse_m', nan):.3f}",
                f"{r.get('memory_gain', nan):.3f}",
                f"{ratio.get('mean', nan):.2f}, {ratio.get('worst', nan):.2f} "
                f"({ratio.get('worst_sequence', '—')}) vs {ratio.get('baseline', '—')}",
                f"{ratio.get('worse', '—')}/{ratio.get('sequences', '—')}",
                *(
                    f"{q.get(k, nan):.3f} ({here.get(k, nan):.3f})"
                    for k in ("recall_0.25m_5deg", "recall_0.5m_10deg")
                ),
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(results: dict, distilled: str) -> dict:
    """What a shipped distilled model's ``model.json`` carries from a ``compare`` run:
    the gap closed by the distilled model ``distilled`` and, per model of the same-budget
    comparison, ATE, RPE, query recall (and answering "here"), the memory ablation
    (``reset``, ``memory_gain``) and the per-run ``ratio`` to the baseline in both modes."""
    if distilled not in results.get("gap_closed", {}):
        raise KeyError(
            f"{distilled!r} has no gap_closed in the comparison (it needs a student, a "
            f"teacher and a model named distilled*; have {sorted(results['models'])})"
        )
    metrics = (*KEYS, "query", "query_identity", "reset", "memory_gain", "ratio")
    return {
        "distilled": distilled,
        "gap_closed": results["gap_closed"][distilled],
        "sequences": results["sequences"],
        "frames": results["frames"],
        "models": {
            name: {"cell": e["cell"], "step": e["step"]}
            | {mode: {k: e[mode][k] for k in metrics if k in e[mode]} for mode, _ in MODES}
            for name, e in results["models"].items()
        },
    }
