"""What each memory cell costs: parameters, state bytes, FLOPs and step latency against
time since start.

Fixed-state cells are exported (untrained weights: cost does not depend on them) and
stepped in onnxruntime with the state fed back, as the node does; the full-history
reference cannot be exported (its state grows) and is stepped in PyTorch. Latency is
reported as p50/p99 over a window of steps starting at each t, so growth with t shows.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from latent_memory_training.export.onnx_export import (
    example_inputs,
    example_observation,
    export_model,
)
from latent_memory_training.models.cells import CELLS, REFERENCE_CELLS
from latent_memory_training.models.config import ModelConfig
from latent_memory_training.models.student import LocalisationModel

AT = (10, 100, 1000, 10000)
WINDOW = 100


def _percentiles(times: list[float], at: tuple[int, ...]) -> dict[str, dict[str, float]]:
    out = {}
    for t in at:
        window = np.array(times[t : t + WINDOW]) * 1e3
        if len(window):
            out[str(t)] = {"p50_ms": float(np.percentile(window, 50)),
                           "p99_ms": float(np.percentile(window, 99))}  # fmt: skip
    return out


def _onnx_step_times(model: LocalisationModel, steps: int) -> list[float]:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        export_model(model, Path(tmp), "bench")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(
            str(Path(tmp) / "step.onnx"), options, providers=["CPUExecutionProvider"]
        )
    names = [i.name for i in session.get_inputs()]
    feed = dict(zip(names, (t.detach().numpy() for t in example_inputs(model)), strict=True))
    state_out = [o.name for o in session.get_outputs() if o.name.startswith("state_out.")]
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        result = session.run(state_out, feed)
        times.append(time.perf_counter() - start)
        for name, value in zip(state_out, result, strict=True):
            feed["state." + name.removeprefix("state_out.")] = value
    return times


@torch.no_grad()
def _torch_step_times(model: LocalisationModel, steps: int) -> list[float]:
    obs = example_observation(model)
    state = model.initial_state(1)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, _ = model.step(state, obs)
        times.append(time.perf_counter() - start)
    return times


def cell_costs(name: str, at: tuple[int, ...] = AT) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = LocalisationModel(ModelConfig(cell=name)).eval().requires_grad_(False)
    state = model.initial_state(1)
    obs = example_observation(model)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.step(state, obs)
    exportable = getattr(model.cell, "exportable", True)
    steps = max(at) + WINDOW
    times = _onnx_step_times(model, steps) if exportable else _torch_step_times(model, steps)
    state_floats = (
        sum(int(np.prod(s)) for s in model.state_shapes().values()) if exportable else None
    )
    return {
        "cell": name,
        "runtime": "onnxruntime" if exportable else "pytorch (not exportable: growing state)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "cell_parameters": sum(p.numel() for p in model.cell.parameters()),
        "state_bytes": None if state_floats is None else 4 * state_floats,
        "flops_per_step_t0": int(counter.get_total_flops()),
        "latency": _percentiles(times, at),
    }


def run_costs(out_dir: Path, cells: list[str], at: tuple[int, ...] = AT) -> list[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [cell_costs(name, at) for name in cells]
    (out_dir / "costs.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out_dir / "costs.md").write_text(costs_table(rows, at) + "\n")
    plot_latency(rows, out_dir / "latency.png")
    return rows


def costs_table(rows: list[dict], at: tuple[int, ...] = AT) -> str:
    head = (
        "| cell | runtime | parameters | state bytes | MFLOP/step | "
        + " | ".join(f"p50/p99 ms at t={t:,}" for t in at)
        + " | p50 ratio t=max/t=10 |"
    )
    lines = [head, "|" + "---|" * (6 + len(at))]
    for r in rows:
        lat = r["latency"]
        cells = [
            f"{lat[str(t)]['p50_ms']:.2f} / {lat[str(t)]['p99_ms']:.2f}" if str(t) in lat else "—"
            for t in at
        ]
        last = str(max(int(t) for t in lat))
        ratio = lat[last]["p50_ms"] / lat[str(min(at))]["p50_ms"]
        state = "grows" if r["state_bytes"] is None else f"{r['state_bytes']:,}"
        lines.append(
            f"| {r['cell']} | {r['runtime'].split(' ')[0]} | {r['parameters']:,} | {state} | "
            f"{r['flops_per_step_t0'] / 1e6:.1f} | " + " | ".join(cells) + f" | {ratio:.2f} |"
        )
    return "\n".join(lines)


def plot_latency(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ts = sorted(int(t) for t in r["latency"])
        ax.plot(ts, [r["latency"][str(t)]["p50_ms"] for t in ts], marker="o", label=r["cell"])
    ax.set_xscale("log")
    ax.set_xlabel("frames since start (t)")
    ax.set_ylabel("step latency p50 (ms), 1 CPU thread")
    ax.set_title("Step cost against time: fixed-state cells stay flat")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def all_cells() -> list[str]:
    return [*CELLS, *REFERENCE_CELLS]
