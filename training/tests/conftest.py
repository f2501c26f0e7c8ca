"""Fixtures the training tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from latent_memory_training.data.generate import render_sequence


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic dataset (2 train and 1 val sequences of 40 frames at 160x120),
    rendered once per test module."""
    root = tmp_path_factory.mktemp("data")
    for split, count in (("train", 2), ("val", 1)):
        (root / split).mkdir()
        for i in range(count):
            render_sequence(split, i, seed=3, frames=40, size=(160, 120)).save(
                root / split / f"{split}_{i:03d}.npz"
            )
    return root
