"""Export parity: PyTorch and the ROS-free runtime agree over a 100-step rollout, and the
query graph answers like ``LocalisationModel.query`` without touching the state."""

import json
import shutil

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from latent_memory_ros import cues as cue_defs
from latent_memory_ros import geometry
from latent_memory_ros.evaluation import trajectory_metrics
from latent_memory_ros.model_format import ModelError, file_sha256, load_spec
from latent_memory_ros.runtime import StudentRuntime
from latent_memory_training.export.onnx_export import export_model, reference_camera
from latent_memory_training.models.cells import CELLS
from latent_memory_training.models.config import ModelConfig
from latent_memory_training.models.student import LocalisationModel

EXPORTABLE = sorted(name for name, cls in CELLS.items() if cls.exportable)


def perturbed_model(cell: str) -> LocalisationModel:
    """A model whose zero-initialised heads and cell weights are perturbed: with zeros
    there, parity would hold trivially for them."""
    torch.manual_seed(0)
    model = LocalisationModel(ModelConfig(cell=cell))
    with torch.no_grad():
        heads = (model.delta, model.log_var, model.speed)
        for layer in (*heads, model.query_pose, model.query_log_var):
            layer.weight.normal_(0.0, 0.05)
        for p in model.cell.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """``export(cell)``: the cell's perturbed model and its export, made once per module."""
    made = {}

    def export(cell: str):
        if cell not in made:
            model = perturbed_model(cell)
            made[cell] = model, export_model(model, tmp_path_factory.mktemp(cell), f"parity-{cell}")
        return made[cell]

    return export


@pytest.fixture(scope="module")
def exported(exports):
    return exports("kinaema")


def _frames(n: int):
    """A camera panning over a real photo, with odometry that roughly agrees."""
    photo = cv2.resize(skimage.data.astronaut(), (960, 720))
    rng = np.random.default_rng(0)
    for t in range(n):
        x = 40 + 2 * t
        rgb = np.ascontiguousarray(photo[60:540, x : x + 640])
        odom = np.concatenate(
            [rng.normal(0, 0.01, 3), geometry.rotvec_to_quat(rng.normal(0, 0.01, 3))]
        )
        yield rgb, (None if t == 0 else odom)


def _stepped(rt: StudentRuntime, frames):
    """Each frame stepped through the runtime, with the observation the PyTorch model
    needs for the same frame (the runtime's pre-processing and cues): (rgb, result, obs)."""
    cfg = cue_defs.CueConfig()
    k = cue_defs.scale_intrinsics(np.array(rt.spec.intrinsics), cfg.width / rt.spec.image_width)
    prev = None
    for rgb, odom in frames:
        res = rt.step(rgb, odom_motion=odom, dt=1 / 30)
        gray = cue_defs.to_gray(rgb, cfg)
        obs = {
            "image": torch.from_numpy(rt.preprocess(rgb)),
            "odom": torch.tensor(
                [[*(odom if odom is not None else [0, 0, 0, 0, 0, 0, 1]), float(odom is not None)]]
            ).float(),
            "dt": torch.tensor([[1 / 30]]),
            "cues": torch.from_numpy(cue_defs.two_view_cues(prev, gray, k, cfg))[None],
            "camera": reference_camera(),
        }
        prev = gray
        yield rgb, res, obs


@pytest.mark.parametrize("cell", EXPORTABLE)
def test_runtime_matches_pytorch_over_100_steps(cell, exports):
    model, model_dir = exports(cell)
    rt = StudentRuntime(model_dir, providers=["CPUExecutionProvider"])
    state = model.initial_state(1)
    worst = 0.0
    for _, res, obs in _stepped(rt, _frames(100)):
        with torch.no_grad():
            state, out = model.step(state, obs)
        worst = max(worst, np.abs(res.log_var - out["log_var"][0].numpy()).max())
        worst = max(worst, np.abs(res.pose - out["pose"][0].double().numpy()).max())
        for name, value in rt.state.items():
            worst = max(worst, np.abs(value - state[name].numpy()).max())
    assert rt.spec.cell == cell and set(rt.state) == set(state)
    assert worst < 1e-4
    assert rt.frames == 100


