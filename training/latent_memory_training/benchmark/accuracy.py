"""Each memory cell trained on the same data and budget, and scored held-out.

Same encoder, heads, trainer, steps and seed for every cell; only the memory differs.
Exportable cells are exported and run through the node's runtime
(:mod:`latent_memory_training.benchmark.heldout`: ATE, RPE and the baselines on the same
sequences); the references that cannot be exported (``full``, the teacher
``bottleneck``: their state grows) are scored in PyTorch by
:func:`latent_memory_training.benchmark.distillation.evaluate_model`, which also gives
every cell's query recall. Given a teacher, a cell also trains distilled from it
(``<cell>+distill``). Every row also has the memory ablation (ATE with the cell's state
reset before every frame, ``memory_gain_*`` = 1 - carried / reset) and the per-run ratio
to the baseline (``ratio_*``: the odometry with odometry, no motion images only).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from latent_memory_training.benchmark.distillation import evaluate_model, evaluate_modes
from latent_memory_training.benchmark.heldout import METHODS, RESET_METHODS, evaluate
from latent_memory_training.data.prepare import PreparedSequence
from latent_memory_training.export.onnx_export import export_model
from latent_memory_training.models.config import ModelConfig
from latent_memory_training.training.config import TrainConfig
from latent_memory_training.training.fit import fit, load_model

KEYS = ("ate_rmse_m", "rpe_trans_m", "rpe_rot_deg")
RECALL = ("recall_0.25m_5deg", "recall_0.5m_10deg")


def cell_accuracy(
    cell: str,
    train: list[PreparedSequence],
    val: list[PreparedSequence],
    test_paths: list[Path],
    test: list[PreparedSequence],
    out_dir: Path,
    cfg: TrainConfig,
    jobs: int = 2,
    teacher: Path | None = None,
    ablation: bool = True,
) -> dict:
    """Train ``cell`` (distilled from ``teacher`` when given), score it on the held-out
    runs (``test_paths``, and the same runs prepared, ``test``) and return its row;
    ``row["checkpoint"]`` is its best checkpoint."""
    name = f"{cell}+distill" if teacher else cell
    run = out_dir / name
    if teacher:
        cfg = dataclasses.replace(cfg, distill_weight=cfg.distill_weight or 0.1)
    start = time.perf_counter()
    best = fit(train, val, run, ModelConfig(cell=cell), cfg, progress=False, teacher_path=teacher)
    train_s = time.perf_counter() - start
    model, _ = load_model(best)
    row = {
        "cell": name,
        "checkpoint": str(best),
        "train_steps": cfg.steps,
        "train_frames": cfg.steps * cfg.batch * cfg.window,
        "train_s": train_s,
        "test_sequences": len(test),
    }
    if model.cell.exportable:
        export_model(model, run / "model", name)
        summary = evaluate(run / "model", test_paths, False, jobs, ablation)["summary"]
        summary = summary["original"]
        with_odom = evaluate_model(model, test, use_odom=True)  # query recall, as below
        row["runtime"] = "onnxruntime"
    else:  # the baselines come from the exported cells' rows
        modes = evaluate_modes(model, test, ablation=ablation)
        summary = _heldout_layout(modes)
        with_odom = modes["odom"]
        row["runtime"] = "pytorch"
    row |= {f"query_{k}": with_odom["query"][k] for k in RECALL}
    row |= {f"query_identity_{k}": with_odom["query_identity"][k] for k in RECALL}
    row |= {
        f"{method}_{k}": summary[method][k]
        for method in (*METHODS, *RESET_METHODS)
        if method in summary
        for k in KEYS
    }  # fmt: skip
    row |= {f"memory_gain_{m}": gain for m, gain in summary.get("memory_gain", {}).items()}
    row |= {
        f"ratio_{k}_{m}": ratio[k]
        for m, ratio in summary["ratio"].items()
        for k in ("mean", "worst", "worst_sequence", "worse")
    }
    return row


def _heldout_layout(modes: dict) -> dict:
    """:func:`evaluate_modes`' results laid out as a held-out summary's: ``model_odom``,
    ``model_images``, their ``*_reset``, ``memory_gain`` and ``ratio`` per method."""
    summary: dict = {"ratio": {}, "memory_gain": {}}
    for mode, method in (("odom", "model_odom"), ("images", "model_images")):
        r = modes[mode]
        summary[method] = r
        summary["ratio"][method] = r["ratio"]
        if "reset" in r:
            summary[f"{method}_reset"] = r["reset"]
            summary["memory_gain"][method] = r["memory_gain"]
    return summary


def accuracy_table(rows: list[dict]) -> str:
    lines = [
        "| cell | scored in | train steps (frames) | train time | ATE with odometry (m) "
        "| ATE images only (m) | RPE rot with odometry (°/frame) "
        "| ATE memory reset, with odometry / images only (m) "
        "| memory gain with odometry / images only "
        "| worst run / odometry (runs worse) | worst run / no motion (runs worse) "
        "| query recall 0.25 m,5° / 0.5 m,10° (here) | odometry ATE (m) "
        "| classical VO ATE (m) | no-motion ATE (m) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def value(r: dict, key: str) -> str:
        return f"{r[key]:.3f}" if key in r else "—"

    def pair(r: dict, key: str) -> str:
        return f"{value(r, key.format('model_odom'))} / {value(r, key.format('model_images'))}"

    def worst(r: dict, m: str) -> str:
        if f"ratio_worst_{m}" not in r:
            return "—"
        return f"{r[f'ratio_worst_{m}']:.2f} ({r[f'ratio_worse_{m}']}/{r['test_sequences']})"

    for r in rows:
        lines.append(
            f"| {r['cell']} | {r.get('runtime', 'onnxruntime')} | "
            f"{r['train_steps']:,} ({r['train_frames']:,}) | {r['train_s'] / 60:.1f} min | "
            f"{value(r, 'model_odom_ate_rmse_m')} | {value(r, 'model_images_ate_rmse_m')} | "
            f"{value(r, 'model_odom_rpe_rot_deg')} | {pair(r, '{}_reset_ate_rmse_m')} | "
            f"{pair(r, 'memory_gain_{}')} | {worst(r, 'model_odom')} | "
            f"{worst(r, 'model_images')} | "
            f"{value(r, 'query_recall_0.25m_5deg')} / {value(r, 'query_recall_0.5m_10deg')} "
            f"({value(r, 'query_identity_recall_0.25m_5deg')} / "
            f"{value(r, 'query_identity_recall_0.5m_10deg')}) | "
            f"{value(r, 'odometry_ate_rmse_m')} | {value(r, 'classical_vo_ate_rmse_m')} | "
            f"{value(r, 'no_motion_ate_rmse_m')} |"
        )
    return "\n".join(lines)
