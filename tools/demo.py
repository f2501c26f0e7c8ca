"""``make demo``: a held-out run replayed into the real node over DDS, then scored.

1. render a short held-out synthetic run into a rosbag2 (the training package's CLI);
2. start the node as its own process on the shipped default model, with the camera mount
   from the bag's /tf_static;
3. replay the bag into it lock-step (one image, then wait for its pose);
4. collect the poses it publishes and its /diagnostics;
5. when the model has a query graph, ask the node at the last frame where the cameras
   of earlier frames are (``~/query/image`` -> ``~/query/pose``);
6. score them with evo against ground truth, beside the odometry and no-motion baselines,
   plus the query recall, and write ``results/demo/metrics.json`` and ``trajectory.png``;
7. the memory ablation: the same frames offline through the runtime twice, with the
   memory carried and reset before every frame, give the memory gain
   ``1 - ATE carried / ATE reset``.

Developer tooling, not part of the installed package: it finds the repository (the
training package, the default model) beside this file. ``make demo`` runs
``python tools/demo.py``; ``--help`` lists its flags.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from latent_memory_ros import geometry
from latent_memory_ros.bag import BagRun, read_run
from latent_memory_ros.conversions import ns_to_sec_nanosec, pose_to_array, stamp_to_s
from latent_memory_ros.evaluation import (
    BAG_GT_TOPIC,
    BAG_IMAGE_TOPIC,
    baseline_metrics,
    memory_ablation,
    metrics_table,
    odometry_camera_poses,
    plot_title,
    plot_trajectories,
    query_errors,
    query_indices,
    query_recall,
    trajectory_metrics,
)
from latent_memory_ros.model_format import default_model_dir
from latent_memory_ros.replay import BagPlayer, use_large_message_transport
from latent_memory_ros.tum import write_trajectory

REPO = Path(__file__).resolve().parent.parent
# The benchmarks' helpers for the node as a child process (SIGINT as ros2 launch sends
# it, then SIGKILL) serve the demo too; both are scripts beside the package.
sys.path.insert(0, str(REPO / "benchmarks"))
from common import stop_node  # noqa: E402

NODE_NAME = "latent_memory_node"
IMAGE_TOPIC = BAG_IMAGE_TOPIC
ODOM_TOPIC = "/odom"
GT_TOPIC = BAG_GT_TOPIC
POSE_TOPIC = f"/{NODE_NAME}/pose"
QUERY_IMAGE_TOPIC = f"/{NODE_NAME}/query/image"
QUERY_POSE_TOPIC = f"/{NODE_NAME}/query/pose"
# Queries: every QUERY_EVERY-th frame at least QUERY_MIN_GAP frames before the last one,
# as the training package's ``compare`` asks them.
QUERY_EVERY = 5
QUERY_MIN_GAP = 30
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


def query_frames(run: BagRun) -> list[tuple[float, np.ndarray]]:
    """The earlier frames the demo asks about at the run's last frame: ``(stamp, rgb)``."""
    asked = set(query_indices(len(run), QUERY_EVERY, QUERY_MIN_GAP).tolist())
    return [(t, rgb) for i, (t, rgb) in enumerate(run.images()) if i in asked]


def ask_queries(
    node: Any, queries: list[tuple[float, np.ndarray]], frame_id: str, timeout: float
) -> dict[float, np.ndarray]:
    """Send each query image to the node and wait for its answer; returns the answered
    poses (query camera in the current camera frame) by the query's stamp."""
    import rclpy
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import Image

    answers: dict[float, np.ndarray] = {}

    def on_answer(msg: PoseWithCovarianceStamped) -> None:
        answers[stamp_to_s(msg.header.stamp)] = pose_to_array(msg.pose.pose)

    reliable = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
    node.create_subscription(PoseWithCovarianceStamped, QUERY_POSE_TOPIC, on_answer, reliable)
    pub = node.create_publisher(Image, QUERY_IMAGE_TOPIC, reliable)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (
        pub.get_subscription_count() and node.count_publishers(QUERY_POSE_TOPIC)
    ):
        rclpy.spin_once(node, timeout_sec=0.05)
    out: dict[float, np.ndarray] = {}
    for stamp, rgb in queries:
        msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8")
        msg.step, msg.data = rgb.shape[1] * 3, rgb.tobytes()
        msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_sec_nanosec(round(stamp * 1e9))
        msg.header.frame_id = frame_id
        answers.clear()
        pub.publish(msg)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not answers:
            rclpy.spin_once(node, timeout_sec=0.05)
        for answered, pose in answers.items():
            if abs(answered - stamp) < 1e-6:
                out[stamp] = pose
    return out


