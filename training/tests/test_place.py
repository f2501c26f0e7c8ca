"""The place memory (models/place.py): what it writes, what it answers, its loss, and its
export (step.onnx carries its slots, query.onnx answers with ``seen``)."""

import copy
import json

import cv2
import numpy as np
import pytest
import torch
from parity import camera_frames, perturbed_model, stepped

from latent_memory_ros import geometry
from latent_memory_ros.cues import CUE_DIM
from latent_memory_ros.evaluation import trajectory_metrics
from latent_memory_ros.messages import UNSEEN_VARIANCE, query_answer
from latent_memory_ros.model_format import ODOM_NONE
from latent_memory_ros.runtime import StudentRuntime
from latent_memory_training.data.prepare import PreparedSequence
from latent_memory_training.export.onnx_export import export_model, reference_camera
from latent_memory_training.models.place import (
    ADDED_BUFFERS,
    FREE,
    PlaceMemory,
    place_contrastive_loss,
)
from latent_memory_training.models.so3 import relative
from latent_memory_training.training.place import (
    REVISIT_GRID,
    REVISIT_PERFECT_ODOMETRY_M,
    REVISIT_SAFE_RATIO,
    describe_run,
    replay_revisits,
)
from latent_memory_training.training.rollout import rollout_runs

SLOTS, DIM = 4, 8


def _unit(i: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor([i]), DIM).float()


