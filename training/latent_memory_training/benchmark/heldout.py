"""Held-out accuracy of an exported model beside the baselines a user would compare with.

Every sequence runs through the same :class:`StudentRuntime` the node uses (ONNX, cues,
carried state), with and without odometry, next to integrating the wheel odometry and a
no-motion estimate; each also on its left-right mirrored copy, so that a learned constant
rotation offset cannot pass for accuracy. Metrics come from evo through
:func:`latent_memory_ros.evaluation.trajectory_metrics`.

Per-run honesty: each run's model ATE over its baseline's (the odometry's with odometry,
no motion's images only), with the worst run and how many are worse than the baseline.
The memory ablation: each model mode also runs with the memory cell's state reset before
every frame (``*_reset``; ``StudentRuntime.run(reset_memory=True)``), and the memory gain
is ``1 - ATE carried / ATE reset``. Queries: once a run is done, it is asked where the
cameras of earlier frames are (:func:`latent_memory_ros.evaluation.query_indices`), with
the memory carried and reset, beside answering "here" (``identity``).
"""

from __future__ import annotations

import json
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from latent_memory_ros import geometry
from latent_memory_ros.cues import CUE_HEADING, CUE_ROTATION, CUE_VALID, sequence_cues
from latent_memory_ros.evaluation import (
    calibration_errors,
    calibration_summary,
    memory_gain,
    query_errors,
    query_indices,
    query_scores,
    ratio_to_baseline,
    seen_reliability,
    trajectory_metrics,
)
from latent_memory_ros.runtime import RunResult, StudentRuntime
from latent_memory_training.data.generate import mirror
from latent_memory_training.data.prepare import odometry_motions
from latent_memory_training.data.sequence import Sequence

METHODS = ("model_odom", "model_images", "odometry", "classical_vo", "no_motion")
MODEL_METHODS = ("model_odom", "model_images")
RESET_METHODS = tuple(f"{m}_reset" for m in MODEL_METHODS)  # the memory ablation
BASELINES = {"model_odom": "odometry", "model_images": "no_motion"}
KEYS = ("ate_rmse_m", "ate_sim3_rmse_m", "rpe_trans_m", "rpe_rot_deg")
QUERY_EVERY = 30
QUERY_MIN_GAP = 30
OLD_QUERY = 1000  # frames back: queries about places this old are also scored alone
SEEN_RIGHT = (0.5, 10.0)  # m, deg: an answer "seen" should predict is this close


def run_model(
    rt: StudentRuntime, seq: Sequence, use_odom: bool, reset_memory: bool = False
) -> RunResult:
    frames = zip(seq.stamps, seq.images, strict=True)
    odom = seq.odom_base if use_odom else None
    return rt.run(frames, odom, seq.base_to_camera, reset_memory, seq.intrinsics)


def classical_vo(seq: Sequence, odom: np.ndarray) -> np.ndarray:
    """What a user would run instead of a learned model: monocular visual odometry with
    the scale from the wheels. Corners tracked frame to frame (Lucas-Kanade) give the
    rotation and the heading (:mod:`latent_memory_ros.cues`, fitted jointly: the
    essential matrix is degenerate at these baselines); the distance travelled is the
    wheel odometry's. Frames without a vision estimate take the odometry's motion."""
    cue = sequence_cues(seq.images, seq.intrinsics).astype(np.float64)
    steps = odom.copy()
    ok = cue[:, CUE_VALID] > 0
    distance = np.linalg.norm(odom[:, :3], axis=1, keepdims=True)
    steps[ok, :3] = cue[ok, CUE_HEADING] * distance[ok]
    steps[ok, 3:] = geometry.rotvec_to_quat(cue[ok, CUE_ROTATION])
    return geometry.integrate(steps)


