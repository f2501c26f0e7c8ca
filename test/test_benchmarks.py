"""The small versions of ``make fuzz``, ``make soak``, ``make overload`` and the kill -9
benchmark: each script runs in a subprocess (it starts the real node itself, over DDS)
and its JSON result is checked. Sizes are small so each takes well under a minute on a
quiet machine; the full sizes and their numbers are in docs/benchmarks.md. Nothing here
asserts a time: only what must hold at any speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import REPO, node_environment


def run(script: str, tmp_path: Path, *args: str, timeout: float = 600) -> dict:
    out = tmp_path / f"{script}.json"
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / f"{script}.py"), *args, "--json", str(out)],
        env=node_environment(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return json.loads(out.read_text())


def test_fuzz_small(tmp_path: Path) -> None:
    result = run("fuzz", tmp_path, "--messages", "300")
    assert result["bad_messages_sent"] == 300
    for transport, node in result["nodes"].items():
        counters, sent = node["counters"], node["sent"]
        assert node["alive"] and node["exit_code"] == 0, (transport, node)
        assert node["tracebacks_in_log"] == 0, (transport, node["log"])
        # Every good frame answered, with a finite pose.
        assert node["good_answered_finite"] == sent["good"], (transport, node)
        # Reliable QoS on one host: every image arrived, and each was run, dropped in the
        # node's slot or rejected (with a reason in the log).
        assert counters["frames_received"] == sent["good"] + sent.get("bad_image", 0)
        assert node["counters_add_up"], (transport, counters)
        assert counters["frames_rejected"] >= 1 and counters["frames_processed"] >= sent["good"]
        # No decompression bomb was decoded: a 20000x20000 RGB frame alone is 1.2 GB.
        assert node["peak_rss_mb"] < 600, (transport, node)


def test_soak_small_node_and_runtime(tmp_path: Path) -> None:
    node = run("soak", tmp_path, "--frames", "200", "--window", "100", "--timeout", "5")["summary"]
    assert node["node_alive"] and node["answered"] == 200 and node["lost_total"] == 0, node
    assert node["node_counters"]["frames_processed"] == "200"
    assert set(node["goals"]) == {"rss_growth_under_1pc", "p50_within_10pc", "p99_within_10pc"}
    runtime = run("soak", tmp_path, "--runtime-frames", "600", "--window", "200")["summary"]
    assert runtime["frames"] == 600 and runtime["restarts"] == 0, runtime
    # 400 frames after the first window: memory does not grow per frame (a leak of one
    # 96x72 frame each would be 8 MB).
    assert runtime["rss_growth"] < 0.02, runtime


def test_overload_small(tmp_path: Path) -> None:
    result = run("overload", tmp_path, "--frames", "60", "--capacity-frames", "20")
    assert result["node_alive"] and result["exit_code"] == 0
    assert result["capacity"]["answered"] == 20
    for phase in result["phases"]:
        # Every frame published was received or counted missing from the stamps, and
        # every received one was run, dropped in the node's slot or rejected.
        assert phase["every_loss_counted"] and phase["received_add_up"], phase
        assert phase["answered"] == phase["node_processed"], phase
        assert phase["node_dropped"] + phase["node_missing"] > 0, phase  # it was overloaded


def test_kill_during_save_small(tmp_path: Path) -> None:
    summary = run("kill_save", tmp_path, "--kills", "5")["summary"]
    assert summary["kills"] == 5 and summary["start_up_failed"] == 0, summary
    assert summary["corrupt"] == 0 and summary["missing_snapshot"] == 0, summary
    assert summary["killed_mid_write"] >= 1, summary  # the kills did land during a save
    # Whatever a kill left, the next start removed it; every start loaded the snapshot.
    assert summary["temporaries_after_start"] == 0, summary
    assert summary["temporaries_after_final_start"] == 0 and summary["final_start_loaded"]
    assert summary["loaded_at_start_up"] == summary["started_with_snapshot"] >= 1, summary
