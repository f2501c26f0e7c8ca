"""Each memory cell trained on the same data and budget, and scored held-out.

Same encoder, heads, trainer, steps and seed for every cell; only the memory differs.
Exportable cells are exported and run through the node's runtime
(:mod:`latent_memory_training.benchmark.heldout`: ATE, RPE and the baselines on the same
sequences); the references that cannot be exported (``full``, the teacher
``bottleneck``: their state grows) are scored in PyTorch by
:func:`latent_memory_training.benchmark.distillation.evaluate_model`, which also gives
every cell's query recall. Given a teacher, a cell also trains distilled from it
(``<cell>+distill``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from latent_memory_training.benchmark.distillation import evaluate_model
from latent_memory_training.benchmark.heldout import evaluate
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
    with_odom = evaluate_model(model, test, use_odom=True)
    row = {
        "cell": name,
        "checkpoint": str(best),
        "train_steps": cfg.steps,
        "train_frames": cfg.steps * cfg.batch * cfg.window,
        "train_s": train_s,
        "test_sequences": len(test),
        **{f"query_{k}": with_odom["query"][k] for k in RECALL},
        **{f"query_identity_{k}": with_odom["query_identity"][k] for k in RECALL},
    }
    if model.cell.exportable:
        export_model(model, run / "model", name)
        summary = evaluate(run / "model", test_paths, mirrored=False, jobs=jobs)["summary"]
        summary = summary["original"]
        row["runtime"] = "onnxruntime"
    else:  # the baselines come from the exported cells' rows
        images_only = evaluate_model(model, test, use_odom=False)
        summary = {"model_odom": with_odom, "model_images": images_only}
        row["runtime"] = "pytorch"
    row |= {
        f"{method}_{k}": summary[method][k]
        for method in summary
        if method != "sequences"
        for k in KEYS
    }  # fmt: skip
    return row


def accuracy_table(rows: list[dict]) -> str:
    lines = [
        "| cell | scored in | train steps (frames) | train time | ATE with odometry (m) "
        "| ATE images only (m) | RPE rot with odometry (°/frame) "
        "| query recall 0.25 m,5° / 0.5 m,10° | odometry ATE (m) | classical VO ATE (m) "
        "| no-motion ATE (m) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def value(r: dict, key: str) -> str:
        return f"{r[key]:.3f}" if key in r else "—"

    for r in rows:
        lines.append(
            f"| {r['cell']} | {r.get('runtime', 'onnxruntime')} | "
            f"{r['train_steps']:,} ({r['train_frames']:,}) | {r['train_s'] / 60:.1f} min | "
            f"{value(r, 'model_odom_ate_rmse_m')} | {value(r, 'model_images_ate_rmse_m')} | "
            f"{value(r, 'model_odom_rpe_rot_deg')} | "
            f"{value(r, 'query_recall_0.25m_5deg')} / {value(r, 'query_recall_0.5m_10deg')} | "
            f"{value(r, 'odometry_ate_rmse_m')} | {value(r, 'classical_vo_ate_rmse_m')} | "
            f"{value(r, 'no_motion_ate_rmse_m')} |"
        )
    return "\n".join(lines)