def evaluate_sequence(
    rt: StudentRuntime,
    seq: Sequence,
    ablation: bool = True,
    query_every: int = QUERY_EVERY,
    query_min_gap: int = QUERY_MIN_GAP,
) -> dict:
    """Metrics of every method on one sequence (with ``ablation`` also ``*_reset``, the
    model with its memory reset before every frame); ``ratio`` (model ATE over its
    baseline's), ``memory_gain`` and ``query`` (per model run and ``identity``). Raw
    arrays for pooling: ``step_ms`` (the model's step times), ``calibration_errors``
    (per model method, see :func:`latent_memory_ros.evaluation.calibration_errors`) and
    ``query_errors`` (translation and rotation errors per run)."""
    gt, stamps = seq.gt_camera, seq.stamps
    asked = query_indices(len(seq), query_every, query_min_gap) if rt.supports_query else []
    queries: dict = {}  # per method: translation and rotation errors, and "seen" (or NaN)
    if len(asked):
        true = geometry.relative(np.broadcast_to(gt[-1], (len(asked), 7)), gt[asked])
        here = query_errors(np.broadcast_to(geometry.IDENTITY, true.shape), true)
        queries["identity"] = (*here, np.full(len(asked), np.nan))
    estimates = {}
    step_ms: list[float] = []
    calibration = {}
    for name, use_odom in (("model_odom", True), ("model_images", False)):
        for reset in (False, True) if ablation else (False,):
            ran = run_model(rt, seq, use_odom, reset_memory=reset)
            run_name = f"{name}_reset" if reset else name
            estimates[run_name] = ran.poses
            if queries:  # asked at the last frame, from the memory this run left
                answers = [rt.query(seq.images[i]) for i in asked]
                seen = [np.nan if a.seen is None else a.seen for a in answers]
                errors = query_errors(np.stack([a.pose for a in answers]), true)
                queries[run_name] = (*errors, np.array(seen))
            if not reset:
                step_ms += list(ran.step_ms)
                calibration[name] = calibration_errors(gt, ran.poses, ran.log_var)
    odom = odometry_motions(seq)[:, :7].astype(np.float64)
    estimates["odometry"] = geometry.integrate(odom)
    estimates["classical_vo"] = classical_vo(seq, odom)
    estimates["no_motion"] = np.tile(geometry.IDENTITY, (len(seq), 1))
    row = {m: trajectory_metrics(stamps, est, stamps, gt) for m, est in estimates.items()}
    row["ratio"] = {
        m: row[m]["ate_rmse_m"] / row[base]["ate_rmse_m"] for m, base in BASELINES.items()
    }
    if ablation:
        row["memory_gain"] = {
            m: memory_gain(row[m]["ate_rmse_m"], row[f"{m}_reset"]["ate_rmse_m"])
            for m in MODEL_METHODS
        }
    if queries:
        row["query"] = {m: query_scores(*e[:2]) for m, e in queries.items()}
    row["query_age"] = len(seq) - 1 - np.asarray(asked)
    row["step_ms"] = step_ms
    row["calibration_errors"] = calibration
    row["query_errors"] = queries
    return row


def _evaluate_file(job: tuple[Path, Path, bool, dict]) -> list[dict]:
    model_dir, path, mirrored, options = job
    # One thread per worker: the workers are the parallelism.
    rt = StudentRuntime(model_dir, providers=["CPUExecutionProvider"], intra_op_threads=1)
    seq = Sequence.load(path)
    rows = []
    for variant, s in [("original", seq)] + ([("mirrored", mirror(seq))] if mirrored else []):
        row = evaluate_sequence(rt, s, **options)
        times = row.pop("step_ms")
        errors = row.pop("calibration_errors")
        answer_errors = row.pop("query_errors")
        ages = row.pop("query_age")
        rows.append(
            {
                "sequence": s.name,
                "variant": variant,
                "frames": len(s),
                **row,
                "step_ms_p50": float(np.percentile(times, 50)),
                "calibration": {m: calibration_summary(**e) for m, e in errors.items()},
                # Raw normalised errors and sigmas, and query errors: pooled over
                # sequences by evaluate(), which removes them before the JSON is written.
                "_calibration_errors": errors,
                "_query_errors": answer_errors,
                "_query_age": ages,
            }
        )
    return rows


def pooled_calibration(errors: list[dict]) -> dict:
    """One :func:`calibration_summary` of several runs' :func:`calibration_errors`: the
    normalised errors and sigmas are pooled, not the per-run shares averaged."""
    windows = sorted({k for e in errors for k in e["normalised"]})
    return calibration_summary(
        normalised={
            k: np.concatenate([e["normalised"][k] for e in errors if k in e["normalised"]])
            for k in windows
        },
        sigma_trans_m=np.concatenate([e["sigma_trans_m"] for e in errors]),
        sigma_rot_rad=np.concatenate([e["sigma_rot_rad"] for e in errors]),
    )


