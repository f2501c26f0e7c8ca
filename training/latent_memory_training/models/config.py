"""Model configuration, importable without torch (the CLI builds its flags from it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Normalisation the encoder sees (ImageNet statistics: a common, documented choice).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelConfig:
    cell: str = "kinaema"
    image_width: int = 128
    image_height: int = 96
    dim: int = 64
    slots: int = 8
    heads: int = 4
    hidden: int = 128
    initial_speed: float = 0.02  # m per frame: the images-only translation prior
    initial_bias_rate: float = 0.003  # per frame: about a 300-frame averaging window

    def to_dict(self) -> dict:
        return asdict(self)
