"""fit and distill on a user's runs: a mix of rosbag2, TUM RGB-D and cached renders as
--data, validation split by run, fine-tuning an exported model (--init-from, --freeze),
and a bad run refused before anything is cached."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch

from latent_memory_training import cli
from latent_memory_training.data.generate import render_sequence
from latent_memory_training.data.writers import write_rosbag2, write_tum
from latent_memory_training.models.config import ModelConfig
from latent_memory_training.models.student import LocalisationModel

FIT_ARGS = ["--batch", "2", "--window", "8", "--spans", "1", "4", "--val-every", "2",
            "--min-episode", "16", "--threads", "1", "--steps", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs of the synthetic world, one per format, in one folder."""
    root = tmp_path_factory.mktemp("runs")
    seqs = [render_sequence("train", i, seed=3, frames=24, size=(96, 72)) for i in range(3)]
    write_rosbag2(seqs[0], root / "mixed" / "robot_bag", storage="sqlite3")
    write_tum(seqs[1], root / "mixed" / "tum_run")
    seqs[2].save(root / "mixed" / "render.npz")
    return root


def test_fit_on_mixed_formats_with_a_validation_run(runs, tmp_path, capsys):
    out = tmp_path / "fit"
    bag_flags = ["--image-topic", "/camera/image_raw", "--gt-topic", "/ground_truth/pose",
                 "--odom-topic", "/odom"]  # fmt: skip
    args = ["fit", "--data", str(runs / "mixed"), "--val-fraction", "0.34", "--out", str(out)]
    assert cli.main([*args, *bag_flags, *FIT_ARGS]) == 0
    printed = capsys.readouterr().out
    assert "preparing 2 training runs" in printed and "validation runs: " in printed
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["step"] == 2 and all(np.isfinite(h["val_ate_odom_mode_m"]) for h in ckpt["history"])
    # The bag and the TUM run were prepared into the run's cache, the render beside itself.
    # Training and validation runs alike: the bag and the TUM run are prepared into the
    # fit's cache, the render beside itself.
    cached = sorted(p.name.split(".")[0] for p in (out / "prepared").glob("*.prep.npz"))
    assert cached == ["robot_bag", "tum_run"]
    assert list((runs / "mixed").glob("render.128x96.*.prep.npz"))

    # The same runs twice, as --data and --val, are refused: the split is by run.
    again = ["fit", "--data", str(runs / "mixed"), "--val", str(runs / "mixed" / "tum_run")]
    assert cli.main([*again, "--out", str(tmp_path / "both"), *FIT_ARGS]) == 2
    assert "runs in both --data and --val" in capsys.readouterr().err


def test_fine_tune_an_exported_model_with_the_encoder_frozen(runs, tmp_path, capsys):
    # A model directory as export leaves it keeps its weights in checkpoint.pt (test_fit
    # checks that export writes it); a model with a smaller memory than the default's.
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    torch.manual_seed(0)
    model = LocalisationModel(ModelConfig(slots=4))
    start = model.state_dict()
    torch.save(
        {"model_config": model.config.to_dict(), "model": start}, model_dir / "checkpoint.pt"
    )

    tuned = tmp_path / "tuned"
    args = ["fit", "--data", str(runs / "mixed" / "tum_run"), "--out", str(tuned)]
    args += ["--init-from", str(model_dir), "--freeze", "encoder", "--lr", "1e-4", *FIT_ARGS]
    assert cli.main(args) == 0
    assert "fine-tuning: started all" in capsys.readouterr().out
    after = torch.load(tuned / "last.pt", weights_only=False)
    assert after["model_config"]["slots"] == 4  # the model's configuration, not the flags'
    assert after["train_config"]["init_from"] == str(model_dir)
    assert after["train_config"]["freeze"] == "encoder"
    encoder = [k for k in start if k.startswith("encoder.")]
    assert encoder and all(torch.equal(after["model"][k], start[k]) for k in encoder)
    moved = [
        k
        for k in start
        if not k.startswith("encoder.") and not torch.equal(after["model"][k], start[k])
    ]
    assert moved  # the rest trained on from the exported weights

    # A model directory without its weights (exported before they were kept) is named.
    (model_dir / "checkpoint.pt").unlink()
    assert cli.main([*args[:4], str(tmp_path / "refused"), *args[5:]]) == 2
    assert "holds no checkpoint.pt" in capsys.readouterr().err


def test_a_bad_run_is_refused_before_anything_is_cached(runs, tmp_path, capsys):
    bad = tmp_path / "bad_tum"
    shutil.copytree(runs / "mixed" / "tum_run", bad)
    victim = sorted((bad / "rgb").iterdir())[5]
    cv2.imwrite(str(victim), np.zeros((10, 12, 3), np.uint8))
    out = tmp_path / "fit"
    assert cli.main(["fit", "--data", str(bad), "--out", str(out), *FIT_ARGS]) == 2
    err = capsys.readouterr().err
    assert f"image {victim} is 12x10, the run's first is 96x72" in err
    assert not list((out / "prepared").iterdir())  # no cache, not even a partial one
