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
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from latent_memory_ros import geometry
from latent_memory_ros.evaluation import query_errors, query_recall, trajectory_metrics
from latent_memory_training.data.prepare import PreparedSequence
from latent_memory_training.models.student import LocalisationModel
from latent_memory_training.training.fit import _normalise, load_model

KEYS = ("ate_rmse_m", "ate_sim3_rmse_m", "rpe_trans_m", "rpe_rot_deg")
CHUNK = 64


@torch.no_grad()
def evaluate_model(
    model: LocalisationModel,
    seqs: list[PreparedSequence],
    use_odom: bool,
    query_every: int = 150,
    queries: int = 8,
    query_min_gap: int = 30,
    seed: int = 0,
) -> dict:
    """Roll every run from its first frame; trajectory metrics and query errors."""
    model.eval()
    rng = np.random.default_rng(seed)
    n = min(len(s) for s in seqs)
    b = len(seqs)
    odom = np.stack([s.odom[:n] for s in seqs])
    if not use_odom:
        odom[:] = (0, 0, 0, 0, 0, 0, 1, 0)
    stamps = np.stack([s.stamps[:n] for s in seqs])
    dt = np.diff(stamps, axis=1, prepend=stamps[:, :1])
    state = model.initial_state(b)
    poses = []
    q_pred, q_true, q_traj = [], [], []
    for t0 in range(0, n, CHUNK):
        t1 = min(n, t0 + CHUNK)
        obs = {
            "image": _normalise(torch.from_numpy(np.stack([s.images[t0:t1] for s in seqs]))),
            "odom": torch.from_numpy(odom[:, t0:t1]).float(),
            "dt": torch.from_numpy(dt[:, t0:t1, None]).float(),
            "cues": torch.from_numpy(np.stack([s.cues[t0:t1] for s in seqs])).float(),
        }
        # Step to each query time inside the chunk, query, go on.
        times = [t for t in range(t0, t1) if t > 0 and t % query_every == 0]
        edges = [t0, *[t + 1 for t in times], t1]
        chunk_poses = []
        for a, z in zip(edges[:-1], edges[1:], strict=True):
            if z <= a:
                continue
            state, out = model.rollout(state, {k: v[:, a - t0 : z - t0] for k, v in obs.items()})
            chunk_poses.append(out["pose"].double().numpy())
            t = z - 1
            if t in times and t >= query_min_gap:
                est_now = np.concatenate([*poses, *chunk_poses], axis=1)
                for _ in range(queries):
                    q = rng.integers(0, t - query_min_gap + 1, size=b)
                    image = np.stack([s.images[qi] for s, qi in zip(seqs, q, strict=True)])
                    pose, _ = model.query(state, _normalise(torch.from_numpy(image[:, None]))[:, 0])
                    q_pred.append(pose.double().numpy())
                    q_true.append(
                        np.stack(
                            [
                                geometry.relative(s.gt[t], s.gt[qi])
                                for s, qi in zip(seqs, q, strict=True)
                            ]
                        )
                    )
                    q_traj.append(
                        np.stack(
                            [
                                geometry.relative(est_now[i, t], est_now[i, qi])
                                for i, qi in enumerate(q)
                            ]
                        )
                    )
        poses.append(np.concatenate(chunk_poses, axis=1))
    est = np.concatenate(poses, axis=1)
    rows = [
        trajectory_metrics(s.stamps[:n], est[i], s.stamps[:n], s.gt[:n]) for i, s in enumerate(seqs)
    ]
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


def gap_closed(undistilled: float, distilled: float, teacher: float) -> float:
    return float((undistilled - distilled) / (undistilled - teacher))


def run(
    checkpoints: dict[str, Path],
    seqs: list[PreparedSequence],
    out: Path,
    query_every: int = 150,
    query_min_gap: int = 30,
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
        if previous.get("checkpoint") == str(path) and previous.get("step") == data["step"]:
            results["models"][name] = previous
            continue
        entry = {"checkpoint": str(path), "cell": model.config.cell, "step": data["step"]}
        entry["teacher"] = data.get("teacher")
        entry["distill"] = {
            k: data["train_config"].get(k)
            for k in ("distill_weight", "distill_distance", "distill_schedule", "init_from_teacher")
        }
        for mode, use_odom in (("odom", True), ("images", False)):
            entry[mode] = evaluate_model(model, seqs, use_odom, query_every, 8, query_min_gap)
            print(
                name,
                mode,
                json.dumps({k: entry[mode].get(k) for k in (*KEYS, "query")}),
                flush=True,
            )
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
    head = "| model | cell | steps | mode | ATE SE(3) m | ATE Sim(3) m | RPE m | RPE ° | query ≤0.25 m,5° | query ≤0.5 m,10° |"
    lines = [head, "|" + " --- |" * 10]
    for name, e in results["models"].items():
        for mode in ("odom", "images"):
            r = e[mode]
            q = r.get("query", {})
            cells = [
                name, e["cell"], str(e["step"]), "odometry + images" if mode == "odom" else "images only",
                f"{r['ate_rmse_m']:.3f}", f"{r['ate_sim3_rmse_m']:.3f}", f"{r['rpe_trans_m']:.4f}",
                f"{r['rpe_rot_deg']:.3f}",
                f"{q.get('recall_0.25m_5deg', float('nan')):.3f}",
                f"{q.get('recall_0.5m_10deg', float('nan')):.3f}",
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(results: dict, distilled: str) -> dict:
    """What a shipped distilled model's ``model.json`` carries from a ``compare`` run:
    the gap closed by the distilled model ``distilled`` and, per model of the same-budget
    comparison, ATE, RPE and query recall in both modes."""
    if distilled not in results.get("gap_closed", {}):
        raise KeyError(
            f"{distilled!r} has no gap_closed in the comparison (it needs a student, a "
            f"teacher and a model named distilled*; have {sorted(results['models'])})"
        )
    metrics = (*KEYS, "query")
    return {
        "distilled": distilled,
        "gap_closed": results["gap_closed"][distilled],
        "sequences": results["sequences"],
        "frames": results["frames"],
        "models": {
            name: {"cell": e["cell"], "step": e["step"]}
            | {
                mode: {k: e[mode][k] for k in metrics if k in e[mode]}
                for mode in ("odom", "images")
            }
            for name, e in results["models"].items()
        },
    }
