"""Score a model on a recorded run, offline and without ROS: ``latent_memory_eval``.

Every frame of the bag goes through :class:`~latent_memory_ros.runtime.StudentRuntime`
in order, as fast as the runtime allows. All metrics come from evo's Python API, so they
equal what ``evo_ape`` / ``evo_rpe`` print for the ``est.tum`` and ``gt.tum`` written here.
:func:`trajectory_metrics` is the one place that defines them; the demo and the training
package's benchmark call it too.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from evo.core import metrics as evo_metrics
from evo.core.geometry import GeometryException
from evo.core.sync import SyncException, associate_trajectories
from evo.core.trajectory import PoseTrajectory3D

from latent_memory_ros import geometry
from latent_memory_ros.bag import BagRun, Track, read_run
from latent_memory_ros.datasets import add_reader_arguments, reader_options
from latent_memory_ros.model_format import default_model_dir
from latent_memory_ros.tum import write_trajectory

# Largest stamp difference (s) for two poses to be associated; evo's CLI default.
MAX_DT = 0.01

# Rows of the printed table: (metrics.json key prefix, label).
TABLE_ROWS = (("", "model"), ("odom_", "odometry"), ("no_motion_", "no motion"))


def to_evo(stamps: np.ndarray, poses: np.ndarray, name: str = "") -> PoseTrajectory3D:
    """An evo trajectory from stamps (N,) and xyz_qxyzw poses (N, 7)."""
    poses = np.asarray(poses, dtype=np.float64)
    traj = PoseTrajectory3D(
        positions_xyz=poses[:, :3],
        orientations_quat_wxyz=np.roll(poses[:, 3:], 1, axis=1),
        timestamps=np.asarray(stamps, dtype=np.float64),
    )
    traj.name = name
    return traj


def trajectory_metrics(
    est_stamps: np.ndarray,
    est_poses: np.ndarray,
    gt_stamps: np.ndarray,
    gt_poses: np.ndarray,
    max_dt: float = MAX_DT,
) -> dict[str, Any]:
    """ATE and RPE of an estimate against ground truth, as evo computes them.

    Poses are associated by nearest stamp within ``max_dt`` (rows of ``est_poses`` with
    NaN are dropped first). Returns ``matched_poses``, ``ate_rmse_m`` (APE translation
    RMSE after SE(3) Umeyama alignment, ``evo_ape -a``), ``ate_sim3_rmse_m`` (Sim(3),
    ``evo_ape -as``), ``rpe_trans_m`` and ``rpe_rot_deg`` (RPE RMSE between consecutive
    associated poses, ``evo_rpe`` and ``evo_rpe -r angle_deg``) and ``alignment``.

    An estimate whose positions do not spread (a constant pose) makes Umeyama degenerate;
    it is then aligned by translation only (centroid onto centroid, the best
    translation-only fit), and ``alignment`` says ``translation``.
    """
    est_poses = np.asarray(est_poses, dtype=np.float64)
    finite = np.all(np.isfinite(est_poses), axis=1)
    gt = to_evo(gt_stamps, gt_poses, "ground truth")
    est = to_evo(np.asarray(est_stamps)[finite], est_poses[finite], "estimate")
    try:
        gt, est = associate_trajectories(gt, est, max_diff=max_dt)
    except SyncException as err:  # no stamp in common at all
        raise ValueError(f"no estimated pose matches the ground truth in time: {err}") from err
    if est.num_poses < 3:
        raise ValueError(f"only {est.num_poses} poses match the ground truth in time; need 3")

    result: dict[str, Any] = {"matched_poses": int(est.num_poses), "alignment": "SE(3)"}
    try:
        result["ate_rmse_m"] = _ape_rmse(gt, _aligned(est, gt, scale=False))
        result["ate_sim3_rmse_m"] = _ape_rmse(gt, _aligned(est, gt, scale=True))
    except GeometryException:
        result["alignment"] = "translation"
        result["ate_rmse_m"] = result["ate_sim3_rmse_m"] = _ape_rmse(
            gt, _translation_aligned(est, gt)
        )
    result["rpe_trans_m"] = _rpe_rmse(gt, est, evo_metrics.PoseRelation.translation_part)
    result["rpe_rot_deg"] = _rpe_rmse(gt, est, evo_metrics.PoseRelation.rotation_angle_deg)
    return result


# Share of a standard normal's samples with |z| <= 1 and |z| <= 2.
GAUSSIAN_WITHIN = {"within_1sigma": 0.682689, "within_2sigma": 0.954500}
# Median of |z| for a standard normal: median(|z|) / this is a robust scale of z.
_GAUSSIAN_MEDIAN_ABS = 0.674490
CALIBRATION_WINDOWS = (1, 30, 300)
SIGMA_PERCENTILES = (50, 90, 99, 99.9)
AXES = ("x", "y", "z", "rx", "ry", "rz")


def calibration_errors(
    gt_camera: np.ndarray,
    est_camera: np.ndarray,
    log_var: np.ndarray,
    windows: Sequence[int] = CALIBRATION_WINDOWS,
) -> dict[str, Any]:
    """The raw material of :func:`uncertainty_calibration`, to pool over many runs.

    Returns ``normalised``: for each window k, an ``(M, 6)`` array of motion errors over
    k frames divided by their predicted sigma (x, y, z, rx, ry, rz), one row per window
    end i in ``k..N-1`` whose poses and variances are all finite; and ``sigma_trans_m`` /
    ``sigma_rot_rad``: the per-frame sigmas (frames 1..N-1, finite only).
    """
    gt = np.asarray(gt_camera, dtype=np.float64)
    est = np.asarray(est_camera, dtype=np.float64)
    lv = np.asarray(log_var, dtype=np.float64)
    if not (gt.ndim == est.ndim == lv.ndim == 2 and len(gt) == len(est) == len(lv)):
        raise ValueError(
            f"need (N, 7), (N, 7) and (N, 6) arrays, got {gt.shape}, {est.shape}, {lv.shape}"
        )
    if gt.shape[1] != 7 or est.shape[1] != 7 or lv.shape[1] != 6:
        raise ValueError(
            f"need (N, 7), (N, 7) and (N, 6) arrays, got {gt.shape}, {est.shape}, {lv.shape}"
        )
    var = np.exp(lv)
    # A window needs finite poses at its two ends and finite variances for the motions
    # between them (frame 0 has no motion: its variance is never used).
    pose_ok = np.all(np.isfinite(gt), axis=1) & np.all(np.isfinite(est), axis=1)
    var_bad = ~np.all(np.isfinite(var), axis=1)
    var_bad[0] = False
    var[0] = 0.0
    var[var_bad] = 0.0
    var_sum = np.concatenate([np.zeros((1, 6)), np.cumsum(var, axis=0)])  # sum of var[:i]
    bad_sum = np.concatenate([[0], np.cumsum(var_bad)])  # count of var_bad[:i]
    normalised: dict[int, np.ndarray] = {}
    for k in windows:
        k = int(k)
        if k < 1:
            raise ValueError(f"window {k}: need k >= 1")
        start, end = np.arange(max(len(gt) - k, 0)), np.arange(k, len(gt))
        with np.errstate(invalid="ignore"):
            rel_gt = geometry.relative(gt[start], gt[end])
            rel_est = geometry.relative(est[start], est[end])
            rot_err = geometry.quat_to_rotvec(
                geometry.quat_multiply(rel_est[:, 3:], geometry.quat_conjugate(rel_gt[:, 3:]))
            )
        err = np.concatenate([rel_est[:, :3] - rel_gt[:, :3], rot_err], axis=1)
        # The motions of frames start+1..end make up this window's relative pose.
        sigma = np.sqrt(var_sum[end + 1] - var_sum[start + 1])
        ok = pose_ok[start] & pose_ok[end] & (bad_sum[end + 1] - bad_sum[start + 1] == 0)
        ok &= np.all(sigma > 0, axis=1)
        normalised[k] = err[ok] / sigma[ok]
    frames = ~var_bad
    frames[0] = False
    return {
        "normalised": normalised,
        "sigma_trans_m": np.sqrt(np.mean(var[frames, :3], axis=1)),
        "sigma_rot_rad": np.sqrt(np.mean(var[frames, 3:], axis=1)),
    }


def calibration_summary(
    normalised: Mapping[int, np.ndarray],
    sigma_trans_m: np.ndarray,
    sigma_rot_rad: np.ndarray,
) -> dict[str, Any]:
    """Shares inside 1 and 2 sigma and sigma percentiles from :func:`calibration_errors`'
    output (or the concatenation of several runs' outputs); see
    :func:`uncertainty_calibration` for the keys."""

    def shares(z: np.ndarray) -> dict[str, Any]:
        a = np.abs(z).ravel()
        if a.size == 0:
            return {
                "samples": 0,
                "within_1sigma": None,
                "within_2sigma": None,
                "rms": None,
                "median_scale": None,
            }
        return {
            "samples": int(a.size),
            "within_1sigma": float(np.mean(a <= 1.0)),
            "within_2sigma": float(np.mean(a <= 2.0)),
            "rms": float(np.sqrt(np.mean(a**2))),
            "median_scale": float(np.median(a) / _GAUSSIAN_MEDIAN_ABS),
        }

    def percentiles(values: np.ndarray) -> dict[str, float | None]:
        values = np.asarray(values, dtype=np.float64)
        return {
            f"p{q:g}": float(np.percentile(values, q)) if values.size else None
            for q in SIGMA_PERCENTILES
        }

    windows = {}
    for k, z in sorted(normalised.items()):
        z = np.asarray(z, dtype=np.float64).reshape(-1, 6)
        windows[str(k)] = {
            "windows": int(len(z)),
            "translation": shares(z[:, :3]),
            "rotation": shares(z[:, 3:]),
            "per_axis_within_1sigma": {
                axis: (float(np.mean(np.abs(z[:, j]) <= 1.0)) if len(z) else None)
                for j, axis in enumerate(AXES)
            },
        }
    return {
        "gaussian": dict(GAUSSIAN_WITHIN),
        "windows": windows,
        "sigma_trans_m": percentiles(sigma_trans_m),
        "sigma_rot_rad": percentiles(sigma_rot_rad),
    }


def uncertainty_calibration(
    gt_camera: np.ndarray,
    est_camera: np.ndarray,
    log_var: np.ndarray,
    windows: Sequence[int] = CALIBRATION_WINDOWS,
) -> dict[str, Any]:
    """How well a model's predicted motion variance matches its actual motion errors.

    ``gt_camera`` and ``est_camera`` are ``(N, 7)`` camera poses at the same N frames (each
    in its own start frame); ``log_var`` ``(N, 6)`` is the model's log variance of each
    frame's motion (previous -> current camera, in the previous camera frame): x, y, z in
    m^2, then rotation vector rx, ry, rz in rad^2. Frame 0 has no motion and is skipped.

    For a window of k frames ending at frame i, the error of the relative pose
    ``T_{i-k,i}`` is the estimate's translation minus the ground truth's (a vector in
    camera i-k's frame) and the rotation vector of ``R_est R_gt^T`` (also in camera
    i-k's frame); each axis is divided by its predicted sigma. For k = 1 that sigma is
    the frame's own; for k > 1 it is the random-walk sigma ``sqrt(sum of the k
    per-frame variances)`` per axis. **Approximation:** this sum ignores that the axes
    of consecutive camera frames rotate against each other (and that a rotation error
    moves later translations), so over long windows with turns it mixes axes; it is
    exact for k = 1 and for straight motion. Windows overlap (one per end frame).

    Returns ``windows``: for each k (as a string), ``translation`` and ``rotation``
    (pooled over their 3 axes): ``within_1sigma`` and ``within_2sigma``, the share of
    normalised errors with ``|e / sigma| <= 1`` (resp. 2), to compare with
    ``gaussian`` (0.683 and 0.954 for well calibrated Gaussian errors; lower means
    over-confident, higher under-confident), ``rms`` of ``e / sigma`` (1 if calibrated)
    and ``median_scale`` = ``median(|e / sigma|) / 0.674`` (the factor by which sigma
    would have to grow for the median to match a Gaussian's), plus
    ``per_axis_within_1sigma``. ``sigma_trans_m`` and ``sigma_rot_rad`` hold percentiles
    (p50, p90, p99, p99.9) of the per-frame translation sigma
    ``sqrt(mean(exp(log_var[:3])))`` in metres and rotation sigma
    ``sqrt(mean(exp(log_var[3:])))`` in radians.
    """
    return calibration_summary(**calibration_errors(gt_camera, est_camera, log_var, windows))


def no_motion_metrics(
    stamps: np.ndarray, gt_stamps: np.ndarray, gt_poses: np.ndarray
) -> dict[str, Any]:
    """The metrics of a constant pose at ``stamps``: its ATE is the RMS distance of the
    matched ground-truth positions from their centroid (translation-only alignment, see
    :func:`trajectory_metrics`); its RPE is the ground truth's own motion per frame."""
    constant = np.tile(geometry.IDENTITY, (len(stamps), 1))
    return trajectory_metrics(stamps, constant, gt_stamps, gt_poses)


# Map-free query recall thresholds: (metres, degrees) a query answer must be within.
QUERY_THRESHOLDS = ((0.25, 5.0), (0.5, 10.0))


def query_errors(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Translation (m) and rotation (deg) error of query answers ``pred`` against
    ``target`` (both ``(..., 7)`` poses of the query camera in the current camera frame)."""
    d = geometry.relative(np.asarray(target, np.float64), np.asarray(pred, np.float64))
    rot = geometry.quat_to_rotvec(d[..., 3:])
    return np.linalg.norm(d[..., :3], axis=-1), np.degrees(np.linalg.norm(rot, axis=-1))


def query_recall(trans_m: np.ndarray, rot_deg: np.ndarray) -> dict[str, float]:
    """Share of query answers within each of :data:`QUERY_THRESHOLDS`, keyed
    ``recall_<m>m_<deg>deg``."""
    return {
        f"recall_{t}m_{r:g}deg": float(np.mean((trans_m < t) & (rot_deg < r)))
        for t, r in QUERY_THRESHOLDS
    }


def query_scores(trans_m: np.ndarray, rot_deg: np.ndarray) -> dict[str, Any]:
    """``queries`` (how many), :func:`query_recall` and the median errors of query
    answers with these errors (:func:`query_errors`)."""
    return {
        "queries": len(trans_m),
        **query_recall(trans_m, rot_deg),
        "median_m": float(np.median(trans_m)),
        "median_deg": float(np.median(rot_deg)),
    }


def seen_reliability(p: np.ndarray, right: np.ndarray, bins: int = 5) -> list[dict[str, Any]]:
    """Per bin of the ``seen`` probability: how many answers, the mean probability and
    the share that was right (a calibrated ``seen`` has the two close)."""
    edges = np.linspace(0, 1, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (p >= lo) & ((p < hi) | (hi == 1))
        if inside.any():
            out.append(
                {
                    "bin": [float(lo), float(hi)],
                    "answers": int(inside.sum()),
                    "mean_seen": float(p[inside].mean()),
                    "right": float(right[inside].mean()),
                }
            )
    return out


def query_indices(frames: int, every: int, min_gap: int) -> np.ndarray:
    """The earlier frames a run of ``frames`` frames is asked about once it is done (at
    its last frame): every ``every``-th frame at least ``min_gap`` frames before the last."""
    return np.arange(0, max(0, frames - min_gap), every)


def memory_gain(carried_ate: float, reset_ate: float) -> float:
    """The memory ablation, ``1 - carried / reset``: the share of the error made with the
    memory cell's state reset before every frame that carrying the memory removes (0: the
    memory does nothing; negative: it hurts)."""
    return float(1.0 - carried_ate / reset_ate)


def memory_ablation(
    run: BagRun, model_dir: Path, providers: list[str] | None = None, odometry: bool = True
) -> dict[str, float]:
    """The run's frames offline through the runtime (and the odometry, when the model
    takes it and ``odometry``), with the memory carried and with it reset before every
    frame: their ATE and the memory gain ``1 - carried / reset``."""
    from latent_memory_ros.runtime import StudentRuntime

    assert run.gt is not None
    rt = StudentRuntime(model_dir, providers=providers)
    odom = run.odom_at(run.image_stamps) if rt.spec.uses_odom and odometry else None
    camera = None if run.intrinsics is None else run.intrinsics.array
    ate = {}
    for name, reset in (("carried", False), ("reset", True)):
        poses = rt.run(run.images(), odom, run.base_to_camera, reset, camera).poses
        metrics = trajectory_metrics(run.image_stamps, poses, run.gt.stamps, run.gt.poses)
        ate[name] = metrics["ate_rmse_m"]
    return {
        "memory_carried_ate_rmse_m": ate["carried"],
        "memory_reset_ate_rmse_m": ate["reset"],
        "memory_gain": memory_gain(ate["carried"], ate["reset"]),
    }


def ratio_to_baseline(
    names: Sequence[str], model_ate: Sequence[float], baseline_ate: Sequence[float], baseline: str
) -> dict[str, Any]:
    """Per run, the model's ATE over the baseline's on the same run (``baseline`` names
    it), summarised: ``mean`` and ``median`` ratio, the ``worst`` (largest) ratio and its
    run ``worst_sequence``, and how many runs are ``worse`` than the baseline (ratio > 1)."""
    ratio = np.asarray(model_ate, dtype=np.float64) / np.asarray(baseline_ate, dtype=np.float64)
    worst = int(np.argmax(ratio))
    return {
        "baseline": baseline,
        "sequences": len(ratio),
        "mean": float(np.mean(ratio)),
        "median": float(np.median(ratio)),
        "worst": float(ratio[worst]),
        "worst_sequence": str(names[worst]),
        "worse": int(np.sum(ratio > 1.0)),
    }


def odometry_camera_poses(odom_base: np.ndarray, base_to_camera: np.ndarray) -> np.ndarray:
    """Camera poses in the odometry frame from base poses: ``T_odom_cam = T_odom_base T_base_cam``."""
    return geometry.compose(np.asarray(odom_base, dtype=np.float64), base_to_camera)


def baseline_metrics(
    gt: Track,
    image_stamps: np.ndarray,
    odom_base_at_images: np.ndarray | None,
    base_to_camera: np.ndarray | None,
) -> dict[str, Any]:
    """``no_motion_*`` and, given odometry and the mount, ``odom_*`` (the wheel odometry
    alone, mapped to the camera), both scored at the image stamps as the model is."""
    out = _prefixed("no_motion_", no_motion_metrics(image_stamps, gt.stamps, gt.poses))
    if odom_base_at_images is not None and base_to_camera is not None:
        camera = odometry_camera_poses(odom_base_at_images, base_to_camera)
        out |= _prefixed("odom_", trajectory_metrics(image_stamps, camera, gt.stamps, gt.poses))
    return out


def plot_trajectories(
    path: Path,
    gt: tuple[np.ndarray, np.ndarray],
    estimates: Mapping[str, tuple[np.ndarray, np.ndarray]],
    title: str,
) -> None:
    """Top view of the ground truth and each estimate after SE(3) alignment to it.

    The view is the plane of the two axes along which the ground truth spreads most
    (the floor for a ground robot, whatever the world frame's convention).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = to_evo(*gt)
    axes = np.sort(np.argsort(ref.positions_xyz.std(axis=0))[-2:])
    fig, ax = plt.subplots(figsize=(7, 6.5))
    xy = ref.positions_xyz[:, axes]
    ax.plot(xy[:, 0], xy[:, 1], color="black", lw=2, label="ground truth")
    ax.plot(*xy[0], "o", color="black", ms=6)
    for label, (stamps, poses) in estimates.items():
        poses = np.asarray(poses, dtype=np.float64)
        finite = np.all(np.isfinite(poses), axis=1)
        if finite.sum() < 3:
            continue
        ref_sync, est = associate_trajectories(
            ref, to_evo(stamps[finite], poses[finite]), max_diff=MAX_DT
        )
        try:
            est = _aligned(est, ref_sync, scale=False)
        except GeometryException:
            est = _translation_aligned(est, ref_sync)
        exy = est.positions_xyz[:, axes]
        still = np.ptp(exy, axis=0).max() < 1e-6  # a constant pose would be invisible as a line
        ax.plot(exy[:, 0], exy[:, 1], lw=1.2, marker="*" if still else None, ms=12, label=label)
    names = "xyz"
    ax.set_xlabel(f"{names[axes[0]]} (m)")
    ax.set_ylabel(f"{names[axes[1]]} (m)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_title(metrics: Mapping[str, Any]) -> str:
    parts = []
    for prefix, label in TABLE_ROWS:
        if f"{prefix}ate_rmse_m" in metrics:
            parts.append(f"{label} ATE {metrics[f'{prefix}ate_rmse_m']:.3f} m")
    run = metrics.get("bag") or metrics.get("run", "")
    return f"{metrics.get('model', '')} on {Path(str(run)).name}\n" + ", ".join(parts)


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """A compact text table of the model and its baselines."""
    header = (
        f"{'':<10} {'ATE SE3 m':>10} {'ATE Sim3 m':>11} {'RPE mm/frame':>13} {'RPE deg/frame':>14}"
    )
    lines = [header]
    for prefix, label in TABLE_ROWS:
        if f"{prefix}ate_rmse_m" not in metrics:
            continue
        sim3 = metrics.get(f"{prefix}ate_sim3_rmse_m", float("nan"))
        lines.append(
            f"{label:<10} {metrics[f'{prefix}ate_rmse_m']:>10.4f} {sim3:>11.4f} "
            f"{metrics[f'{prefix}rpe_trans_m'] * 1e3:>13.2f} {metrics[f'{prefix}rpe_rot_deg']:>14.3f}"
        )
    if "step_ms_p50" in metrics:
        lines.append(
            f"step: p50 {metrics['step_ms_p50']:.2f} ms, p99 {metrics['step_ms_p99']:.2f} ms"
            f" over {metrics.get('frames', '?')} frames"
        )
    return "\n".join(lines)


def evaluate_bag(
    bag: Path,
    image_topic: str,
    gt_topic: str,
    out_dir: Path,
    model_dir: Path,
    odom_topic: str | None = None,
    base_to_camera: Sequence[float] | None = None,
    odom_input: bool = True,
    max_frames: int | None = None,
    providers: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the model over every frame of a bag; write est.tum, gt.tum, metrics.json and
    trajectory.png to ``out_dir``; return the metrics."""
    from tqdm import tqdm

    from latent_memory_ros.runtime import StudentRuntime

    run = read_run(bag, image_topic, gt_topic=gt_topic, odom_topic=odom_topic)
    assert run.gt is not None
    if len(run.gt.stamps) < 3:
        raise ValueError(f"bag {bag}: topic {gt_topic!r} has {len(run.gt.stamps)} poses; need 3")
    mount = (
        np.asarray(base_to_camera, dtype=np.float64)
        if base_to_camera is not None
        else run.base_to_camera
    )
    runtime = StudentRuntime(model_dir, providers=providers)
    feed_odom = odom_topic is not None and odom_input and runtime.spec.uses_odom
    if odom_topic is not None and mount is None:
        problem = (
            f"bag {bag} has no static transform to the image frame {run.image_frame_id!r}; "
            "pass --base-to-camera x y z qx qy qz qw"
        )
        if feed_odom:
            raise ValueError(f"{problem} to feed the odometry to the model")
        print(f"latent_memory_eval: {problem} to score the odometry baseline", file=sys.stderr)
    frames = len(run) if max_frames is None else min(max_frames, len(run))
    stamps = run.image_stamps[:frames]
    odom_base = run.odom_at(stamps) if odom_topic is not None else None
    images = tqdm(
        run.images(frames), total=frames, unit="frame", disable=not progress, file=sys.stderr
    )
    camera = None if run.intrinsics is None else run.intrinsics.array
    ran = runtime.run(images, odom_base if feed_odom else None, mount, intrinsics=camera)
    about = {
        "odom_input": feed_odom,
        "model": runtime.spec.name,
        "model_dir": str(model_dir),
        "bag": str(bag),
        "providers": list(runtime.active_providers),
    }
    return _write_results(out_dir, stamps, ran, run.gt, odom_base, mount, about)


def evaluate_run(
    run: Path,
    out_dir: Path,
    model_dir: Path,
    fmt: str | None = None,
    options: Any = None,
    odom_input: bool = True,
    max_frames: int | None = None,
    providers: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """:func:`evaluate_bag` for a run of any format latent_memory_ros.datasets reads (TUM
    RGB-D, EuRoC, KITTI, a cached render): its frames undistorted to a pinhole camera,
    as the node would get them from image_rect; the same files and metrics."""
    from itertools import islice

    from tqdm import tqdm

    from latent_memory_ros.datasets import ReadOptions, read_sequence
    from latent_memory_ros.runtime import StudentRuntime

    seq = read_sequence(run, fmt, options or ReadOptions())
    runtime = StudentRuntime(model_dir, providers=providers)
    frames = len(seq) if max_frames is None else min(max_frames, len(seq))
    stamps = np.asarray(seq.stamps[:frames], dtype=np.float64)
    odom_base = np.asarray(seq.odom_base[:frames], dtype=np.float64)
    has_odom = bool(np.all(np.isfinite(odom_base), axis=1).any())
    feed_odom = has_odom and odom_input and runtime.spec.uses_odom
    images = tqdm(
        zip(stamps, islice(iter(seq.images), frames), strict=True),
        total=frames,
        unit="frame",
        disable=not progress,
        file=sys.stderr,
    )
    mount = np.asarray(seq.base_to_camera, dtype=np.float64)
    ran = runtime.run(images, odom_base if feed_odom else None, mount, intrinsics=seq.intrinsics)
    about = {
        "odom_input": feed_odom,
        "model": runtime.spec.name,
        "model_dir": str(model_dir),
        "run": str(run),
        "format": seq.meta.get("format", fmt),
        "frames_dropped": seq.meta.get("frames_dropped", 0),
        "providers": list(runtime.active_providers),
    }
    gt = Track(np.asarray(seq.stamps, dtype=np.float64), np.asarray(seq.gt_camera))
    return _write_results(out_dir, stamps, ran, gt, odom_base if has_odom else None, mount, about)


def _write_results(
    out_dir: Path,
    stamps: np.ndarray,
    ran: Any,
    gt: Track,
    odom_base: np.ndarray | None,
    mount: np.ndarray | None,
    about: dict[str, Any],
) -> dict[str, Any]:
    """est.tum, gt.tum (odom.tum), metrics.json and trajectory.png of one evaluated run;
    returns the metrics (``about`` says what ran on what)."""
    poses, step_ms = ran.poses, ran.step_ms
    out_dir.mkdir(parents=True, exist_ok=True)
    write_trajectory(out_dir / "est.tum", stamps, poses)
    write_trajectory(out_dir / "gt.tum", gt.stamps, gt.poses)
    metrics: dict[str, Any] = {
        "frames": len(stamps),
        "frames_with_pose": int(np.all(np.isfinite(poses), axis=1).sum()),
        **trajectory_metrics(stamps, poses, gt.stamps, gt.poses),
        "step_ms_p50": float(np.percentile(step_ms, 50)),
        "step_ms_p99": float(np.percentile(step_ms, 99)),
        **baseline_metrics(gt, stamps, odom_base, mount),
        **about,
    }
    estimates = {"model": (stamps, poses)}
    if odom_base is not None and mount is not None:
        estimates["odometry"] = (stamps, odometry_camera_poses(odom_base, mount))
        write_trajectory(out_dir / "odom.tum", *estimates["odometry"])
    plot_trajectories(
        out_dir / "trajectory.png", (gt.stamps, gt.poses), estimates, plot_title(metrics)
    )
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


# --bag reads these topics unless told otherwise (the synthetic world's, world.md); --data
# leaves them to the run's layout.
BAG_IMAGE_TOPIC = "/camera/image_raw"
BAG_GT_TOPIC = "/ground_truth/pose"
# Reader flags that --bag does not take (it reads topics, and the mount from /tf_static).
_DATA_ONLY = (
    "gt_frames",
    "gt_frame",
    "odom_frames",
    "camera_info_topic",
    "distortion",
    "kitti_camera",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latent_memory_eval",
        description="Run an exported model over every frame of a rosbag2 offline and score "
        "it with evo (ATE after SE(3)/Sim(3) alignment, RPE) against ground truth, odometry "
        "and a no-motion baseline.",
        epilog=f"--bag reads --image-topic (default {BAG_IMAGE_TOPIC}), --gt-topic (default "
        f"{BAG_GT_TOPIC}), --odom-topic and --base-to-camera; the other reading flags are "
        "for --data.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bag", type=Path, help="rosbag2 directory (mcap or sqlite3)")
    source.add_argument(
        "--data",
        type=Path,
        help="a run of another format: TUM RGB-D, EuRoC or KITTI folder, cached render (.npz)",
    )
    add_reader_arguments(parser)
    parser.add_argument("--model", type=Path, help="exported model directory (default: the node's)")
    parser.add_argument(
        "--no-odom-input",
        action="store_true",
        help="do not feed odometry to the model (it is still scored as a baseline)",
    )
    parser.add_argument("--max-frames", type=int, help="only the first N frames")
    parser.add_argument("--providers", nargs="+", help="onnxruntime execution providers, in order")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``latent_memory_eval``; returns the exit code."""
    from latent_memory_ros.bag import BagTopicError
    from latent_memory_ros.model_format import ModelError

    parser = build_parser()
    args = parser.parse_args(argv)
    data_only = [f"--{name.replace('_', '-')}" for name in _DATA_ONLY if getattr(args, name)]
    if args.bag is not None and data_only:
        parser.error(f"{', '.join(data_only)}: for --data runs, not --bag")
    common = {
        "out_dir": args.out,
        "model_dir": args.model or default_model_dir(),
        "odom_input": not args.no_odom_input,
        "max_frames": args.max_frames,
        "providers": args.providers,
        "progress": not args.no_progress,
    }
    try:
        if args.bag is not None:
            metrics = evaluate_bag(
                bag=args.bag,
                image_topic=args.image_topic or BAG_IMAGE_TOPIC,
                gt_topic=args.gt_topic or BAG_GT_TOPIC,
                odom_topic=args.odom_topic,
                base_to_camera=args.base_to_camera,
                **common,
            )
        else:
            fmt, options = reader_options(args)
            metrics = evaluate_run(args.data, fmt=fmt, options=options, **common)
    except (BagTopicError, ModelError, FileNotFoundError, ValueError) as err:
        print(f"latent_memory_eval: error: {err}", file=sys.stderr)
        return 2
    print(metrics_table(metrics))
    print(f"wrote {args.out}/est.tum, gt.tum, metrics.json, trajectory.png")
    return 0


def _aligned(est: PoseTrajectory3D, ref: PoseTrajectory3D, scale: bool) -> PoseTrajectory3D:
    est = copy.deepcopy(est)
    est.align(ref, correct_scale=scale)
    return est


def _translation_aligned(est: PoseTrajectory3D, ref: PoseTrajectory3D) -> PoseTrajectory3D:
    est = copy.deepcopy(est)
    shift = np.eye(4)
    shift[:3, 3] = ref.positions_xyz.mean(axis=0) - est.positions_xyz.mean(axis=0)
    est.transform(shift)
    return est


def _ape_rmse(ref: PoseTrajectory3D, est: PoseTrajectory3D) -> float:
    ape = evo_metrics.APE(evo_metrics.PoseRelation.translation_part)
    ape.process_data((ref, est))
    return float(ape.get_statistic(evo_metrics.StatisticsType.rmse))


def _rpe_rmse(
    ref: PoseTrajectory3D, est: PoseTrajectory3D, relation: evo_metrics.PoseRelation
) -> float:
    rpe = evo_metrics.RPE(relation, delta=1, delta_unit=evo_metrics.Unit.frames, all_pairs=False)
    rpe.process_data((ref, est))
    return float(rpe.get_statistic(evo_metrics.StatisticsType.rmse))


def _prefixed(prefix: str, values: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in values.items()}


if __name__ == "__main__":
    sys.exit(main())
