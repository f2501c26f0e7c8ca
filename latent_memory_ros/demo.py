"""``make demo``: a held-out run replayed into the real node over DDS, then scored.

1. render a short held-out synthetic run into a rosbag2 (the training package's CLI);
2. start the node as its own process on the shipped default model, with the camera mount
   from the bag's /tf_static;
3. replay the bag into it lock-step (one image, then wait for its pose);
4. collect the poses it publishes and its /diagnostics;
5. score them with evo against ground truth, beside the odometry and no-motion baselines,
   and write ``results/demo/metrics.json`` and ``trajectory.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from latent_memory_ros.bag import BagRun, read_run
from latent_memory_ros.evaluation import (
    baseline_metrics,
    metrics_table,
    odometry_camera_poses,
    plot_title,
    plot_trajectories,
    trajectory_metrics,
)
from latent_memory_ros.model_format import default_model_dir
from latent_memory_ros.replay import BagPlayer, use_large_message_transport
from latent_memory_ros.tum import write_trajectory

REPO = Path(__file__).resolve().parent.parent
NODE_NAME = "latent_memory_node"
IMAGE_TOPIC = "/camera/image_raw"
ODOM_TOPIC = "/odom"
GT_TOPIC = "/ground_truth/pose"
POSE_TOPIC = f"/{NODE_NAME}/pose"
DIAGNOSTICS_NAME = f"{NODE_NAME}: runtime"


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and what to do."""


def render_bag(out: Path, frames: int, seed: int) -> Path:
    """Render one held-out 640x480 run into ``out`` and return the bag directory."""
    env = dict(os.environ)
    if importlib.util.find_spec("latent_memory_training") is None:
        if not (REPO / "training" / "latent_memory_training" / "cli.py").is_file():
            raise DemoError(
                "the training package (latent_memory_training) is not installed, and it "
                "renders the demo's run: pip install -e training (make demo does)"
            )
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO / "training"), env.get("PYTHONPATH")) if p
        )
    command = [sys.executable, "-m", "latent_memory_training.cli", "render", "--out", str(out)]
    command += ["--split", "test", "--sequences", "1", "--frames", str(frames), "--seed", str(seed)]
    command += ["--format", "rosbag2", "--size", "640x480", "--overwrite"]
    print("rendering:", " ".join(command[1:]), flush=True)
    if subprocess.run(command, env=env).returncode != 0:
        raise DemoError(f"rendering failed (command: {' '.join(command)})")
    return find_bag(out)


def find_bag(folder: Path) -> Path:
    bags = sorted(p.parent for p in folder.rglob("metadata.yaml"))
    if not bags:
        raise DemoError(f"no rosbag2 (metadata.yaml) under {folder}")
    return bags[0]