def test_reset_restores_the_initial_state(exported):
    _, model_dir = exported
    rt = StudentRuntime(model_dir, providers=["CPUExecutionProvider"], warmup=0)
    initial = rt.state
    for rgb, odom in _frames(5):
        rt.step(rgb, odom_motion=odom)
    assert not np.allclose(rt.state["pose"], initial["pose"])
    rt.reset()
    for name, value in rt.state.items():
        np.testing.assert_array_equal(value, initial[name])


def _broken_copy(src, tmp_path, edit):
    dst = tmp_path / "broken"
    shutil.copytree(src, dst)
    meta = json.loads((dst / "model.json").read_text())
    edit(meta, dst)
    (dst / "model.json").write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m, d: m.pop("image"), "field 'image.encoding'"),
        (lambda m, d: m.update(format="other/9"), "field 'format'"),
        (lambda m, d: m["state"][0].update(shape=[1, 3, 3]), "state.memory"),
        (lambda m, d: m["state"].pop(), "state.bias"),
        (lambda m, d: m["sha256"].update({"step.onnx": "0" * 64}), "sha256"),
        (lambda m, d: m.update(inputs_optional=["odom", "dt"]), "inputs_optional"),
        (lambda m, d: (d / "step.onnx").unlink(), "step.onnx: file missing"),
        (lambda m, d: m["sha256"].update({"query.onnx": "0" * 64}), "query.onnx: sha256"),
        (lambda m, d: m["sha256"].pop("query.onnx"), "field 'sha256.query.onnx' missing"),
        (lambda m, d: (d / "query.onnx").unlink(), "query.onnx: file missing"),
        (lambda m, d: m["query"].update(inputs=["image", "state.nope"]), "'query.inputs'"),
        (lambda m, d: m["query"].update(inputs=["image", "state.pose"]), "'query.inputs'"),
        (lambda m, d: m["query"].update(inputs=["image"]), "'query.inputs'"),
        (lambda m, d: m["query"]["inputs"].append("state.memory"), "repeats"),
        (lambda m, d: m["query"].update(file="../step.onnx"), "'query.file'"),
        (lambda m, d: m["query"].pop("inputs"), "'query.inputs'"),
        (lambda m, d: m["state"][1].update(role="memroy"), ".role' is 'memroy'"),
        (lambda m, d: m.update(tracking={"uncertain_sigma_m": 1e-3}), "'tracking.lost_sigma_m'"),
        (
            lambda m, d: m.update(tracking={"uncertain_sigma_m": 0.0, "lost_sigma_m": 1.0}),
            "'tracking.uncertain_sigma_m' must be positive",
        ),
        (
            lambda m, d: m.update(tracking={"uncertain_sigma_m": 2.0, "lost_sigma_m": 1.0}),
            "'tracking.uncertain_sigma_m' must be below",
        ),
    ],
)
def test_bad_model_is_refused_with_a_message_naming_the_field(exported, tmp_path, edit, message):
    _, model_dir = exported
    broken = _broken_copy(model_dir, tmp_path, edit)
    with pytest.raises(ModelError, match=message.replace(".", r"\.")):
        StudentRuntime(broken, providers=["CPUExecutionProvider"], warmup=0)


