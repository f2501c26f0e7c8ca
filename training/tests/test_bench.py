"""The cost benchmark runs for a fixed-state cell and the growing full-history reference."""

import json
from pathlib import Path

import pytest

from latent_memory_training.benchmark.costs import run_costs


def test_costs_report_every_column(tmp_path):
    rows = run_costs(tmp_path, ["kinaema", "full"], at=(1, 30))
    by_cell = {r["cell"]: r for r in rows}
    assert by_cell["kinaema"]["runtime"] == "onnxruntime"
    assert by_cell["kinaema"]["state_bytes"] == 4 * (8 * 64 + 7 + 3 + 3)  # + the drift filter
    assert by_cell["full"]["state_bytes"] is None  # its state grows with t
    for r in rows:
        assert r["parameters"] > r["cell_parameters"] > 0
        assert r["flops_per_step_t0"] > 1e6
        assert set(r["latency"]) == {"1", "30"}
        assert all(v["p99_ms"] >= v["p50_ms"] > 0 for v in r["latency"].values())
    assert json.loads((tmp_path / "costs.json").read_text()) == rows
    assert "| kinaema |" in (tmp_path / "costs.md").read_text()
    assert (tmp_path / "latency.png").stat().st_size > 10_000


def test_accuracy_trains_exports_and_scores_cells_with_and_without_distillation(tmp_path):
    """A fixed-state cell is exported and scored through the runtime beside the
    baselines; the growing teacher is scored in PyTorch; a cell distilled from that
    teacher gets its own row; every row has query recall, the memory ablation and the
    worst run's ratio to the baseline."""
    from latent_memory_training.benchmark.accuracy import accuracy_table, cell_accuracy
    from latent_memory_training.data.generate import render_sequence
    from latent_memory_training.data.prepare import load_prepared
    from latent_memory_training.training.config import TrainConfig

    paths = []
    for split, i in (("train", 0), ("val", 0), ("test", 0)):
        path = tmp_path / f"{split}.npz"
        render_sequence(split, i, seed=2, frames=160, size=(160, 120)).save(path)
        paths.append(path)
    train, val, test = load_prepared(paths, 128, 96)
    cfg = TrainConfig(steps=2, batch=2, window=8, spans=(1, 4), val_every=2, min_episode=16)
    runs = tmp_path / "runs"

    def row(cell, teacher=None):
        return cell_accuracy(cell, [train], [val], [paths[2]], [test], runs, cfg, 1, teacher)

    teacher = row("bottleneck")
    gru, distilled = row("gru"), row("gru", Path(teacher["checkpoint"]))
    assert teacher["runtime"] == "pytorch" and gru["runtime"] == "onnxruntime"
    assert "odometry_ate_rmse_m" not in teacher  # the baselines come with exported cells
    assert distilled["cell"] == "gru+distill"
    assert (runs / "gru" / "model" / "step.onnx").is_file()
    assert (runs / "gru+distill" / "model" / "query.onnx").is_file()
    for method in ("model_odom", "model_images", "odometry", "classical_vo", "no_motion"):
        assert gru[f"{method}_ate_rmse_m"] >= 0
    for r in (teacher, gru, distilled):
        assert r["test_sequences"] == 1 and r["train_s"] > 0
        assert r["model_odom_ate_rmse_m"] >= 0 and r["model_images_ate_rmse_m"] >= 0
        assert 0 <= r["query_recall_0.25m_5deg"] <= r["query_recall_0.5m_10deg"] <= 1
        for m in ("model_odom", "model_images"):
            carried, reset = r[f"{m}_ate_rmse_m"], r[f"{m}_reset_ate_rmse_m"]
            assert r[f"memory_gain_{m}"] == pytest.approx(1 - carried / reset)
            assert r[f"ratio_worst_{m}"] == pytest.approx(r[f"ratio_mean_{m}"])  # one run
            assert r[f"ratio_worse_{m}"] == int(r[f"ratio_worst_{m}"] > 1)
        assert r["ratio_worst_sequence_model_odom"] == test.name
    # With odometry and one run, the ratio is to that run's odometry ATE.
    assert gru["ratio_worst_model_odom"] == pytest.approx(
        gru["model_odom_ate_rmse_m"] / gru["odometry_ate_rmse_m"]
    )
    table = accuracy_table([teacher, gru, distilled])
    assert "| bottleneck | pytorch |" in table and "| gru+distill | onnxruntime |" in table
    assert f"| {gru['ratio_worst_model_odom']:.2f} ({gru['ratio_worse_model_odom']}/1) |" in table