def start_node(model_dir: Path, base_to_camera: np.ndarray, log_path: Path) -> subprocess.Popen:
    """The node as users run it: its own process, parameters on the command line."""
    mount = "[" + ",".join(repr(float(v)) for v in base_to_camera) + "]"
    params = {
        "model_dir": str(model_dir),
        "base_to_camera": mount,
        "image_topic": IMAGE_TOPIC,
        "odom_topic": ODOM_TOPIC,
    }
    command = [sys.executable, "-m", "latent_memory_ros.node", "--ros-args"]
    for name, value in params.items():
        command += ["-p", f"{name}:={value}"]
    env = dict(os.environ)  # carries the ROS wheels' LD_LIBRARY_PATH and bootstrap marker
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def stop_node(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def replay_into_node(
    bag: Path, node_process: subprocess.Popen, node_log: Path, timeout: float, startup: float
) -> dict[str, Any]:
    """Play the bag lock-step into the running node; collect its poses and diagnostics."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy

    poses: dict[float, np.ndarray] = {}
    diagnostics: dict[str, str] = {}

    def on_pose(msg: PoseStamped) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        poses[stamp] = np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w])

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == DIAGNOSTICS_NAME:
                diagnostics.clear()
                diagnostics.update({kv.key: kv.value for kv in status.values})

    rclpy.init()
    node = rclpy.create_node("latent_memory_demo")
    reliable = QoSProfile(depth=1000, reliability=QoSReliabilityPolicy.RELIABLE)
    node.create_subscription(PoseStamped, POSE_TOPIC, on_pose, reliable)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    try:
        with BagPlayer(
            node, bag, topics=[IMAGE_TOPIC, "/camera/camera_info", ODOM_TOPIC]
        ) as player:
            deadline = time.monotonic() + startup
            while not player.wait_for_subscribers([IMAGE_TOPIC, ODOM_TOPIC], timeout=1.0):
                if node_process.poll() is not None:
                    raise DemoError(
                        f"the node exited with {node_process.returncode} before subscribing; "
                        f"its log ({node_log}):\n{node_log.read_text(errors='replace')[-3000:]}"
                    )
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"the node did not subscribe within {startup:.0f} s; see {node_log}"
                    )
            print(f"replaying {bag} lock-step into the node ...", flush=True)
            stats = player.play_lockstep(
                IMAGE_TOPIC, POSE_TOPIC, timeout=timeout, first_timeout=startup
            )
        # The node reports its step times once a second: wait for a report that has seen
        # every frame it processed.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and diagnostics.get("frames_processed") != str(
            len(poses)
        ):
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return {"poses": poses, "diagnostics": dict(diagnostics), "stats": stats}


def score(run: BagRun, mount: np.ndarray, collected: dict[str, Any], out: Path) -> dict[str, Any]:
    poses: dict[float, np.ndarray] = collected["poses"]
    if len(poses) < 3:
        raise DemoError(f"the node published {len(poses)} poses for {len(run)} frames")
    stats = collected["stats"]
    diagnostics: dict[str, str] = collected["diagnostics"]
    assert run.gt is not None
    stamps = np.array(sorted(poses))
    # The node publishes the base (REP 105); the ground truth is the camera's.
    est = odometry_camera_poses(np.stack([poses[s] for s in stamps]), mount)
    odom_base = run.odom_at(run.image_stamps)
    trips = np.asarray(stats.round_trip_ms) if stats.round_trip_ms else np.array([np.nan])
    metrics: dict[str, Any] = {
        "frames": len(run),
        "frames_with_pose": len(poses),
        "frames_timed_out": stats.timed_out,
        **trajectory_metrics(stamps, est, run.gt.stamps, run.gt.poses),
        "step_ms_p50": float(diagnostics.get("step_ms_p50", "nan")),
        "step_ms_p99": float(diagnostics.get("step_ms_p99", "nan")),
        "round_trip_ms_p50": float(np.percentile(trips, 50)),
        "round_trip_ms_p99": float(np.percentile(trips, 99)),
        **baseline_metrics(run.gt, run.image_stamps, odom_base, mount),
        "model": diagnostics.get("model", ""),
        "bag": str(run.path),
        "providers": [diagnostics["provider"]] if "provider" in diagnostics else [],
    }
    write_trajectory(out / "est.tum", stamps, est)
    write_trajectory(out / "gt.tum", run.gt.stamps, run.gt.poses)
    odometry = odometry_camera_poses(odom_base, mount)
    write_trajectory(out / "odom.tum", run.image_stamps, odometry)
    plot_trajectories(
        out / "trajectory.png",
        (run.gt.stamps, run.gt.poses),
        {"node": (stamps, est), "odometry": (run.image_stamps, odometry)},
        plot_title(metrics),
    )
    return metrics


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latent_memory_demo",
        description="Render a held-out run, replay it into the node over DDS, score its poses.",
    )
    parser.add_argument("--out", type=Path, default=Path("results/demo"), help="output folder")
    parser.add_argument("--model", type=Path, help="exported model (default: the node's default)")
    parser.add_argument("--frames", type=int, default=450, help="frames to render (30 Hz)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the held-out run")
    parser.add_argument(
        "--reuse-bag", action="store_true", help="replay the bag already under OUT/bag"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a pose")
    parser.add_argument(
        "--startup", type=float, default=120.0, help="seconds for the node to load its model"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``make demo``; returns the exit code."""
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model_dir = args.model or default_model_dir()
    # Keep the demo's DDS traffic on this machine and away from other sessions.
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    use_large_message_transport()
    node_process = None
    try:
        if not (model_dir / "model.json").is_file():
            raise DemoError(f"no exported model at {model_dir} (model.json missing)")
        bag = (
            find_bag(out / "bag")
            if args.reuse_bag
            else render_bag(out / "bag", args.frames, args.seed)
        )
        rendered = time.monotonic()
        run = read_run(bag, IMAGE_TOPIC, gt_topic=GT_TOPIC, odom_topic=ODOM_TOPIC)
        if run.base_to_camera is None:
            raise DemoError(f"bag {bag} has no /tf_static transform to {run.image_frame_id!r}")
        node_log = out / "node.log"
        node_process = start_node(model_dir, run.base_to_camera, node_log)
        collected = replay_into_node(bag, node_process, node_log, args.timeout, args.startup)
        replayed = time.monotonic()
        stop_node(node_process)
        metrics = score(run, run.base_to_camera, collected, out)
    except DemoError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 1
    finally:
        if node_process is not None:
            stop_node(node_process)
    metrics |= {
        "model_dir": str(model_dir),
        "render_s": round(rendered - started, 1),
        "replay_s": round(replayed - rendered, 1),
        "total_s": round(time.monotonic() - started, 1),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print()
    print(metrics_table(metrics))
    print(
        f"round trip image -> pose: p50 {metrics['round_trip_ms_p50']:.1f} ms, "
        f"p99 {metrics['round_trip_ms_p99']:.1f} ms; "
        f"{metrics['frames_with_pose']}/{metrics['frames']} frames got a pose"
    )
    print(
        f"time: render {metrics['render_s']} s, replay {metrics['replay_s']} s, "
        f"total {metrics['total_s']} s"
    )
    print(f"wrote {out / 'metrics.json'}, {out / 'trajectory.png'} (node log: {out / 'node.log'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
