"""The cost benchmark runs for a fixed-state cell and the growing full-history reference."""

import json

from latent_memory_training.benchmark.costs import run_costs


def test_costs_report_every_column(tmp_path):
    rows = run_costs(tmp_path, ["kinaema", "full"], at=(1, 30))
    by_cell = {r["cell"]: r for r in rows}
    assert by_cell["kinaema"]["runtime"] == "onnxruntime"
    assert by_cell["kinaema"]["state_bytes"] == 4 * (8 * 64 + 7 + 3)
    assert by_cell["full"]["state_bytes"] is None  # its state grows with t
    for r in rows:
        assert r["parameters"] > r["cell_parameters"] > 0
        assert r["flops_per_step_t0"] > 1e6
        assert set(r["latency"]) == {"1", "30"}
        assert all(v["p99_ms"] >= v["p50_ms"] > 0 for v in r["latency"].values())
    assert json.loads((tmp_path / "costs.json").read_text()) == rows
    assert "| kinaema |" in (tmp_path / "costs.md").read_text()
    assert (tmp_path / "latency.png").stat().st_size > 10_000