def _pose(x: float) -> torch.Tensor:
    return torch.tensor([[x, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])


def test_new_views_fill_free_slots_and_a_seen_view_is_kept_not_copied():
    place = PlaceMemory(token_dim=16, grid=2, slots=SLOTS, dim=DIM)
    state = place.initial_state(1)
    assert (state["place_age"] == FREE).all()
    for i in range(3):
        state = place.write(state, _unit(i), _pose(float(i)))
    assert state["place_age"].tolist() == [[2.0, 1.0, 0.0, FREE]]
    assert state["place_poses"][0, :3, 0].tolist() == [0.0, 1.0, 2.0]
    # View 0 again: no new slot, and slot 0 is seen now (its age back to 0).
    state = place.write(state, _unit(0), _pose(9.0))
    assert state["place_age"].tolist() == [[0.0, 2.0, 1.0, FREE]]
    assert state["place_poses"][0, 0, 0] == 0.0
    # Two more new views: the free slot, then the one seen longest ago (slot 1).
    state = place.write(state, _unit(3), _pose(3.0))
    state = place.write(state, _unit(4), _pose(4.0))
    assert state["place_age"].tolist() == [[2.0, 0.0, 3.0, 1.0]]
    assert torch.equal(state["place_keys"][0, 1], _unit(4)[0])
    assert state["place_poses"][0, 1, 0] == 4.0


def test_an_answer_is_the_matching_slot_seen_from_here_and_says_whether_it_was_seen():
    place = PlaceMemory(token_dim=16, grid=2, slots=SLOTS, dim=DIM)
    state = place.initial_state(1)
    stored = torch.tensor([[1.0, 2.0, 3.0, *geometry.rotvec_to_quat(np.array([0, 0.3, 0]))]])
    state = place.write(state, _unit(0), stored.float())
    state = place.write(state, _unit(1), _pose(5.0))
    here = torch.tensor([[0.5, 0.0, -1.0, *geometry.rotvec_to_quat(np.array([0.1, 0, 0]))]])
    rel, log_var, seen = place.answer(state, here.float(), _unit(0))
    assert torch.allclose(rel, relative(here.float(), stored.float()), atol=1e-6)
    assert log_var.shape == (1, 6) and seen.shape == (1, 1)
    # Seen: cosine 1; never seen: cosine 0 to every slot (the default calibration).
    _, _, unseen = place.answer(state, here.float(), _unit(5))
    assert seen.item() > 0.9 and unseen.item() < 0.1


def test_a_revisit_pulls_the_pose_towards_an_old_place_and_only_an_old_one():
    place = PlaceMemory(token_dim=16, grid=2, slots=SLOTS, dim=DIM)
    place.loop_min_age.fill_(10.0)
    place.loop_gain.copy_(torch.tensor([0.0, 0.5]))  # with odometry: off
    state = place.write(place.initial_state(1), _unit(0), _pose(0.0))
    drifted, no_odom, odom = _pose(1.0), torch.zeros(1, 1), torch.ones(1, 1)
    # Seen one frame ago: not a revisit.
    assert torch.equal(place.revisit(state, _unit(0), drifted, no_odom), drifted)
    for _ in range(10):
        state = place.write(state, _unit(1), _pose(5.0))
    assert state["place_age"][0, 0] == 10.0
    pulled = place.revisit(state, _unit(0), drifted, no_odom)
    assert torch.allclose(pulled, _pose(0.5), atol=1e-6)
    # With odometry its own gain applies (0 here: left alone); an unlike view: no pull.
    assert torch.allclose(place.revisit(state, _unit(0), drifted, odom), drifted)
    assert torch.allclose(place.revisit(state, _unit(3), drifted, no_odom), drifted)


def test_a_revisit_to_a_place_that_looks_like_another_far_away_is_not_taken():
    """The ratio test: two slots 3 m apart both like the view; with a margin the
    ambiguous revisit is refused, a clear one is still taken."""
    place = PlaceMemory(token_dim=16, grid=2, slots=SLOTS, dim=DIM)
    place.loop_min_age.fill_(0.0)
    place.loop_gain.fill_(0.5)
    place.loop_above.fill_(0.5)
    place.loop_margin.fill_(0.05)
    place.write_below.fill_(0.9999)  # the twin is a slot of its own
    twin = torch.nn.functional.normalize(_unit(0) + 0.05 * _unit(1), dim=-1)
    state = place.write(place.initial_state(1), _unit(0), _pose(0.0))
    state = place.write(state, twin, _pose(3.0))
    state["place_age"].fill_(50.0)
    no_odom = torch.zeros(1, 1)
    assert torch.equal(place.revisit(state, _unit(0), _pose(1.0), no_odom), _pose(1.0))
    place.loop_margin.zero_()
    assert torch.allclose(place.revisit(state, _unit(0), _pose(1.0), no_odom), _pose(0.5))
    # A lookalike near the best slot is the same place, not a rival.
    place.loop_margin.fill_(0.05)
    state["place_poses"][0, 1, 0] = 0.5
    assert torch.allclose(place.revisit(state, _unit(0), _pose(1.0), no_odom), _pose(0.5))


def test_a_checkpoint_from_before_the_revisit_margin_loads_without_one():
    place = PlaceMemory(token_dim=16, grid=2, slots=SLOTS, dim=DIM)
    old = {k: v for k, v in place.state_dict().items() if k not in ADDED_BUFFERS}
    fresh = PlaceMemory(token_dim=16, grid=2, slots=SLOTS, dim=DIM)
    fresh.load_state_dict(old)  # strict
    assert (fresh.loop_margin == 0).all()


def test_the_contrastive_loss_prefers_descriptors_that_group_views_of_one_place():
    positives = torch.tensor(
        [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool
    )
    grouped = torch.nn.functional.normalize(torch.tensor([[1, 0.1], [1, 0], [0, 1], [0.1, 1]]))
    mixed = torch.nn.functional.normalize(torch.tensor([[1, 0.1], [0, 1], [1, 0], [0.1, 1]]))
    assert place_contrastive_loss(grouped, positives) < place_contrastive_loss(mixed, positives)
    # Ignored pairs count neither as positives nor as negatives.
    ignore = torch.zeros(4, 4, dtype=torch.bool)
    ignore[0, 2] = ignore[2, 0] = True
    assert place_contrastive_loss(mixed, positives, ignore) < place_contrastive_loss(
        mixed, positives
    )


@pytest.fixture(scope="module")
def place_export(tmp_path_factory):
    model = perturbed_model("kinaema")
    config = model.config
    config.place_slots = 16
    torch.manual_seed(1)
    with_place = type(model)(config)
    with_place.load_state_dict(model.state_dict(), strict=False)
    with_place.place.write_below.fill_(0.999)  # random descriptors: write nearly all
    with_place.place.loop_min_age.fill_(5.0)  # and pull the pose at revisits
    with_place.place.loop_above.fill_(0.5)
    with_place.place.loop_gain.fill_(0.3)
    with_place.eval()
    return with_place, export_model(with_place, tmp_path_factory.mktemp("place"), "place")


def test_the_place_memory_is_memory_in_model_json_and_query_onnx_says_seen(place_export):
    _, model_dir = place_export
    meta = json.loads((model_dir / "model.json").read_text())
    roles = {s["name"]: s["role"] for s in meta["state"]}
    assert roles["place_keys"] == roles["place_poses"] == roles["place_age"] == "memory"
    assert meta["query"]["outputs"] == ["rel_pose", "log_var", "seen"]
    assert meta["query"]["inputs"][-4:] == [
        "state.place_keys",
        "state.place_poses",
        "state.place_age",
        "state.pose",
    ]


def test_runtime_matches_pytorch_with_a_place_memory(place_export):
    """Steps and queries (pose, log variance, seen) through ONNX agree with PyTorch."""
    model, model_dir = place_export
    rt = StudentRuntime(model_dir, providers=["CPUExecutionProvider"], warmup=0)
    no_revisits = copy.deepcopy(model)
    no_revisits.place.loop_gain.zero_()
    state, plain = model.initial_state(1), model.initial_state(1)
    seen_frames, worst, pulled = [], 0.0, 0.0
    there = list(camera_frames(15))
    for rgb, _, obs in stepped(rt, there + there[-2::-1]):  # out and back: revisits
        seen_frames.append(rgb)
        with torch.no_grad():
            state, _ = model.step(state, obs)
            plain, _ = no_revisits.step(plain, obs)
        for name, value in rt.state.items():
            worst = max(worst, np.abs(value - state[name].numpy()).max())
        pulled = max(pulled, float((state["pose"] - plain["pose"]).abs().max()))
    assert (rt.state["place_age"] >= 0).sum() > 1  # it wrote more than one place
    assert pulled > 1e-3  # and revisits moved the pose
    for rgb in (seen_frames[0], seen_frames[15], seen_frames[-1]):
        result = rt.query(rgb)
        with torch.no_grad():
            image = torch.from_numpy(rt.preprocess(rgb))
            pose, log_var, seen = model.query(state, image, reference_camera())
        pose = pose[0].double().numpy()
        pose[3:] /= np.linalg.norm(pose[3:])
        worst = max(worst, np.abs(result.pose - pose).max())
        worst = max(worst, abs(result.seen - float(seen)))
        assert 0.0 <= result.seen <= 1.0
    assert worst < 1e-4


def test_an_answer_about_an_unseen_place_carries_no_information():
    from std_msgs.msg import Header

    from latent_memory_ros.runtime import QueryResult

    pose = np.array([0.1, 0, 0, 0, 0, 0, 1.0])
    sure = query_answer(Header(), QueryResult(pose, np.full(6, -4.0), 1.0, seen=0.9))
    unsure = query_answer(Header(), QueryResult(pose, np.full(6, -4.0), 1.0, seen=0.2))
    assert np.isclose(sure.pose.covariance[0], np.exp(-4.0))
    assert unsure.pose.covariance[0] == unsure.pose.covariance[35] == UNSEEN_VARIANCE


def test_replaying_revisits_over_a_plain_rollout_is_a_rollout_with_them(place_export):
    """choose_revisits scores its grid by re-integrating the motions of one rollout
    without revisits: that must be what a rollout with them gives."""
    model, _ = place_export
    there = [
        cv2.resize(rgb, (128, 96), interpolation=cv2.INTER_AREA) for rgb, _ in camera_frames(12)
    ]
    images = np.stack(there + there[-2::-1])
    n = len(images)
    seq = PreparedSequence(
        name="out_and_back",
        images=images,
        cues=np.zeros((n, CUE_DIM), np.float32),
        odom=np.tile(np.asarray(ODOM_NONE, np.float32), (n, 1)),
        gt=np.tile(geometry.IDENTITY, (n, 1)),
        bias=np.zeros((n, 3), np.float32),
        stamps=np.arange(n) / 30.0,
        camera=reference_camera()[0].numpy(),
    )
    with_revisits = rollout_runs(model, [seq], use_odom=False)[0]
    gain = model.place.loop_gain.clone()
    model.place.loop_gain.zero_()
    plain = rollout_runs(model, [seq], use_odom=False)[0]
    model.place.loop_gain.copy_(gain)
    assert np.abs(with_revisits - plain).max() > 1e-3  # the revisits did something
    replayed = replay_revisits(model, describe_run(model, seq), plain, use_odom=False)
    assert np.abs(replayed - with_revisits).max() < 1e-4


def test_a_long_run_without_a_revisit_replays_to_itself_within_the_safe_ratio(place_export):
    """ "No run worse" compares a replay (float32 re-integration) with the plain rollout:
    a run that takes no revisit must pass it, not be refused for rounding."""
    model, _ = place_export
    rng = np.random.default_rng(0)
    n = 1800
    steps = np.zeros((n - 1, 7))
    steps[:, 0] = 0.01  # forward 1 cm a frame, turning a little: a drifting odometry
    steps[:, 3:7] = [[0, 0, np.sin(a / 2), np.cos(a / 2)] for a in rng.normal(0.003, 0.002, n - 1)]
    poses = [geometry.IDENTITY]
    for step in steps:
        poses.append(geometry.compose(poses[-1], step))
    poses = np.stack(poses)
    truth = poses.copy()
    truth[:, :2] *= 1.1  # the truth is elsewhere, so the ATE is not zero
    descriptors = torch.nn.functional.normalize(torch.randn(n, model.place.dim), dim=1)
    gain = model.place.loop_gain.clone()
    model.place.loop_gain.zero_()  # no pull: exactly what a setting that never matches does
    replayed = replay_revisits(model, descriptors, poses, use_odom=True)
    model.place.loop_gain.copy_(gain)
    stamps = np.arange(n) / 30.0
    ate = [trajectory_metrics(stamps, p, stamps, truth)["ate_rmse_m"] for p in (replayed, poses)]
    assert ate[0] != ate[1]  # the rounding is there (here 1 - 1e-5): why not exactly 1.0
    assert 1 / REVISIT_SAFE_RATIO <= ate[0] / ate[1] <= REVISIT_SAFE_RATIO


def test_the_place_command_adds_a_calibrated_place_memory_to_a_checkpoint(data, tmp_path):
    """`latent_memory_train place` on tiny runs: everything of the model kept, the place
    memory trained and calibrated, and the result exports with `seen`."""
    from latent_memory_training.cli import main
    from latent_memory_training.training.checkpoint import Checkpoint, load_model, save_checkpoint
    from latent_memory_training.training.config import TrainConfig

    base = perturbed_model("kinaema")
    save_checkpoint(tmp_path / "base.pt", base, None, Checkpoint(base.config, TrainConfig()))
    out = tmp_path / "place.pt"
    argv = ["place", "--checkpoint", str(tmp_path / "base.pt"), "--data", str(data / "train")]
    argv += ["--val", str(data / "val"), "--out", str(out), "--slots", "16", "--steps", "5"]
    assert main([*argv, "--revisit-val", str(data / "val")]) == 0
    model, saved = load_model(out)
    assert model.place is not None and model.place.slots == 16
    kept = base.state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in kept.items())
    measured = saved["history"][-1]["place"]
    assert 0.0 <= measured["recognition_recall"] <= 1.0
    assert float(model.place.write_below) == pytest.approx(measured["write_below"])
    revisits = measured["revisits"]
    assert len(revisits["trials"]) == 2 * (1 + len(REVISIT_GRID))  # none + grid
    # With odometry every setting is also replayed with perfect odometry, and the one
    # chosen (if any) keeps within what that may add.
    tried = [t for t in revisits["trials"] if t["odometry"] and "loop_above" in t]
    assert len(tried) == len(REVISIT_GRID)
    assert all(t["perfect_odometry_worst_ate_m"] >= t["perfect_odometry_ate_m"] >= 0 for t in tried)
    names = ("loop_above", "loop_gain", "loop_margin")
    for t in tried:
        if all(np.isclose(t[k], revisits[k][0]) for k in names):  # the chosen one
            assert t["perfect_odometry_ate_m"] <= REVISIT_PERFECT_ODOMETRY_M
    meta = json.loads((export_model(model, tmp_path / "m", "m") / "model.json").read_text())
    assert meta["query"]["outputs"][-1] == "seen"


def test_the_place_command_can_choose_revisits_alone_keeping_the_place_memory(data, tmp_path):
    """Without --data and --val only the revisits are chosen; everything else is kept."""
    from latent_memory_training.cli import main
    from latent_memory_training.training.checkpoint import Checkpoint, load_model, save_checkpoint
    from latent_memory_training.training.config import TrainConfig

    base = perturbed_model("kinaema")
    base.config.place_slots = 16
    torch.manual_seed(2)
    model = type(base)(base.config)
    model.load_state_dict(base.state_dict(), strict=False)
    model.place.write_below.fill_(0.7)
    save_checkpoint(tmp_path / "p.pt", model, None, Checkpoint(model.config, TrainConfig()))
    argv = ["place", "--checkpoint", str(tmp_path / "p.pt"), "--out", str(tmp_path / "r.pt")]
    with pytest.raises(SystemExit, match="nothing to do"):
        main(argv)
    with pytest.raises(SystemExit, match="together"):
        main([*argv, "--data", str(data / "train")])
    assert main([*argv, "--revisit-val", str(data / "val")]) == 0
    chosen, saved = load_model(tmp_path / "r.pt")
    revisit_buffers = {"place.loop_above", "place.loop_gain", "place.loop_margin"}
    for k, v in model.state_dict().items():
        if k not in revisit_buffers | {"place.loop_min_age"}:
            assert torch.equal(chosen.state_dict()[k], v), k
    assert set(saved["history"][-1]["place"]) == {"revisits"}
