"""Odometry-mode ATE and per-run ratios to the odometry for one checkpoint at several
``vision_bias_floor`` values (docs/benchmarks.md, "A drift filter"). Run it on the
validation runs only: the floor is chosen there, never on held-out runs.

    python training/scripts/drift_floor_sweep.py CHECKPOINT VAL_DIR 0.012 0.018 0.024
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from latent_memory_training.data.prepare import find_sequences, load_prepared
from latent_memory_training.training.checkpoint import load_model
from latent_memory_training.training.rollout import evaluate, odometry_baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("data", type=Path, help="validation renders (*.npz)")
    parser.add_argument("floors", type=float, nargs="+", help="rad/s")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = load_model(args.checkpoint)
    seqs = load_prepared(find_sequences(args.data), 128, 96)
    odometry = np.array(odometry_baseline(seqs)["per_sequence_ate_m"])
    for floor in args.floors:
        model.config.vision_bias_floor = floor
        ate = np.array(evaluate(model, seqs, True)["per_sequence_ate_m"])
        ratio = ate / odometry
        print(
            f"floor {floor:.4f}: ATE {ate.mean():.4f} m (odometry {odometry.mean():.4f}), "
            f"ratio mean {ratio.mean():.3f} median {np.median(ratio):.3f} "
            f"worst {ratio.max():.3f}, runs > 1.2x: {(ratio > 1.2).sum()}/{len(ratio)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
