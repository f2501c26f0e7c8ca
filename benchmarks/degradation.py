"""Graceful degradation: the fused pose and the tracking state when vision fails.

Each case runs held-out runs with good wheel odometry through the node's ROS-free
``Localizer`` (the code the node calls per frame) and compares the fused pose with
integrating that odometry alone:

    dark     a window of frames at 3 % of their brightness (a dark room, a failed
             auto-exposure)
    covered  a lens cap: uniform grey with sensor noise
    frozen   a driver that re-sends its last frame with new stamps
    blur     a 61-pixel horizontal motion blur
    fast     runs rendered with turns up to 240 deg/s (world.md allows 60 deg/s), the
             motion blur rendered with them; the whole run is the window

The window is 10 s (at most a third of the run) starting a third of the way in. Per run
it reports the ATE over the odometry's and the share of frames UNCERTAIN or LOST inside
the window and outside it; the summary gives the worst ratio and the mean shares.

    .venv/bin/python benchmarks/degradation.py --model models/default --data data/test \\
        --runs 8 --out results/degradation.json

``fast`` needs the training package (it renders); the other cases read cached renders
(``latent_memory_train render --format npz``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from latent_memory_ros import geometry
from latent_memory_ros.atomic import atomic_path
from latent_memory_ros.evaluation import odometry_camera_poses, trajectory_metrics
from latent_memory_ros.health import VisionFault
from latent_memory_ros.localizer import Localizer, LocalizerConfig, TrackingState
from latent_memory_ros.runtime import StudentRuntime
from latent_memory_ros.sequence import Sequence

CASES = ("dark", "covered", "frozen", "blur", "fast")
WINDOW_S = 10.0
FAST_YAW_RATE = math.radians(240.0)
FAST_YAW_ACCEL = 12.0  # rad/s^2: reaches 240 deg/s in a third of a second


def _dark(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (images.astype(np.float32) * 0.03).round().astype(np.uint8)


def _covered(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(30.0, 2.0, images.shape)
    return np.clip(noise, 0, 255).astype(np.uint8)


def _frozen(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.repeat(images[:1], len(images), axis=0)


def _blur(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.stack([cv2.blur(img, (61, 1)) for img in images])


FAULTS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "dark": _dark,
    "covered": _covered,
    "frozen": _frozen,
    "blur": _blur,
}


def window(seq: Sequence) -> slice:
    n = len(seq)
    fps = 1.0 / float(np.median(np.diff(seq.stamps)))
    length = min(int(round(WINDOW_S * fps)), n // 3)
    return slice(n // 3, n // 3 + length)


def render_fast(split: str, index: int, seed: int, frames: int) -> Sequence:
    """A v2 run whose drive turns up to :data:`FAST_YAW_RATE` (the generator's limits
    patched; everything else as world.md v2 draws it)."""
    from latent_memory_training.data import world
    from latent_memory_training.data.generate import render_sequence

    world.YAW_RATE_MAX, world.YAW_ACCEL_MAX = FAST_YAW_RATE, FAST_YAW_ACCEL
    seq = render_sequence(split, index, seed, frames, cameras="random")
    seq.name = f"{split}_{index:03d}_fast"
    return seq


def run_localizer(model: Path, seq: Sequence) -> tuple[np.ndarray, ...]:
    """Camera poses (N, 7) in the odom frame, tracking states (N,), predicted sigma (N,)
    and vision faults (N,; "" for none) of ``seq`` through the Localizer with its
    odometry, as the node runs it."""
    runtime = StudentRuntime(model, providers=["CPUExecutionProvider"])
    h, w = seq.images.shape[1:3]
    runtime.set_camera(seq.intrinsics, w, h)
    mount = np.asarray(seq.base_to_camera, dtype=np.float64)
    localizer = Localizer(runtime, LocalizerConfig(base_to_camera=mount))
    poses, states = np.empty((len(seq), 7)), np.empty(len(seq), dtype=np.int64)
    sigma = np.empty(len(seq))
    faults = np.zeros(len(seq), dtype=object)
    for i, (stamp, rgb) in enumerate(zip(seq.stamps, seq.images, strict=True)):
        stamp_ns = int(round(stamp * 1e9))
        localizer.add_odometry(stamp_ns, seq.odom_base[i])
        est = localizer.process(np.ascontiguousarray(rgb), stamp_ns, use_odometry=True)
        poses[i] = geometry.compose(est.pose, mount)
        states[i] = est.tracking.value
        sigma[i] = est.sigma_m
        faults[i] = est.vision_fault.value if est.vision_fault else ""
    return poses, states, sigma, faults


def evaluate(job: tuple[Path, str, Path | None, tuple]) -> dict:
    model, case, path, fast_args = job
    if case == "fast":
        seq = render_fast(*fast_args)
        inside = slice(0, len(seq))
    else:
        seq = Sequence.load(path)
        inside = window(seq)
        rng = np.random.default_rng(0)
        images = np.array(seq.images)
        images[inside] = FAULTS[case](images[inside], rng)
        seq.images = images
    poses, states, sigma, faults = run_localizer(model, seq)
    ate = trajectory_metrics(seq.stamps, poses, seq.stamps, seq.gt_camera)["ate_rmse_m"]
    odom = odometry_camera_poses(seq.odom_base, seq.base_to_camera)
    odom_ate = trajectory_metrics(seq.stamps, odom, seq.stamps, seq.gt_camera)["ate_rmse_m"]
    mask = np.zeros(len(seq), dtype=bool)
    mask[inside] = True

    def shares(sel: np.ndarray) -> dict[str, float]:
        s = states[sel]
        if len(s) == 0:
            return {}
        return {t.name: float(np.mean(s == t.value)) for t in TrackingState}

    steps = geometry.relative(seq.odom_base[:-1], seq.odom_base[1:])  # base motion per frame
    turn_rate = np.linalg.norm(geometry.quat_to_rotvec(steps[:, 3:]), axis=1) / np.diff(seq.stamps)
    return {
        "case": case,
        "run": seq.name,
        "frames": len(seq),
        "window": [int(inside.start), int(inside.stop)],
        "fps": float(1.0 / np.median(np.diff(seq.stamps))),
        "max_turn_rate_deg_s": float(np.degrees(np.max(turn_rate))),
        "ate_m": float(ate),
        "odometry_ate_m": float(odom_ate),
        "ratio": float(ate / odom_ate),
        "inside": shares(mask),
        "outside": shares(~mask),
        "faults_inside": {f.value: int(np.sum(faults[mask] == f.value)) for f in VisionFault},
        "faults_outside": {f.value: int(np.sum(faults[~mask] == f.value)) for f in VisionFault},
        "sigma_mm_p50_inside": float(np.median(sigma[mask]) * 1e3),
        "sigma_mm_p50_outside": float(np.median(sigma[~mask]) * 1e3) if (~mask).any() else None,
    }


def _mean_share(rows: list[dict], where: str, state: str) -> float:
    values = [r[where].get(state, np.nan) for r in rows if r[where]]
    return float(np.mean(values)) if values else float("nan")


def summarise(rows: list[dict]) -> dict:
    out = {}
    for case in CASES:
        mine = [r for r in rows if r["case"] == case]
        if not mine:
            continue
        ratios = np.array([r["ratio"] for r in mine])
        worst = int(np.argmax(ratios))

        out[case] = {
            "runs": len(mine),
            "ratio_mean": float(ratios.mean()),
            "ratio_worst": float(ratios[worst]),
            "worst_run": mine[worst]["run"],
            "runs_over_1.5": int(np.sum(ratios > 1.5)),
            "inside_not_ok": 1.0 - _mean_share(mine, "inside", "OK"),
            "inside_lost": _mean_share(mine, "inside", "LOST"),
            "outside_not_ok": 1.0 - _mean_share(mine, "outside", "OK"),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="folder of npz renders")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--fast-split", default="test", help="split the fast runs are drawn from")
    parser.add_argument("--fast-seed", type=int, default=240)
    parser.add_argument("--fast-frames", type=int, default=900)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    args = parser.parse_args(argv)
    paths = sorted(p for p in args.data.glob("*.npz") if not p.name.endswith(".prep.npz"))
    paths = [p for p in paths if "_mirror" not in p.name][: args.runs]
    if not paths and set(args.cases) - {"fast"}:
        parser.error(f"{args.data}: no npz renders")
    jobs = []
    for case in args.cases:
        if case == "fast":
            jobs += [
                (args.model, case, None, (args.fast_split, i, args.fast_seed, args.fast_frames))
                for i in range(args.runs)
            ]
        else:
            jobs += [(args.model, case, p, ()) for p in paths]
    rows = []
    with get_context("spawn").Pool(args.jobs) as pool:
        for row in pool.imap_unordered(evaluate, jobs):
            rows.append(row)
            print(
                f"{row['case']:8s} {row['run']:16s} ratio {row['ratio']:.2f} "
                f"inside not OK {1 - row['inside'].get('OK', 0):.2f} "
                f"outside not OK {1 - row['outside'].get('OK', 1):.2f}",
                file=sys.stderr,
            )
    rows.sort(key=lambda r: (r["case"], r["run"]))
    result = {"model": str(args.model), "summary": summarise(rows), "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    for case, s in result["summary"].items():
        print(
            f"{case:8s} ratio mean {s['ratio_mean']:.2f} worst {s['ratio_worst']:.2f} "
            f"({s['worst_run']}), over 1.5x: {s['runs_over_1.5']}/{s['runs']}; not OK inside "
            f"{s['inside_not_ok']:.2f} (LOST {s['inside_lost']:.2f}), outside "
            f"{s['outside_not_ok']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