def summarise(rows: list[dict]) -> dict:
    """One variant's summary over its sequences' rows: the mean metrics of every method
    run, ``ratio`` (per model mode, :func:`latent_memory_ros.evaluation.ratio_to_baseline`),
    ``memory_gain`` (of the mean ATEs) and ``query`` (errors pooled over the sequences)."""
    methods = [m for m in (*METHODS, *RESET_METHODS) if m in rows[0]]
    summary: dict = {m: {k: float(np.mean([r[m][k] for r in rows])) for k in KEYS} for m in methods}
    summary["sequences"] = len(rows)
    names = [r["sequence"] for r in rows]
    summary["ratio"] = {
        m: ratio_to_baseline(
            names, [r[m]["ate_rmse_m"] for r in rows], [r[b]["ate_rmse_m"] for r in rows], b
        )
        for m, b in BASELINES.items()
    }
    if RESET_METHODS[0] in summary:
        summary["memory_gain"] = {
            m: memory_gain(summary[m]["ate_rmse_m"], summary[f"{m}_reset"]["ate_rmse_m"])
            for m in MODEL_METHODS
        }
    if rows[0]["_query_errors"]:
        pooled = {
            m: [np.concatenate([r["_query_errors"][m][i] for r in rows]) for i in range(3)]
            for m in rows[0]["_query_errors"]
        }
        summary["query"] = {m: query_scores(t, r) for m, (t, r, _) in pooled.items()}
        old = np.concatenate([r["_query_age"] for r in rows]) >= OLD_QUERY
        if old.any():  # frames this many steps back (issue 10: "also for frames 1,000+")
            summary[f"query_{OLD_QUERY}_old"] = {
                m: query_scores(t[old], r[old]) for m, (t, r, _) in pooled.items()
            }
        summary["query_seen"] = {
            m: seen_reliability(seen, (t < SEEN_RIGHT[0]) & (r < SEEN_RIGHT[1]))
            for m, (t, r, seen) in pooled.items()
            if np.isfinite(seen).all()
        }
    return summary


def evaluate(
    model_dir: Path,
    paths: list[Path],
    mirrored: bool = True,
    jobs: int = 1,
    ablation: bool = True,
    query_every: int = QUERY_EVERY,
    query_min_gap: int = QUERY_MIN_GAP,
) -> dict:
    """Every sequence of ``paths`` (and its mirrored copy) through the model and the
    baselines (:func:`evaluate_sequence`); ``summary`` and ``calibration`` per variant,
    and the rows of ``per_sequence``."""
    options = {"ablation": ablation, "query_every": query_every, "query_min_gap": query_min_gap}
    work = [(Path(model_dir), Path(p), mirrored, options) for p in paths]
    per_sequence = []
    with get_context("spawn").Pool(jobs) as pool:
        for rows in tqdm(pool.imap(_evaluate_file, work), total=len(work), desc="held-out"):
            per_sequence += rows
    summary, calibration = {}, {}
    for variant in ("original", "mirrored"):
        rows = [r for r in per_sequence if r["variant"] == variant]
        if rows:
            summary[variant] = summarise(rows)
            calibration[variant] = {
                m: pooled_calibration([r["_calibration_errors"][m] for r in rows])
                for m in MODEL_METHODS
            }
            calibration[variant]["sequences"] = len(rows)
    for r in per_sequence:
        del r["_calibration_errors"], r["_query_errors"], r["_query_age"]
    return {
        "model": str(model_dir),
        "summary": summary,
        "calibration": calibration,
        "per_sequence": per_sequence,
    }


LABELS = {
    "model_odom": "student, images + odometry",
    "model_images": "student, images only",
    "model_odom_reset": "student, images + odometry, memory reset every frame",
    "model_images_reset": "student, images only, memory reset every frame",
    "odometry": "integrating the wheel odometry",
    "classical_vo": "classical VO (OpenCV tracks, wheel scale)",
    "no_motion": "no motion (fixed pose)",
}


def markdown_table(result: dict) -> str:
    lines = [
        "| variant | method | ATE SE(3) (m) | ATE Sim(3) (m) | RPE trans (m/frame) | RPE rot (°/frame) |",
        "|---|---|---|---|---|---|",
    ]
    for variant, methods in result["summary"].items():
        for m in (*METHODS, *RESET_METHODS):
            if m not in methods:
                continue
            v = methods[m]
            lines.append(
                f"| {variant} ({methods['sequences']} seq) | {LABELS[m]} | {v['ate_rmse_m']:.3f} | "
                f"{v['ate_sim3_rmse_m']:.3f} | {v['rpe_trans_m']:.4f} | {v['rpe_rot_deg']:.3f} |"
            )
    return "\n".join(lines)