def replay_into_node(
    bag: Path,
    node_process: subprocess.Popen,
    node_log: Path,
    timeout: float,
    startup: float,
    queries: list[tuple[float, np.ndarray]] | None = None,
    frame_id: str = "",
) -> dict[str, Any]:
    """Play the bag lock-step into the running node; collect its poses and diagnostics,
    then ask it ``queries`` (at the last frame) and collect the answers."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy

    poses: dict[float, np.ndarray] = {}
    diagnostics: dict[str, str] = {}

    def on_pose(msg: PoseStamped) -> None:
        poses[stamp_to_s(msg.header.stamp)] = pose_to_array(msg.pose)

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
        answers = ask_queries(node, queries, frame_id, timeout) if queries else {}
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
    return {
        "poses": poses,
        "diagnostics": dict(diagnostics),
        "stats": stats,
        "asked": len(queries or []),
        "answers": answers,
    }


def query_metrics(
    run: BagRun, last_stamp: float, answers: dict[float, np.ndarray], asked: int
) -> dict[str, Any]:
    """Recall of the node's query answers against the ground-truth pose of each query
    camera in the last frame's camera, beside answering "here" (identity)."""
    assert run.gt is not None
    if not answers:
        return {"query_asked": asked, "query_answered": 0}
    stamps = np.array(sorted(answers))
    gt = run.gt.at(np.append(stamps, last_stamp))
    true = geometry.relative(np.broadcast_to(gt[-1], gt[:-1].shape), gt[:-1])
    pred = np.stack([answers[s] for s in stamps])
    identity = np.broadcast_to(geometry.IDENTITY, true.shape)
    trans, rot = query_errors(pred, true)
    return {
        "query_asked": asked,
        "query_answered": len(answers),
        **{f"query_{k}": v for k, v in query_recall(trans, rot).items()},
        **{
            f"query_identity_{k}": v for k, v in query_recall(*query_errors(identity, true)).items()
        },
        "query_median_m": float(np.median(trans)),
        "query_median_deg": float(np.median(rot)),
    }


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
        **(
            query_metrics(run, stamps[-1], collected["answers"], collected["asked"])
            if collected["asked"]
            else {}
        ),
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
        prog="tools/demo.py",
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
        queries = query_frames(run) if (model_dir / "query.onnx").is_file() else []
        collected = replay_into_node(
            bag, node_process, node_log, args.timeout, args.startup, queries, run.image_frame_id
        )
        replayed = time.monotonic()
        stop_node(node_process)
        metrics = score(run, run.base_to_camera, collected, out)
        print("memory ablation: the same frames offline, memory carried and reset ...", flush=True)
        metrics |= memory_ablation(run, model_dir, metrics["providers"] or None)
        images = memory_ablation(run, model_dir, metrics["providers"] or None, odometry=False)
        metrics |= {f"images_only_{k}": v for k, v in images.items()}
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
    if "query_answered" in metrics:
        print(
            f"query recall ({metrics['query_answered']}/{metrics['query_asked']} earlier frames "
            f"asked at the last frame): {metrics.get('query_recall_0.25m_5deg', float('nan')):.3f} "
            f"within 0.25 m, 5 deg; {metrics.get('query_recall_0.5m_10deg', float('nan')):.3f} "
            f'within 0.5 m, 10 deg (answering "here": '
            f"{metrics.get('query_identity_recall_0.25m_5deg', float('nan')):.3f} / "
            f"{metrics.get('query_identity_recall_0.5m_10deg', float('nan')):.3f})"
        )
    else:
        print(f"query recall: the model at {model_dir} has no query graph (query.onnx)")
    print(
        f"memory gain (the same frames offline, memory reset before every frame): "
        f"{metrics['memory_gain']:.3f} (ATE {metrics['memory_carried_ate_rmse_m']:.4f} m "
        f"carried, {metrics['memory_reset_ate_rmse_m']:.4f} m reset); images only "
        f"{metrics['images_only_memory_gain']:.3f} (ATE "
        f"{metrics['images_only_memory_carried_ate_rmse_m']:.4f} m carried, "
        f"{metrics['images_only_memory_reset_ate_rmse_m']:.4f} m reset)"
    )
    print(
        f"time: render {metrics['render_s']} s, replay {metrics['replay_s']} s, "
        f"total {metrics['total_s']} s"
    )
    print(f"wrote {out / 'metrics.json'}, {out / 'trajectory.png'} (node log: {out / 'node.log'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
