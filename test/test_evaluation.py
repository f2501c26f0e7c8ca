"""Offline evaluation: metrics equal what evo's own CLI prints for the files we write."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import BASE_TO_CAMERA, REPO, write_test_bag

from latent_memory_ros import geometry, runtime
from latent_memory_ros.evaluation import (
    main,
    memory_gain,
    no_motion_metrics,
    query_errors,
    query_indices,
    query_recall,
    ratio_to_baseline,
    trajectory_metrics,
    uncertainty_calibration,
)
from latent_memory_ros.tum import write_trajectory

EVO_RTOL = 1e-6
METRIC_KEYS = {
    "frames",
    "frames_with_pose",
    "ate_rmse_m",
    "ate_sim3_rmse_m",
    "rpe_trans_m",
    "rpe_rot_deg",
    "step_ms_p50",
    "step_ms_p99",
    "no_motion_ate_rmse_m",
    "model",
    "bag",
    "providers",
}
ODOM_KEYS = {"odom_ate_rmse_m", "odom_rpe_trans_m", "odom_rpe_rot_deg"}


def evo_rmse(tool: str, gt: Path, est: Path, *flags: str) -> float:
    """The RMSE that ``evo_ape`` / ``evo_rpe`` computes for two TUM files."""
    # evo is a dependency: its CLI sits beside this interpreter even when the venv is not
    # activated (make test runs .venv/bin/python directly).
    beside = Path(sys.executable).parent / tool
    exe = str(beside) if beside.is_file() else shutil.which(tool)
    assert exe is not None, f"{tool} (evo's CLI) not found beside {sys.executable} or on PATH"
    results = est.with_name(f"{tool}{''.join(flags)}.zip")
    results.unlink(missing_ok=True)
    subprocess.run(
        [exe, "tum", str(gt), str(est), *flags, "--save_results", str(results), "--no_warnings"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with zipfile.ZipFile(results) as z:
        return float(json.loads(z.read("stats.json"))["rmse"])


def assert_matches_evo_cli(metrics: dict, gt: Path, est: Path, prefix: str = "") -> None:
    expected = {
        "ate_rmse_m": evo_rmse("evo_ape", gt, est, "-a"),
        "ate_sim3_rmse_m": evo_rmse("evo_ape", gt, est, "-as"),
        "rpe_trans_m": evo_rmse("evo_rpe", gt, est),
        "rpe_rot_deg": evo_rmse("evo_rpe", gt, est, "-r", "angle_deg"),
    }
    for key, value in expected.items():
        assert metrics[prefix + key] == pytest.approx(value, rel=EVO_RTOL), key


def loop_trajectory(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A camera driving a wobbly loop with yaw along it, 30 Hz stamps."""
    rng = np.random.default_rng(seed)
    angle = np.linspace(0.0, 2.2 * np.pi, n)
    poses = np.zeros((n, 7))
    poses[:, 0] = 3.0 * np.sin(angle) + rng.normal(0, 0.01, n)
    poses[:, 1] = 2.0 * (1.0 - np.cos(angle))
    poses[:, 2] = 0.8 + 0.05 * np.sin(5 * angle)
    poses[:, 3:] = np.stack(
        [geometry.euler_to_quat(rng.normal(0, 0.02), rng.normal(0, 0.05), a) for a in angle]
    )
    return 1_700_000_000.0 + np.arange(n) / 30.0, poses


