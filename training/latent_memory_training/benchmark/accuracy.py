"""Each memory cell trained on the same data and budget, exported, and scored held-out.

Same encoder, heads, trainer, steps and seed for every cell; only the memory differs.
The full-history reference is not trained here: its state grows, and the trainer's
truncated backpropagation carries fixed-size states between windows.
"""

from __future__ import annotations

import time
from pathlib import Path

from latent_memory_training.benchmark.heldout import evaluate
from latent_memory_training.data.prepare import PreparedSequence
from latent_memory_training.export.onnx_export import export_model
from latent_memory_training.models.config import ModelConfig
from latent_memory_training.training.config import TrainConfig
from latent_memory_training.training.fit import fit, load_model

KEYS = ("ate_rmse_m", "rpe_trans_m", "rpe_rot_deg")


def cell_accuracy(
    cell: str,
    train: list[PreparedSequence],
    val: list[PreparedSequence],
    test_paths: list[Path],
    out_dir: Path,
    cfg: TrainConfig,
    jobs: int = 2,
) -> dict:
    run = out_dir / cell
    start = time.perf_counter()
    best = fit(train, val, run, ModelConfig(cell=cell), cfg, progress=False)
    train_s = time.perf_counter() - start
    model, _ = load_model(best)
    export_model(model, run / "model", cell)
    summary = evaluate(run / "model", test_paths, mirrored=False, jobs=jobs)["summary"]["original"]
    return {
        "cell": cell,
        "train_steps": cfg.steps,
        "train_frames": cfg.steps * cfg.batch * cfg.window,
        "train_s": train_s,
        "test_sequences": summary["sequences"],
        **{
            f"{method}_{k}": summary[method][k]
            for method in summary
            if method != "sequences"
            for k in KEYS
        },  # fmt: skip
    }


def accuracy_table(rows: list[dict]) -> str:
    lines = [
        "| cell | train steps (frames) | train time | ATE with odometry (m) | ATE images only (m) "
        "| RPE rot with odometry (°/frame) | odometry ATE (m) | classical VO ATE (m) "
        "| no-motion ATE (m) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {r['train_steps']:,} ({r['train_frames']:,}) | "
            f"{r['train_s'] / 60:.1f} min | {r['model_odom_ate_rmse_m']:.3f} | "
            f"{r['model_images_ate_rmse_m']:.3f} | {r['model_odom_rpe_rot_deg']:.3f} | "
            f"{r['odometry_ate_rmse_m']:.3f} | {r['classical_vo_ate_rmse_m']:.3f} | "
            f"{r['no_motion_ate_rmse_m']:.3f} |"
        )
    return "\n".join(lines)