def memory_table(result: dict) -> str:
    """Per model mode: ATE with the memory carried and reset, the memory gain, the
    per-run ratio to the baseline (mean, worst and its run, runs worse than the
    baseline), and query recall carried / reset / answering "here" (markdown)."""
    lines = [
        "| variant | student | ATE carried (m) | ATE reset (m) | memory gain | baseline "
        "| ratio mean | ratio worst (run) | runs worse | query recall 0.25 m,5° "
        "carried / reset / here | query recall 0.5 m,10° carried / reset / here |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value: float | None, digits: int = 3) -> str:
        return "—" if value is None else f"{value:.{digits}f}"

    for variant, s in result["summary"].items():
        for m in MODEL_METHODS:
            reset = s.get(f"{m}_reset", {}).get("ate_rmse_m")
            ratio = s["ratio"][m]
            query = s.get("query", {})
            recalls = [
                " / ".join(fmt(query.get(q, {}).get(key)) for q in (m, f"{m}_reset", "identity"))
                for key in ("recall_0.25m_5deg", "recall_0.5m_10deg")
            ]
            lines.append(
                f"| {variant} | {LABELS[m].removeprefix('student, ')} | "
                f"{fmt(s[m]['ate_rmse_m'])} | {fmt(reset)} | "
                f"{fmt(s.get('memory_gain', {}).get(m))} | {LABELS[ratio['baseline']]} | "
                f"{fmt(ratio['mean'], 2)} | {fmt(ratio['worst'], 2)} ({ratio['worst_sequence']}) | "
                f"{ratio['worse']}/{ratio['sequences']} | {recalls[0]} | {recalls[1]} |"
            )
    return "\n".join(lines)


def calibration_table(result: dict) -> str:
    """Shares of the model's motion errors inside 1 and 2 predicted sigma, pooled over
    the sequences, and its per-frame sigma percentiles (markdown)."""
    labels = {"model_odom": "images + odometry", "model_images": "images only"}
    lines = [
        "| variant | student | window (frames) | part | inside 1σ | inside 2σ |"
        " rms e/σ | median scale |",
        "|---|---|---|---|---|---|---|---|",
    ]
    sigmas = [
        "| variant | student | σ trans p50 / p90 / p99 / p99.9 (mm) |"
        " σ rot p50 / p90 / p99 / p99.9 (mrad) |",
        "|---|---|---|---|",
    ]
    gaussian = None
    for variant, methods in result.get("calibration", {}).items():
        for m in MODEL_METHODS:
            c = methods[m]
            gaussian = c["gaussian"]
            for k, w in c["windows"].items():
                for part in ("translation", "rotation"):
                    v = w[part]
                    if not v["samples"]:
                        continue
                    lines.append(
                        f"| {variant} | {labels[m]} | {k} | {part} | "
                        f"{100 * v['within_1sigma']:.1f} % | {100 * v['within_2sigma']:.1f} % | "
                        f"{v['rms']:.2f} | {v['median_scale']:.2f} |"
                    )
            t = " / ".join(f"{1e3 * x:.2f}" for x in c["sigma_trans_m"].values())
            r = " / ".join(f"{1e3 * x:.3f}" for x in c["sigma_rot_rad"].values())
            sigmas.append(f"| {variant} | {labels[m]} | {t} | {r} |")
    if gaussian is None:
        return ""
    note = (
        f"Gaussian: {100 * gaussian['within_1sigma']:.1f} % inside 1σ, "
        f"{100 * gaussian['within_2sigma']:.1f} % inside 2σ"
    )
    return "\n".join([*lines, "", note, "", *sigmas])


def run(args) -> int:
    from latent_memory_training.data.prepare import find_sequences

    paths = find_sequences(args.data)
    if args.limit:
        paths = paths[: args.limit]
    result = evaluate(
        args.model,
        paths,
        mirrored=not args.no_mirror,
        jobs=args.jobs,
        ablation=not args.no_ablation,
        query_every=args.query_every,
        query_min_gap=args.query_min_gap,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(markdown_table(result))
    print()
    print(memory_table(result))
    print()
    print(calibration_table(result))
    return 0
