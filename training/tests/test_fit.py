"""The training CLI end to end on a tiny budget: render -> fit -> resume -> export -> runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latent_memory_ros.cues import sequence_cues
from latent_memory_ros.runtime import StudentRuntime
from latent_memory_training import cli
from latent_memory_training.data.generate import render_sequence
from latent_memory_training.data.prepare import find_sequences, load_prepared
from latent_memory_training.training.fit import Streams, TrainConfig, _mirror_in_place

FIT_ARGS = ["--batch", "2", "--window", "8", "--spans", "1", "4", "--val-every", "2",
            "--min-episode", "16", "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for split, count in (("train", 2), ("val", 1)):
        (root / split).mkdir()
        for i in range(count):
            render_sequence(split, i, seed=3, frames=40, size=(160, 120)).save(
                root / split / f"{split}_{i:03d}.npz"
            )
    return root


def test_fit_resume_export_and_run(data, tmp_path):
    run = tmp_path / "run"
    base = ["fit", "--data", str(data / "train"), "--val", str(data / "val"), "--out", str(run)]
    assert cli.main([*base, *FIT_ARGS, "--steps", "4"]) == 0
    first = torch.load(run / "last.pt", weights_only=False)
    assert first["step"] == 4
    assert first["model_config"]["cell"] == "kinaema"
    assert first["train_config"]["window"] == 8
    assert [h["step"] for h in first["history"]] == [2, 4]
    assert all(np.isfinite(h["val_ate_odom_mode_m"]) for h in first["history"])

    assert cli.main([*base, *FIT_ARGS, "--steps", "6", "--resume", str(run / "last.pt")]) == 0
    resumed = torch.load(run / "last.pt", weights_only=False)
    assert resumed["step"] == 6
    assert [h["step"] for h in resumed["history"]] == [2, 4, 6]

    out = tmp_path / "model"
    assert cli.main(["export", "--checkpoint", str(run / "best.pt"), "--out", str(out)]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["train_config"]["window"] == 8
    rt = StudentRuntime(out, providers=["CPUExecutionProvider"], warmup=0)
    frames = render_sequence("test", 0, seed=3, frames=3, size=(320, 240)).images
    poses = [rt.step(f).pose for f in frames]
    assert np.all(np.isfinite(poses))


def test_streams_mirror_and_drop_odometry(data):
    seqs = load_prepared(find_sequences(data / "train"), 128, 96)
    cfg = TrainConfig(batch=16, window=8, min_episode=16, odom_drop=0.5)
    streams = Streams(seqs, cfg, np.random.default_rng(0))
    obs, targets, reset = streams.next(0)
    assert reset.all()
    assert obs["image"].shape == (16, 8, 3, 96, 128)
    # Every episode starts like a run: no odometry, no cues on its first frame.
    assert torch.all(obs["odom"][:, 0, 7] == 0) and torch.all(obs["cues"][:, 0, 0] == 0)
    # Targets start at the identity in the episode's first camera frame.
    torch.testing.assert_close(targets["gt"][:, 0], torch.tensor([[0, 0, 0, 0, 0, 0, 1.0]] * 16))
    off = ~targets["odom_on"]
    assert off.any() and (~off).any()
    assert torch.all(obs["odom"][off, :, 7] == 0)
    assert streams.mirrored.any() and (~streams.mirrored).any()
    # Same seed, same batches: training is reproducible.
    obs2, targets2, _ = Streams(seqs, cfg, np.random.default_rng(0)).next(0)
    torch.testing.assert_close(targets2["gt"], targets["gt"])
    torch.testing.assert_close(obs2["cues"], obs["cues"])


def test_mirrored_cues_match_cues_of_mirrored_images():
    """The training-time mirror of the cue vector is what the runtime computes on flipped
    frames (up to tracking noise), so mirror augmentation teaches the real thing."""
    seq = render_sequence("val", 0, seed=3, frames=30, size=(320, 240))
    cues = sequence_cues(seq.images, seq.intrinsics)
    flipped = sequence_cues(seq.images[:, :, ::-1].copy(), seq.intrinsics)
    arr = {"images": np.zeros((1, 30, 2, 2, 3), np.uint8), "odom": np.zeros((1, 30, 8)),
           "bias": np.zeros((1, 30, 3)), "cues": cues[None].copy()}  # fmt: skip
    _mirror_in_place(arr, np.array([True]))
    rotation = slice(1, 4)
    np.testing.assert_allclose(
        np.median(arr["cues"][0, 1:, rotation] - flipped[1:, rotation], axis=0), 0, atol=2e-4
    )
    assert np.mean(np.sign(arr["cues"][0, 1:, 2]) == np.sign(flipped[1:, 2])) > 0.9
