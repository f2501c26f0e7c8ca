"""Checkpoints that carry their configuration (nanoGPT's habit): ``last.pt`` with the
optimizer for ``--resume``, ``best.pt`` by validation score; written atomically."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from latent_memory_ros.atomic import atomic_path
from latent_memory_training.models.config import ModelConfig
from latent_memory_training.models.student import LocalisationModel
from latent_memory_training.training.config import TrainConfig


@dataclass
class Checkpoint:
    model: ModelConfig
    train: TrainConfig
    step: int = 0
    best: float = math.inf
    history: list = field(default_factory=list)
    teacher: str | None = None
    world_size: int = 1  # processes that trained it, each drawing `batch` streams


def save_checkpoint(path: Path, model: LocalisationModel, opt, ckpt: Checkpoint) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(
            {
                "model_config": asdict(ckpt.model),
                "train_config": asdict(ckpt.train),
                "step": ckpt.step,
                "best": ckpt.best,
                "history": ckpt.history,
                "teacher": ckpt.teacher,
                "world_size": ckpt.world_size,
                "model": model.state_dict(),
                "optimizer": opt.state_dict() if opt is not None else None,
            },
            tmp,
        )


def load_model(path: Path) -> tuple[LocalisationModel, dict]:
    data = torch.load(path, map_location="cpu", weights_only=False)
    model = LocalisationModel(ModelConfig(**data["model_config"]))
    model.load_state_dict(data["model"])
    return model, data