def test_trajectory_metrics_match_evo_cli(tmp_path: Path) -> None:
    stamps, gt = loop_trajectory(300)
    rng = np.random.default_rng(1)
    # The estimate: another frame, another scale, drifting yaw, noise, a gap and NaNs.
    drift = geometry.integrate(
        np.tile(np.array([0.0, 0.0, 0.0, *geometry.euler_to_quat(0, 0, 2e-3)]), (300, 1))
    )
    est = geometry.compose(drift, gt)
    est[:, :3] *= 0.8
    est[:, :3] += rng.normal(0, 0.03, (300, 3))
    est = geometry.compose(np.array([5.0, -2.0, 1.0, *geometry.euler_to_quat(0.1, -0.2, 1.0)]), est)
    keep = np.ones(300, bool)
    keep[100:110] = False
    est[200:203] = np.nan

    metrics = trajectory_metrics(stamps[keep], est[keep], stamps, gt)

    write_trajectory(tmp_path / "gt.tum", stamps, gt)
    write_trajectory(tmp_path / "est.tum", stamps[keep], est[keep])
    assert len((tmp_path / "est.tum").read_text().splitlines()) == 287  # NaN rows left out
    assert metrics["matched_poses"] == 287
    assert metrics["alignment"] == "SE(3)"
    assert metrics["ate_sim3_rmse_m"] < metrics["ate_rmse_m"]
    assert_matches_evo_cli(metrics, tmp_path / "gt.tum", tmp_path / "est.tum")


def test_perfect_estimate_scores_zero() -> None:
    stamps, gt = loop_trajectory(50)
    moved = geometry.compose(np.array([1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0]), gt)
    metrics = trajectory_metrics(stamps, moved, stamps, gt)
    for key in ("ate_rmse_m", "ate_sim3_rmse_m", "rpe_trans_m", "rpe_rot_deg"):
        assert metrics[key] == pytest.approx(0.0, abs=1e-6)


def test_no_motion_is_the_spread_of_the_ground_truth(tmp_path: Path) -> None:
    stamps, gt = loop_trajectory(120)
    metrics = no_motion_metrics(stamps, stamps, gt)

    spread = np.sqrt(np.mean(np.sum((gt[:, :3] - gt[:, :3].mean(axis=0)) ** 2, axis=1)))
    assert metrics["alignment"] == "translation"
    assert metrics["ate_rmse_m"] == pytest.approx(spread, rel=1e-9)
    # evo's CLI on the same constant pose placed at the centroid, without alignment.
    constant = np.tile([*gt[:, :3].mean(axis=0), 0.0, 0.0, 0.0, 1.0], (len(stamps), 1))
    write_trajectory(tmp_path / "gt.tum", stamps, gt)
    write_trajectory(tmp_path / "still.tum", stamps, constant)
    evo_ate = evo_rmse("evo_ape", tmp_path / "gt.tum", tmp_path / "still.tum")
    assert metrics["ate_rmse_m"] == pytest.approx(evo_ate, rel=EVO_RTOL)
    assert metrics["rpe_trans_m"] == pytest.approx(
        evo_rmse("evo_rpe", tmp_path / "gt.tum", tmp_path / "still.tum"), rel=EVO_RTOL
    )


def test_too_few_matches_is_an_error() -> None:
    stamps, gt = loop_trajectory(10)
    with pytest.raises(ValueError, match="matches the ground truth"):
        trajectory_metrics(stamps + 5.0, gt, stamps, gt)
    with pytest.raises(ValueError, match="only 2 poses match"):
        trajectory_metrics(stamps[:2], gt[:2], stamps, gt)


