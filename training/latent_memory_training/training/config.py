"""Training configuration, importable without torch (the CLI builds its flags from it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    steps: int = 2000
    batch: int = 8
    window: int = 32
    spans: tuple[int, ...] = (1, 4, 16, 31)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    odom_drop: float = 0.3  # share of episodes trained without odometry
    min_episode: int = 128
    curriculum_steps: int = 1000  # episodes reach whole sequences after this many steps
    bias_weight: float = 0.01
    nll_weight: float = 1e-3
    val_every: int = 250
    seed: int = 0
    threads: int = 2