def test_missing_model_directory(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        StudentRuntime(tmp_path / "nope", providers=["CPUExecutionProvider"])


# Queries ------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", EXPORTABLE)
def test_query_graph_is_declared_in_model_json(cell, exports):
    """Every exportable cell has a query graph that takes the state entries its memory
    view reads: its slots, or the entries its projection reads (no partial buffers)."""
    _, model_dir = exports(cell)
    meta = json.loads((model_dir / "model.json").read_text())
    entries = {
        "kinaema": ["memory"],
        "tlb": ["slow"],
        "crt": ["memory"],
        "relit": ["kv", "norm"],
        "arelit": ["keys", "values", "norm"],
        "gru": ["hidden"],
    }[cell]
    assert meta["query"]["file"] == "query.onnx"
    assert meta["query"]["inputs"] == ["image", "camera", *(f"state.{k}" for k in entries)]
    assert meta["query"]["outputs"] == ["rel_pose", "log_var"]
    assert meta["sha256"]["query.onnx"] == file_sha256(model_dir / "query.onnx")
    assert meta["sha256"]["step.onnx"] == file_sha256(model_dir / "step.onnx")


@pytest.mark.parametrize("cell", EXPORTABLE)
def test_query_matches_pytorch_after_rolling_steps(cell, exports):
    """Queries of earlier frames, asked every few steps of a rollout, agree with
    ``LocalisationModel.query`` on the PyTorch state within 1e-4, for every cell."""
    model, model_dir = exports(cell)
    rt = StudentRuntime(model_dir, providers=["CPUExecutionProvider"], warmup=0)
    assert rt.supports_query
    state = model.initial_state(1)
    seen, worst, asked = [], 0.0, 0
    for t, (rgb, _, obs) in enumerate(_stepped(rt, _frames(24))):
        seen.append(rgb)
        with torch.no_grad():
            state, _ = model.step(state, obs)
        if t % 6 != 5:
            continue
        for query_rgb in (seen[0], seen[t // 2], rgb):
            result = rt.query(query_rgb)
            with torch.no_grad():
                image = torch.from_numpy(rt.preprocess(query_rgb))
                pose, log_var = model.query(state, image, reference_camera())
            pose = pose[0].double().numpy()
            pose[3:] /= np.linalg.norm(pose[3:])
            worst = max(worst, np.abs(result.pose - pose).max())
            worst = max(worst, np.abs(result.log_var - log_var[0].numpy()).max())
            asked += 1
            # A perturbed model answers something other than the untrained identity.
            assert np.abs(result.pose[:3]).max() > 1e-3
            assert np.isclose(np.linalg.norm(result.pose[3:]), 1.0)
    assert asked == 12 and worst < 1e-4


def test_queries_do_not_change_the_state(exported):
    """A run with queries interleaved gives the same poses and state as one without."""
    _, model_dir = exported
    plain = StudentRuntime(model_dir, providers=["CPUExecutionProvider"], warmup=0)
    asked = StudentRuntime(model_dir, providers=["CPUExecutionProvider"], warmup=0)
    frames = list(_frames(12))
    for t, (rgb, odom) in enumerate(frames):
        expected = plain.step(rgb, odom_motion=odom, dt=1 / 30)
        before = asked.state
        for query_rgb, _ in frames[: t + 1 : 3]:
            asked.query(query_rgb)
        asked.query(cv2.resize(rgb, (320, 240)))  # any size, like step's frames
        for name, value in asked.state.items():
            np.testing.assert_array_equal(value, before[name])
        got = asked.step(rgb, odom_motion=odom, dt=1 / 30)
        np.testing.assert_array_equal(got.pose, expected.pose)
        np.testing.assert_array_equal(got.log_var, expected.log_var)
    assert asked.frames == plain.frames == 12
    # An explicit state is read instead of the carried one, and not changed either.
    snapshot = asked.state
    fresh = StudentRuntime(model_dir, providers=["CPUExecutionProvider"], warmup=0)
    from_snapshot = fresh.query(frames[0][0], state=snapshot)
    np.testing.assert_array_equal(from_snapshot.pose, asked.query(frames[0][0]).pose)
    assert fresh.frames == 0


def test_a_model_without_a_query_graph_loads_and_says_so(exported, tmp_path):
    """Models exported before query.onnx (like the shipped default) stay valid."""
    _, model_dir = exported

    def drop_query(meta, d):
        meta.pop("query")
        meta["sha256"].pop("query.onnx")
        (d / "query.onnx").unlink()

    old = _broken_copy(model_dir, tmp_path, drop_query)
    rt = StudentRuntime(old, providers=["CPUExecutionProvider"], warmup=0)
    assert not rt.supports_query
    with pytest.raises(ModelError, match="has no query graph"):
        rt.query(np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        StudentRuntime(model_dir, providers=["CPUExecutionProvider"], warmup=0).query(
            np.zeros((48, 64), np.uint8)
        )


def test_export_cli_writes_heldout_and_distillation_metrics_into_model_json(tmp_path, capsys):
    """`export --heldout --distillation` summarises the two result files into model.json:
    the held-out summary and calibration, and the distilled model's gap closed beside
    the compared models' ATE and query recall."""
    from latent_memory_training.cli import main

    mode = {"ate_rmse_m": 0.1, "ate_sim3_rmse_m": 0.09, "rpe_trans_m": 1e-3, "rpe_rot_deg": 0.08}
    mode |= {"per_sequence_ate_m": [0.1], "query": {"recall_0.25m_5deg": 0.02}}
    mode |= {"reset": {"ate_rmse_m": 0.125}, "memory_gain": 0.2, "ratio": {"worst": 1.4}}
    model = {"cell": "kinaema", "step": 600, "odom": mode, "images": mode}
    compare = {
        "sequences": 20,
        "frames": 1800,
        "models": {"teacher": model, "student": model, "distilled_cosine": model},
        "gap_closed": {"distilled_cosine": {"odom": 1.15, "images": 0.2}},
    }
    heldout = {
        "summary": {
            "original": {
                "model_odom": {"ate_rmse_m": 0.15},
                "model_odom_reset": {"ate_rmse_m": 0.2},
                "memory_gain": {"model_odom": 0.25},
                "ratio": {"model_odom": {"worst": 2.5, "worst_sequence": "test_001"}},
            }
        },
        "calibration": {
            "original": {
                "model_odom": {"sigma_trans_m": {"p99": 1e-3, "p99.9": 2e-3}},
                "model_images": {"sigma_trans_m": {"p99": 4e-3, "p99.9": 8e-3}},
            }
        },
        "per_sequence": [{"sequence": "test_000"}, {"sequence": "test_001"}],
    }
    (tmp_path / "compare.json").write_text(json.dumps(compare))
    (tmp_path / "heldout.json").write_text(json.dumps(heldout))
    out = tmp_path / "model"
    args = [
        "export",
        "--random-init",
        "--out",
        str(out),
        "--heldout",
        str(tmp_path / "heldout.json"),
    ]
    args += ["--distillation", str(tmp_path / "compare.json"), "--distilled", "distilled_cosine"]
    assert main(args) == 0
    metrics = json.loads((out / "model.json").read_text())["metrics"]
    # The tracking thresholds follow the model's own held-out sigma: UNCERTAIN above the
    # p99 with odometry, LOST above max(5 x its p99.9, 1.5 x the p99.9 images only).
    assert load_spec(out).tracking == {"uncertain_sigma_m": 1e-3, "lost_sigma_m": 0.012}
    assert metrics["heldout"]["sequences"] == 2
    assert metrics["heldout"]["summary"] == heldout["summary"]
    assert metrics["heldout"]["summary"]["original"]["memory_gain"]["model_odom"] == 0.25
    assert metrics["heldout"]["summary"]["original"]["ratio"]["model_odom"]["worst"] == 2.5
    assert metrics["distillation"]["gap_closed"] == {"odom": 1.15, "images": 0.2}
    assert (
        metrics["distillation"]["models"]["student"]["odom"]["query"]["recall_0.25m_5deg"] == 0.02
    )
    student = metrics["distillation"]["models"]["student"]["odom"]
    assert "per_sequence_ate_m" not in student
    assert student["memory_gain"] == 0.2 and student["ratio"]["worst"] == 1.4
    args[-1] = "distilled"  # not among the compared models: a clear error
    assert main(args) == 2
    assert "'distilled' has no gap_closed" in capsys.readouterr().err


# The memory ablation ------------------------------------------------------------------


@pytest.mark.parametrize("cell", EXPORTABLE)
def test_state_roles_say_which_entries_are_the_memory(cell, exports):
    """Every state entry of the cell is role memory; the pose and the drift filter not."""
    model, model_dir = exports(cell)
    roles = {s.name: s.role for s in load_spec(model_dir).state}
    assert roles == {**dict.fromkeys(model.cell.state_shapes, "memory"), "pose": "pose",
                     "bias": "filter", "bias_certainty": "filter"}  # fmt: skip


def test_a_model_json_without_roles_keeps_pose_and_bias_out_of_the_memory(exported, tmp_path):
    _, model_dir = exported

    def drop_roles(meta, d):
        for entry in meta["state"]:
            entry.pop("role")

    spec = load_spec(_broken_copy(model_dir, tmp_path, drop_roles))
    assert spec.memory_state == ("memory",)
    assert [s.role for s in spec.state] == ["memory", "pose", "filter", "filter"]


def test_memory_reset_before_every_frame_keeps_the_pose_and_the_filter(exported):
    """``run(reset_memory=True)``: before every step the memory is the initial one, while
    the integrated pose and the drift filter carry on from the previous step; the first
    frame is the carried run's, later ones differ without odometry (the perturbed memory
    matters there)."""
    _, model_dir = exported
    rt = StudentRuntime(model_dir, providers=["CPUExecutionProvider"], warmup=0)
    initial = rt.state
    frames = list(_frames(8))
    motions = np.array([geometry.IDENTITY if m is None else m for _, m in frames])
    run_args = ([(t / 30, rgb) for t, (rgb, _) in enumerate(frames)], geometry.integrate(motions))
    carried = rt.run(*run_args, base_to_camera=geometry.IDENTITY)
    rt.forget_memory()  # after a run: only the memory goes back
    np.testing.assert_array_equal(rt.state["memory"], initial["memory"])
    np.testing.assert_allclose(rt.state["pose"][0], carried.poses[-1], atol=1e-6)
    assert rt.frames == 8

    seen = []
    step = rt.step

    def recording_step(*args, **kwargs):
        before = rt.state
        result = step(*args, **kwargs)
        seen.append((before, rt.state))
        return result

    rt.step = recording_step
    reset = rt.run(*run_args, base_to_camera=geometry.IDENTITY, reset_memory=True)
    assert len(seen) == 8
    for t, (before, _) in enumerate(seen):
        np.testing.assert_array_equal(before["memory"], initial["memory"])
        previous = seen[t - 1][1] if t else initial
        for name in ("pose", "bias"):
            np.testing.assert_array_equal(before[name], previous[name])
    assert np.abs(seen[-1][1]["bias"]).max() > 0  # the filter moved
    assert np.linalg.norm(reset.poses[-1, :3]) > 0.01  # the pose integrated the motions
    np.testing.assert_allclose(reset.poses[0], carried.poses[0], atol=1e-6)
    # With odometry the memory has no say (only the drift filter corrects it); without,
    # the perturbed memory shapes the motion.
    rt.step = step
    images = [(t / 30, rgb) for t, (rgb, _) in enumerate(frames)]
    carried, reset = rt.run(images), rt.run(images, reset_memory=True)
    np.testing.assert_allclose(reset.poses[0], carried.poses[0], atol=1e-6)
    assert np.abs(reset.poses[1:] - carried.poses[1:]).max() > 1e-4


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One tiny held-out render (40 frames at 160x120)."""
    from latent_memory_training.data.generate import render_sequence

    path = tmp_path_factory.mktemp("heldout") / "test_000.npz"
    render_sequence("test", 0, seed=3, frames=40, size=(160, 120)).save(path)
    return path


def test_heldout_reports_memory_gain_per_run_ratios_and_query_recall(exported, rendered):
    from latent_memory_training.benchmark.heldout import (
        _evaluate_file,
        evaluate,
        markdown_table,
        memory_table,
        summarise,
    )

    _, model_dir = exported
    result = evaluate(model_dir, [rendered], mirrored=False, query_every=10, query_min_gap=10)
    (row,) = result["per_sequence"]
    s = result["summary"]["original"]
    for m, base in (("model_odom", "odometry"), ("model_images", "no_motion")):
        carried, reset = s[m]["ate_rmse_m"], s[f"{m}_reset"]["ate_rmse_m"]
        if m == "model_odom":  # with odometry the memory has no say (the drift filter has)
            assert carried == pytest.approx(reset, rel=1e-6)
        else:
            assert carried != reset
        assert s["memory_gain"][m] == pytest.approx(1 - carried / reset)
        assert row["memory_gain"][m] == pytest.approx(s["memory_gain"][m])  # one run
        assert row["ratio"][m] == pytest.approx(row[m]["ate_rmse_m"] / row[base]["ate_rmse_m"])
        ratio = s["ratio"][m]
        assert ratio["baseline"] == base and ratio["worst"] == pytest.approx(row["ratio"][m])
        assert ratio["worst_sequence"] == row["sequence"]
        assert ratio["worse"] == int(row["ratio"][m] > 1) and ratio["sequences"] == 1
    runs = {"identity", "model_odom", "model_images", "model_odom_reset", "model_images_reset"}
    assert set(s["query"]) == set(row["query"]) == runs
    assert all(q["queries"] == 3 for q in s["query"].values())  # frames 0, 10, 20 at 39
    assert s["query"]["model_odom"]["median_m"] != s["query"]["identity"]["median_m"]
    assert not {"_query_errors", "query_errors"} & set(row)
    json.dumps(result)  # what `heldout` writes
    table = memory_table(result)
    assert f"| {s['memory_gain']['model_odom']:.3f} |" in table
    assert f"({row['sequence']})" in table
    assert "images only, memory reset every frame" in markdown_table(result)

    # --no-ablation: no reset runs, the table says so.
    rows = _evaluate_file((model_dir, rendered, False, {"ablation": False}))
    plain = summarise(rows)
    assert "model_odom_reset" not in plain and "memory_gain" not in plain
    assert plain["model_odom"]["ate_rmse_m"] == pytest.approx(s["model_odom"]["ate_rmse_m"])
    assert "| — |" in memory_table({"summary": {"original": plain}})


def test_pytorch_memory_reset_matches_the_runtime(exported, rendered):
    """``compare``'s ablation (PyTorch: the cell's initial state before every step) and
    the runtime's ``reset_memory`` run give the same ATE, carried and reset; ``compare``'s
    table shows the gain and the worst run's ratio."""
    from latent_memory_training.benchmark.distillation import evaluate_modes, table
    from latent_memory_training.benchmark.heldout import run_model
    from latent_memory_training.data.prepare import prepare
    from latent_memory_training.data.sequence import Sequence

    model, model_dir = exported
    seq = Sequence.load(rendered)
    prepared = prepare(seq, model.config.image_width, model.config.image_height)
    modes = evaluate_modes(model, [prepared], query_every=10, query_min_gap=10)
    rt = StudentRuntime(model_dir, providers=["CPUExecutionProvider"], warmup=0)
    for mode, use_odom in (("odom", True), ("images", False)):
        r = modes[mode]
        for reset, ate in ((False, r["ate_rmse_m"]), (True, r["reset"]["ate_rmse_m"])):
            poses = run_model(rt, seq, use_odom, reset_memory=reset).poses
            expected = trajectory_metrics(seq.stamps, poses, seq.stamps, seq.gt_camera)
            assert ate == pytest.approx(expected["ate_rmse_m"], rel=1e-3)
        assert r["memory_gain"] == pytest.approx(1 - r["ate_rmse_m"] / r["reset"]["ate_rmse_m"])
        assert r["ratio"]["baseline"] == ("odometry" if use_odom else "no_motion")
        assert r["ratio"]["worst"] == pytest.approx(r["ratio"]["mean"])  # one run
    shown = table({"models": {"perturbed": {"cell": "kinaema", "step": 0, **modes}}})
    assert f"| {modes['odom']['memory_gain']:.3f} |" in shown
    assert f"({prepared.name}) vs odometry" in shown
