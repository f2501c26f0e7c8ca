"""Two models' step.onnx alone in onnxruntime (one thread), interleaved frame by frame so
that their ratio is measured in one run on a shared machine; the state is carried.

    .venv/bin/python benchmarks/step_graphs.py OLD_MODEL_DIR NEW_MODEL_DIR --frames 2000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

STATE_IN, STATE_OUT = "state.", "state_out."


class StepGraph:
    def __init__(self, model_dir: Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_dir / "step.onnx"), options, providers=["CPUExecutionProvider"]
        )
        init = np.load(model_dir / "state_init.npz", allow_pickle=False)
        rng = np.random.default_rng(0)
        self.feed = {
            i.name: init[i.name.removeprefix(STATE_IN)]
            if i.name.startswith(STATE_IN)
            else rng.normal(size=i.shape).astype(np.float32)
            for i in self.session.get_inputs()
        }
        self.feed["odom"][:] = [[0, 0, 0.01, 0, 0, 0, 1, 1]]  # 1 cm forward, valid
        if "camera" in self.feed:
            self.feed["camera"][:] = [[0.82, 1.09, 0.5, 0.5]]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.ms: list[float] = []

    def step(self) -> None:
        start = time.perf_counter()
        out = self.session.run(None, self.feed)
        self.ms.append((time.perf_counter() - start) * 1e3)
        for name, value in zip(self.outputs, out, strict=True):
            if name.startswith(STATE_OUT):
                self.feed[STATE_IN + name.removeprefix(STATE_OUT)] = value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--frames", type=int, default=2000)
    args = parser.parse_args()
    graphs = [StepGraph(args.old), StepGraph(args.new)]
    for _ in range(args.frames):
        for graph in graphs:
            graph.step()
    for name, graph in zip(("old", "new"), graphs, strict=True):
        p50, p99 = np.percentile(graph.ms, [50, 99])
        print(f"{name}: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    ratio = np.percentile(graphs[1].ms, 50) / np.percentile(graphs[0].ms, 50)
    print(f"new / old p50: {ratio:.3f}")


if __name__ == "__main__":
    main()
