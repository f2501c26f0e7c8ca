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
from latent_memory_training.data.streams import Streams, mirror_in_place
from latent_memory_training.training.config import TrainConfig

FIT_ARGS = ["--batch", "2", "--window", "8", "--spans", "1", "4", "--val-every", "2",
            "--min-episode", "16", "--threads", "1"]  # fmt: skip


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
    # The weights stay beside the graphs, so the model can be fine-tuned (--init-from).
    kept = torch.load(out / "checkpoint.pt", weights_only=False)
    best = torch.load(run / "best.pt", weights_only=False)
    assert "optimizer" not in kept and kept["model_config"] == best["model_config"]
    assert all(torch.equal(kept["model"][k], v) for k, v in best["model"].items())
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
    mirror_in_place(arr, np.array([True]))
    rotation = slice(1, 4)
    np.testing.assert_allclose(
        np.median(arr["cues"][0, 1:, rotation] - flipped[1:, rotation], axis=0), 0, atol=2e-4
    )
    assert np.mean(np.sign(arr["cues"][0, 1:, 2]) == np.sign(flipped[1:, 2])) > 0.9


def test_teacher_then_distilled_student_with_queries(data, tmp_path):
    """A bottleneck teacher trains with the same CLI; ``distill`` pulls a student's
    memory towards it (both distances, both schedules) and starts its heads from it."""
    base = ["--data", str(data / "train"), "--val", str(data / "val")]
    teacher = tmp_path / "teacher"
    args = ["fit", *base, "--out", str(teacher), *FIT_ARGS, "--steps", "2"]
    assert cli.main([*args, "--model-cell", "bottleneck"]) == 0
    t = torch.load(teacher / "last.pt", weights_only=False)
    assert t["model_config"]["cell"] == "bottleneck"
    assert all("query_m" in h for h in t["history"])

    for distance, schedule in (("mse_ln", "constant"), ("cosine", "anneal")):
        out = tmp_path / f"student_{distance}"
        args = ["distill", "--teacher", str(teacher / "last.pt"), *base, "--out", str(out)]
        args += [*FIT_ARGS, "--steps", "2", "--distill-distance", distance]
        args += ["--distill-schedule", schedule, "--init-from-teacher", "true"]
        assert cli.main(args) == 0
        s = torch.load(out / "last.pt", weights_only=False)
        assert s["model_config"]["cell"] == "kinaema"
        assert s["teacher"] == str(teacher / "last.pt")
        assert s["train_config"]["distill_distance"] == distance
        assert all(np.isfinite(h["distill"]) for h in s["history"])
    # The heads started from the teacher's (training moved them a little since).
    student = torch.load(tmp_path / "student_mse_ln" / "last.pt", weights_only=False)["model"]
    assert torch.allclose(student["delta.weight"], t["model"]["delta.weight"], atol=0.05)

    full = tmp_path / "full"
    args = ["fit", *base, "--out", str(full), *FIT_ARGS, "--steps", "2", "--model-cell", "full"]
    assert cli.main(args) == 0
    plain = tmp_path / "plain"
    assert cli.main(["fit", *base, "--out", str(plain), *FIT_ARGS, "--steps", "2"]) == 0
    results = tmp_path / "compare.json"
    args = ["compare", "--data", str(data / "val"), "--out", str(results), "--query-every", "10"]
    args += ["--query-min-gap", "5", "--checkpoint", f"full={full / 'last.pt'}"]
    args += ["--checkpoint", f"teacher={teacher / 'last.pt'}"]
    args += ["--checkpoint", f"student={plain / 'last.pt'}"]
    args += ["--checkpoint", f"distilled={tmp_path / 'student_mse_ln' / 'last.pt'}"]
    assert cli.main(args) == 0
    table = json.loads(results.read_text())
    assert set(table["models"]) == {"full", "teacher", "student", "distilled"}
    for entry in table["models"].values():
        for mode in ("odom", "images"):
            assert np.isfinite(entry[mode]["ate_rmse_m"])
            assert entry[mode]["queries"] == 3 * 8  # t = 10, 20, 30 of 40 frames
            assert 0.0 <= entry[mode]["query"]["recall_0.5m_10deg"] <= 1.0
    assert set(table["gap_closed"]["distilled"]) == {"odom", "images"}
    # Scored models are kept when the table is extended.
    before = results.read_text()
    assert cli.main(args) == 0
    assert json.loads(results.read_text())["models"] == json.loads(before)["models"]

    bad = ["distill", "--teacher", str(teacher / "last.pt"), *base, "--out", str(tmp_path / "x")]
    assert cli.main([*bad, *FIT_ARGS, "--steps", "1", "--distill-weight", "0"]) == 2


