"""Training configuration, importable without torch (the CLI builds its flags from it)."""

from __future__ import annotations

from dataclasses import dataclass, field

# What the distillation flags may be (training/losses.py).
DISTANCES = ("mse_ln", "cosine")
SCHEDULES = ("constant", "anneal")


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
    device: str = "cpu"  # or cuda (one prepared script runs a long training on a GPU)
    amp: bool = False  # bfloat16 autocast (on cuda)
    heldout_every: int = 0  # steps between held-out scores in the history (0: never)
    # Map-free queries: at each window's last frame, where was the camera of an earlier
    # frame of the episode (at least query_min_gap frames back)?
    query_weight: float = 0.1
    query_min_gap: int = 15
    # Distillation from a frozen bottleneck teacher (``latent_memory_train distill``):
    # lambda * d(M_t, B_t) on the student's memory at every step.
    distill_weight: float = 0.0
    # mse_ln: per-slot MSE after LayerNorm; cosine: 1 - cos
    distill_distance: str = field(default="mse_ln", metadata={"choices": DISTANCES})
    # constant, or anneal (cosine to 0 over the run)
    distill_schedule: str = field(default="constant", metadata={"choices": SCHEDULES})
    init_from_teacher: bool = False  # start encoder and heads from the teacher's
    # Fine-tuning: start from a checkpoint (.pt) or a model directory that keeps one
    # (checkpoint.pt, written by export); the model's configuration comes from it.
    init_from: str = ""
    freeze: str = ""  # comma-separated top-level parts kept as they are, e.g. encoder


@dataclass
class WorldConfig:
    """``fit --world``: fresh rooms from the generator (data/world_stream.py)."""

    frames: int = 1200  # per room
    pool: int = 16  # rooms drawn from at once (the newest)
    warm: int = 4  # rooms rendered before the first step
    room_every: int = 12  # training steps between new rooms
    workers: int = 1  # rendering processes beside the trainer
    cameras: str = "random"  # world.md v2 cameras; reference: the v1 camera