def noisy_motions(
    gt: np.ndarray, sigma: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """An estimate whose every frame's motion (previous camera frame) errs by Gaussian
    noise of the given per-frame, per-axis sigma ``(N, 6)``; and its log variance."""
    noise = rng.normal(size=sigma.shape) * sigma
    motion = geometry.relative(gt[:-1], gt[1:])
    noisy = np.concatenate(
        [
            motion[:, :3] + noise[1:, :3],
            geometry.quat_multiply(geometry.rotvec_to_quat(noise[1:, 3:]), motion[:, 3:]),
        ],
        axis=1,
    )
    est = geometry.integrate(np.vstack([gt[:1], noisy]))
    return est, np.log(sigma**2)


def straight_run(n: int) -> np.ndarray:
    """A camera driving 1 cm per frame along its optical axis: its axes never turn, so
    the random-walk sigma of a window is exact."""
    poses = np.tile(geometry.IDENTITY, (n, 1))
    poses[:, 2] = 0.01 * np.arange(n)
    return poses


def per_frame_sigma(n: int, rng: np.random.Generator) -> np.ndarray:
    """Per-axis sigmas (a few mm, a few mrad) that change from frame to frame by up to e."""
    base = np.array([0.002, 0.001, 0.004, 0.0005, 0.002, 0.0003])
    return base * np.exp(rng.uniform(-1.0, 1.0, size=(n, 6)))


GAUSSIAN_1, GAUSSIAN_2 = 0.6827, 0.9545


def test_query_recall_counts_answers_within_both_thresholds() -> None:
    """Errors are measured in the target camera's frame; an answer counts only when both
    its translation and its rotation error are under a threshold."""
    target = np.array([geometry.compose(geometry.IDENTITY, [1.0, 0, 2.0, 0, 0, 0, 1])] * 4)
    yaw = lambda deg: geometry.rotvec_to_quat(np.array([0.0, np.radians(deg), 0.0]))  # noqa: E731
    pred = target.copy()
    pred[1, 0] += 0.3  # 0.3 m off: only within 0.5 m
    pred[2] = geometry.compose(target[2], np.r_[0.0, 0, 0, yaw(7.0)])  # 7 deg off
    pred[3] = geometry.compose(target[3], np.r_[0.6, 0, 0, yaw(1.0)])  # 0.6 m off: neither
    trans, rot = query_errors(pred, target)
    np.testing.assert_allclose(trans, [0.0, 0.3, 0.0, 0.6], atol=1e-9)
    np.testing.assert_allclose(rot, [0.0, 0.0, 7.0, 1.0], atol=1e-6)
    assert query_recall(trans, rot) == {"recall_0.25m_5deg": 0.25, "recall_0.5m_10deg": 0.75}


def test_queries_are_earlier_frames_at_least_min_gap_before_the_last() -> None:
    np.testing.assert_array_equal(query_indices(100, 30, 30), [0, 30, 60])
    np.testing.assert_array_equal(query_indices(61, 30, 30), [0, 30])
    assert len(query_indices(20, 5, 30)) == 0


def test_memory_gain_and_per_run_ratios() -> None:
    """The gain is the share of the reset error that carrying the memory removes; the
    ratio summary names the worst run and counts the runs worse than the baseline."""
    assert memory_gain(0.15, 0.2) == pytest.approx(0.25)
    assert memory_gain(0.2, 0.2) == 0.0 and memory_gain(0.3, 0.2) == pytest.approx(-0.5)
    ratio = ratio_to_baseline(["a", "b", "c"], [0.1, 0.5, 0.3], [0.2, 0.2, 0.3], "odometry")
    assert ratio == {
        "baseline": "odometry",
        "sequences": 3,
        "mean": pytest.approx((0.5 + 2.5 + 1.0) / 3),
        "median": pytest.approx(1.0),
        "worst": pytest.approx(2.5),
        "worst_sequence": "b",
        "worse": 1,  # equal to the baseline is not worse
    }


def test_demo_memory_ablation_runs_the_bag_carried_and_reset(
    tmp_path: Path, model_dir: Path
) -> None:
    """The demo's memory gain comes from the bag's frames through the runtime twice: its
    carried ATE is what latent_memory_eval measures on the same bag; images only (where
    the shipped model's memory shapes the motion: with odometry it has no say) the reset
    run differs."""
    from latent_memory_ros.bag import read_run
    from latent_memory_ros.evaluation import BAG_GT_TOPIC as GT_TOPIC
    from latent_memory_ros.evaluation import BAG_IMAGE_TOPIC as IMAGE_TOPIC
    from latent_memory_ros.evaluation import memory_ablation

    ODOM_TOPIC = "/odom"
    write_test_bag(tmp_path / "bag", frames=30, size=(64, 48))
    run = read_run(tmp_path / "bag", IMAGE_TOPIC, gt_topic=GT_TOPIC, odom_topic=ODOM_TOPIC)
    got = memory_ablation(run, model_dir, ["CPUExecutionProvider"])
    args = eval_args(tmp_path / "bag", tmp_path / "out", "--odom-topic", ODOM_TOPIC)
    args += ["--providers", "CPUExecutionProvider"]
    args[args.index("--model") + 1] = str(model_dir)
    assert main(args) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert got["memory_carried_ate_rmse_m"] == pytest.approx(metrics["ate_rmse_m"], rel=1e-9)
    assert got["memory_gain"] == pytest.approx(
        1 - got["memory_carried_ate_rmse_m"] / got["memory_reset_ate_rmse_m"]
    )
    images = memory_ablation(run, model_dir, ["CPUExecutionProvider"], odometry=False)
    assert images["memory_reset_ate_rmse_m"] != images["memory_carried_ate_rmse_m"]
    assert images["memory_carried_ate_rmse_m"] != got["memory_carried_ate_rmse_m"]


def test_demo_runs_from_the_repository_not_the_package() -> None:
    """tools/demo.py (make demo) is developer tooling: a script beside the package, which
    no longer installs it or a console script for it."""
    from latent_memory_ros import evaluation

    assert not (Path(evaluation.__file__).parent / "demo.py").exists()
    assert "latent_memory_demo" not in (REPO / "setup.py").read_text()
    shown = subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "--reuse-bag" in shown.stdout
    assert evaluation.memory_ablation.__module__ == "latent_memory_ros.evaluation"


def test_calibration_of_gaussian_errors_matches_the_gaussian_shares() -> None:
    rng = np.random.default_rng(3)
    # Per frame the error model is exact on any trajectory, here a turning loop.
    _, loop = loop_trajectory(6001)
    sigma = per_frame_sigma(len(loop), rng)
    est, log_var = noisy_motions(loop, sigma, rng)
    result = uncertainty_calibration(loop, est, log_var, windows=(1,))
    one = result["windows"]["1"]
    assert one["windows"] == 6000
    for part in ("translation", "rotation"):
        assert one[part]["samples"] == 18000
        assert one[part]["within_1sigma"] == pytest.approx(GAUSSIAN_1, abs=0.015), part
        assert one[part]["within_2sigma"] == pytest.approx(GAUSSIAN_2, abs=0.01), part
        assert one[part]["rms"] == pytest.approx(1.0, abs=0.03), part
    assert result["gaussian"]["within_1sigma"] == pytest.approx(GAUSSIAN_1, abs=1e-4)
    # Sigma percentiles are of the per-frame sigmas, frame 0 (no motion) left out.
    trans = np.sqrt(np.mean(sigma[1:, :3] ** 2, axis=1))
    rot = np.sqrt(np.mean(sigma[1:, 3:] ** 2, axis=1))
    for q in (50, 90, 99, 99.9):
        assert result["sigma_trans_m"][f"p{q:g}"] == pytest.approx(np.percentile(trans, q))
        assert result["sigma_rot_rad"][f"p{q:g}"] == pytest.approx(np.percentile(rot, q))

    # Over k frames the random-walk sigma (summed variances) is exact when the axes do
    # not turn; overlapping windows are correlated, hence the looser bounds.
    straight = straight_run(12001)
    sigma = per_frame_sigma(len(straight), rng)
    est, log_var = noisy_motions(straight, sigma, rng)
    result = uncertainty_calibration(straight, est, log_var, windows=(1, 30))
    assert result["windows"]["30"]["windows"] == 12001 - 30
    for k in ("1", "30"):
        for part in ("translation", "rotation"):
            shares = result["windows"][k][part]
            assert shares["within_1sigma"] == pytest.approx(GAUSSIAN_1, abs=0.04), (k, part)
            assert shares["within_2sigma"] == pytest.approx(GAUSSIAN_2, abs=0.025), (k, part)


def test_calibration_shows_a_sigma_ten_times_too_small() -> None:
    rng = np.random.default_rng(4)
    gt = straight_run(3001)
    est, log_var = noisy_motions(gt, per_frame_sigma(len(gt), rng), rng)
    overconfident = log_var - 2.0 * np.log(10.0)  # sigma / 10
    result = uncertainty_calibration(gt, est, overconfident, windows=(1, 30))
    for k in ("1", "30"):
        for part in ("translation", "rotation"):
            shares = result["windows"][k][part]
            # |z| / 10 <= 1 for a Gaussian z: 8 % inside 1 sigma, 16 % inside 2 sigma.
            assert shares["within_1sigma"] < 0.15, (k, part)
            assert shares["within_2sigma"] < 0.25, (k, part)
            assert shares["median_scale"] == pytest.approx(10.0, rel=0.15), (k, part)
    # And 10x too large: everything inside 1 sigma, under-confident.
    result = uncertainty_calibration(gt, est, log_var + 2.0 * np.log(10.0), windows=(1,))
    assert result["windows"]["1"]["translation"]["within_1sigma"] > 0.99


def test_calibration_skips_frame_zero_and_frames_without_estimate() -> None:
    rng = np.random.default_rng(5)
    gt = straight_run(400)
    est, log_var = noisy_motions(gt, per_frame_sigma(len(gt), rng), rng)
    log_var[0] = np.nan  # frame 0 has no motion: its variance is never used
    est[100] = np.nan  # no estimate: the windows that start or end there are left out
    log_var[200] = np.inf  # no variance: the windows over frame 200's motion are left out
    result = uncertainty_calibration(gt, est, log_var, windows=(1, 30, 500))
    assert result["windows"]["1"]["windows"] == 399 - 2 - 1
    assert result["windows"]["30"]["windows"] == 370 - 2 - 30
    assert result["windows"]["500"]["windows"] == 0
    assert result["windows"]["500"]["translation"]["within_1sigma"] is None
    assert all(np.isfinite(v) for v in result["sigma_trans_m"].values())
    with pytest.raises(ValueError, match="need"):
        uncertainty_calibration(gt, est[:-1], log_var)


class OdometryEchoRuntime:
    """Stands in for StudentRuntime: integrates the odometry motion it is fed, so the
    evaluation's odometry plumbing can be checked without an exported model."""

    instances: list[OdometryEchoRuntime] = []

    def __init__(self, model_dir: Path, providers: object = None, warmup: int = 3) -> None:
        self.spec = types.SimpleNamespace(name="odometry-echo", uses_odom=True)
        self.active_providers = ["CPUExecutionProvider"]
        self.pose = geometry.IDENTITY.copy()
        self.shapes: set[tuple[int, ...]] = set()
        self.dts: list[float | None] = []
        OdometryEchoRuntime.instances.append(self)

    # The real offline loop (odometry -> camera motion, dt) drives the stand-in's step.
    run = runtime.StudentRuntime.run
    camera_aware = False  # like a model without the ``camera`` input

    def reset(self) -> None:
        self.pose = geometry.IDENTITY.copy()

    def step(
        self, rgb: np.ndarray, odom_motion: np.ndarray | None = None, dt: float | None = None
    ) -> types.SimpleNamespace:
        self.shapes.add(rgb.shape)
        self.dts.append(dt)
        if odom_motion is not None:
            self.pose = geometry.compose(self.pose, odom_motion)
        return types.SimpleNamespace(pose=self.pose.copy(), log_var=np.zeros(6), step_ms=1.0)


@pytest.fixture
def echo_runtime(monkeypatch: pytest.MonkeyPatch) -> type[OdometryEchoRuntime]:
    OdometryEchoRuntime.instances.clear()
    monkeypatch.setattr(runtime, "StudentRuntime", OdometryEchoRuntime)
    return OdometryEchoRuntime


def eval_args(bag: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--bag",
        str(bag),
        "--image-topic",
        "/camera/image_raw",
        "--gt-topic",
        "/ground_truth/pose",
        "--model",
        str(bag.parent / "unused-model"),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_eval_cli_feeds_odometry_through_the_mount(
    tmp_path: Path, echo_runtime: type[OdometryEchoRuntime], capsys: pytest.CaptureFixture
) -> None:
    truth = write_test_bag(tmp_path / "bag", frames=40, size=(16, 12), odom_scale=1.05)

    assert main(eval_args(tmp_path / "bag", tmp_path / "out", "--odom-topic", "/odom")) == 0

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert METRIC_KEYS | ODOM_KEYS <= set(metrics)
    assert metrics["frames"] == metrics["frames_with_pose"] == 40
    assert metrics["model"] == "odometry-echo" and metrics["odom_input"] is True
    runtime_used = echo_runtime.instances[0]
    assert runtime_used.shapes == {(12, 16, 3)}
    assert runtime_used.dts[0] is None
    assert runtime_used.dts[1] == pytest.approx(1 / 30, abs=1e-6)
    # Echoing the odometry reproduces the odometry baseline exactly: the motions were
    # mapped to the camera with the mount from /tf_static.
    for key in ("ate_rmse_m", "ate_sim3_rmse_m", "rpe_trans_m", "rpe_rot_deg"):
        assert metrics[key] == pytest.approx(metrics[f"odom_{key}"], rel=1e-6, abs=1e-9)
    assert metrics["ate_rmse_m"] > 1e-3  # the odometry's 5 % scale error shows
    assert metrics["ate_sim3_rmse_m"] < 1e-6  # and is all Sim(3) alignment removes
    out = tmp_path / "out"
    assert_matches_evo_cli(metrics, out / "gt.tum", out / "est.tum")
    assert_matches_evo_cli(metrics, out / "gt.tum", out / "odom.tum", prefix="odom_")
    spread = np.sqrt(np.mean(np.sum((truth.gt[:, :3] - truth.gt[:, :3].mean(0)) ** 2, axis=1)))
    assert metrics["no_motion_ate_rmse_m"] == pytest.approx(spread, rel=1e-9)
    assert (out / "trajectory.png").stat().st_size > 10_000
    table = capsys.readouterr().out
    assert "odometry" in table and "no motion" in table


def test_eval_cli_without_odometry_input(
    tmp_path: Path, echo_runtime: type[OdometryEchoRuntime]
) -> None:
    write_test_bag(tmp_path / "bag", frames=20, size=(16, 12))
    mount = [str(v) for v in BASE_TO_CAMERA]
    args = ["--odom-topic", "/odom", "--no-odom-input", "--max-frames", "15"]
    assert (
        main(eval_args(tmp_path / "bag", tmp_path / "out", *args, "--base-to-camera", *mount)) == 0
    )

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["frames"] == 15 and metrics["odom_input"] is False
    # Without its input the echo stands still: the no-motion baseline on these frames.
    assert metrics["alignment"] == "translation"
    assert metrics["ate_rmse_m"] == pytest.approx(metrics["no_motion_ate_rmse_m"], rel=1e-9)


def test_eval_cli_reports_a_missing_topic(
    tmp_path: Path, echo_runtime: type[OdometryEchoRuntime], capsys: pytest.CaptureFixture
) -> None:
    write_test_bag(tmp_path / "bag", frames=3)
    args = eval_args(tmp_path / "bag", tmp_path / "out", "--odom-topic", "/wheel_odom")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "/wheel_odom" in err and "/odom (nav_msgs/msg/Odometry)" in err


def test_eval_cli_runs_the_shipped_model_on_a_rendered_bag(tmp_path: Path, model_dir: Path) -> None:
    generate = pytest.importorskip("latent_memory_training.data.generate")
    writers = pytest.importorskip("latent_memory_training.data.writers")
    seq = generate.render_sequence("test", 1, seed=5, frames=90, size=(320, 240))
    writers.write_rosbag2(seq, tmp_path / "bag", "sqlite3")
    args = eval_args(tmp_path / "bag", tmp_path / "out", "--odom-topic", "/odom")
    args[args.index("--model") + 1] = str(model_dir)
    assert main(args) == 0

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert METRIC_KEYS | ODOM_KEYS <= set(metrics)
    assert metrics["frames_with_pose"] == 90
    assert np.isfinite(metrics["ate_rmse_m"]) and metrics["step_ms_p50"] > 0
    assert metrics["providers"]
    assert_matches_evo_cli(metrics, tmp_path / "out" / "gt.tum", tmp_path / "out" / "est.tum")