def test_distillation_trains_the_memory_projection_of_a_cell_without_slots(data, tmp_path):
    """A gru student's memory is a learned projection of its hidden state: one distill
    step towards a bottleneck teacher's B_t gives that projection a gradient, which it
    has no other source of with queries off."""
    from latent_memory_training.models.config import ModelConfig
    from latent_memory_training.models.student import LocalisationModel
    from latent_memory_training.training.fit import (
        Checkpoint,
        Teacher,
        WindowStep,
        fit,
        save_checkpoint,
    )

    torch.manual_seed(0)
    teacher_cfg = ModelConfig(cell="bottleneck", dim=32, slots=4)
    path = tmp_path / "teacher.pt"
    save_checkpoint(
        path, LocalisationModel(teacher_cfg), None, Checkpoint(teacher_cfg, TrainConfig())
    )
    cfg = TrainConfig(batch=2, window=4, spans=(1,), min_episode=16, query_weight=0.0)
    seqs = load_prepared(find_sequences(data / "train"), 128, 96)
    obs, targets, reset = Streams(seqs, cfg, np.random.default_rng(0)).next(0)
    reset = torch.from_numpy(reset)
    teacher = Teacher(path, cfg.batch)
    student = LocalisationModel(ModelConfig(cell="gru", dim=32, slots=4))
    step = WindowStep(student, cfg)
    memory = teacher.memories(obs, reset)
    assert memory.shape == (2, 4, 4, 32)
    for weight, trained in ((0.0, False), (1.0, True)):
        student.zero_grad(set_to_none=True)
        loss, terms, _ = step(student.initial_state(2), reset, obs, targets, memory, weight)
        loss.backward()
        grad = student.cell.projection.weight.grad
        assert np.isfinite(terms["distill"])
        assert (grad is not None and float(grad.abs().max()) > 0) == trained

    # A growing memory (full) cannot be distilled: refused before training.
    with pytest.raises(ValueError, match="fixed-size memory"):
        fit(seqs, [], tmp_path / "x", ModelConfig(cell="full", dim=32, slots=4), cfg,
            progress=False, teacher_path=path)  # fmt: skip


def test_distances_and_schedule():
    from latent_memory_training.training.losses import distill_distance, distill_lambda

    m = torch.randn(2, 3, 8, 16)
    assert float(distill_distance(m, m, "mse_ln")) < 1e-10
    assert float(distill_distance(m, 2 * m + 1, "mse_ln")) < 1e-6  # LayerNorm removes scale
    assert abs(float(distill_distance(m, -m, "cosine")) - 2.0) < 1e-5
    with pytest.raises(ValueError, match="distance"):
        distill_distance(m, m, "l1")
    cfg = TrainConfig(steps=100, distill_weight=2.0, distill_schedule="anneal")
    assert distill_lambda(cfg, 0) == 2.0 and abs(distill_lambda(cfg, 100)) < 1e-12
    assert distill_lambda(TrainConfig(steps=100, distill_weight=2.0), 100) == 2.0


def test_growing_states_restart_per_stream():
    """The teacher's and the full-history reference's growing history, shared by the
    streams of a batch: a restarted stream sees none of its old frames."""
    from latent_memory_training.models.config import ModelConfig
    from latent_memory_training.models.student import LocalisationModel
    from latent_memory_training.training.fit import carry_state

    for cell in ("bottleneck", "full"):
        model = LocalisationModel(ModelConfig(cell=cell)).eval()
        obs = _obs(2, 4)
        state, _ = model.rollout(model.initial_state(2), obs)
        state = carry_state(model, state, torch.tensor([True, False]))
        assert state["valid"].tolist() == [[0, 0, 0, 0], [1, 1, 1, 1]]
        _, out = model.rollout(state, obs)
        # Row 0 restarted: the same as a fresh run on its own.
        _, alone = model.rollout(model.initial_state(1), {k: v[:1] for k, v in obs.items()})
        torch.testing.assert_close(out["pose"][:1], alone["pose"], atol=1e-5, rtol=1e-4)
        state = carry_state(model, state, torch.tensor([True, True]))
        assert state["valid"].shape == (2, 0)  # nothing left that anyone uses


def _obs(batch: int, frames: int) -> dict:
    from latent_memory_ros.cues import CUE_DIM
    from latent_memory_training.export.onnx_export import reference_camera

    torch.manual_seed(0)
    odom = torch.zeros(batch, frames, 8)
    odom[..., 6] = 1.0
    return {
        "image": torch.randn(batch, frames, 3, 96, 128),
        "odom": odom,
        "dt": torch.full((batch, frames, 1), 1 / 30),
        "cues": torch.zeros(batch, frames, CUE_DIM),
        "camera": reference_camera()[:, None].expand(batch, frames, 4),
    }


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message of a machine without CUDA"
)
def test_fit_on_cuda_without_a_gpu_says_so(data, tmp_path):
    base = ["fit", "--data", str(data / "train"), "--out", str(tmp_path / "run")]
    with pytest.raises(ValueError, match="no CUDA device"):
        cli.main([*base, *FIT_ARGS, "--steps", "1", "--device", "cuda", "--amp", "true"])


def test_rollout_memory_ablation_resets_only_the_cell(data):
    """The PyTorch memory ablation: the cell's state is its initial one before every
    frame (so a run's poses do not depend on what the memory saw), the pose and the
    odometry-drift filter carry on. Images only, where the memory moves the poses (with
    odometry only the drift filter does: the ablation changes nothing there)."""
    from latent_memory_training.models.config import ModelConfig
    from latent_memory_training.models.student import LocalisationModel
    from latent_memory_training.training.rollout import rollout_runs

    seqs = load_prepared(find_sequences(data / "train"), 128, 96)
    torch.manual_seed(0)
    model = LocalisationModel(ModelConfig())
    with torch.no_grad():
        model.delta.weight.normal_(0.0, 0.5)  # let the memory move the poses
    carried = rollout_runs(model, seqs, use_odom=False)
    reset = rollout_runs(model, seqs, use_odom=False, reset_memory=True)
    assert carried.shape == reset.shape == (2, 40, 7)
    np.testing.assert_allclose(carried[:, 0], reset[:, 0], atol=1e-6)  # same first frame
    assert np.abs(carried[:, 1:] - reset[:, 1:]).max() > 1e-4
    with_odom = rollout_runs(model, seqs, use_odom=True)
    np.testing.assert_allclose(
        rollout_runs(model, seqs, use_odom=True, reset_memory=True), with_odom, atol=1e-6
    )
    seen = []
    rollout_runs(
        model,
        seqs,
        True,
        True,
        stops=(10, 20),
        on_stop=lambda t, s, e: seen.append((t, e.shape[1])),
    )
    assert seen == [(10, 11), (20, 21)]
