"""A lock-step soak of the real node over DDS: does frame N cost what frame 10 cost?

Each frame's odometry (at the image's stamp) is published, then the image (reliable),
and the next one waits for its pose (at most ``--timeout`` s; a frame without a pose by
then is counted as lost). Recorders of ``~/pose``, ``~/odometry``, ``~/path`` and
``/diagnostics`` run as a test harness would. Prints the rate, round-trip p50 / p99 and
the node's RSS per window of ``--window`` frames, and the first window against the last.

    nice -n 19 .venv/bin/python benchmarks/soak.py --frames 8000 --size 96x72
    nice -n 19 .venv/bin/python benchmarks/soak.py --frames 8000 --size 96x72 \\
        --node-param path_max_length:=200   # the ~/path size the node re-sends each frame

The node runs as a child process with the shipped parameter file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
NAME = "soak_node"
IMAGE_TOPIC = "/soak/image_raw"
ODOM_TOPIC = "/soak/odom"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_node(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    log = tempfile.NamedTemporaryFile(prefix="soak_node_", suffix=".log", delete=False)
    params = [
        f"image_topic:={IMAGE_TOPIC}",
        f"odom_topic:={ODOM_TOPIC}",
        "providers:=[CPUExecutionProvider]",
        "image_qos:=reliable",
        "image_qos_depth:=20",
        *args.node_param,
    ]
    command = [sys.executable, "-m", "latent_memory_ros.node", "--ros-args", "-r"]
    command += [f"__node:={NAME}", "--params-file", str(REPO / "config" / "latent_memory.yaml")]
    for p in params:
        command += ["-p", p]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    return process, log.name


def path_cost(sizes: tuple[int, ...] = (10, 500, 1000, 2000), repeats: int = 20) -> None:
    """CPU time (this thread's, so other load does not count) to serialise a ~/path of
    N poses, what the node pays each time it publishes one, and to deserialise it, what
    a Python subscriber (a test harness) pays."""
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Path as PathMsg
    from rclpy.serialization import deserialize_message, serialize_message
    from std_msgs.msg import Header

    poses = [PoseStamped(header=Header(frame_id="odom")) for _ in range(max(sizes))]
    serialize_message(PathMsg(poses=poses[:10]))  # first use loads the type support
    for n in sizes:
        msg = PathMsg(header=Header(frame_id="odom"), poses=poses[:n])
        out, back = [], []
        for _ in range(repeats):
            started = time.thread_time()
            data = serialize_message(msg)
            middle = time.thread_time()
            deserialize_message(data, PathMsg)
            out.append((middle - started) * 1e3)
            back.append((time.thread_time() - middle) * 1e3)
        row = {"path_poses": n, "bytes": len(data)}
        row["serialise_cpu_ms_p50"] = round(float(np.median(out)), 2)
        row["deserialise_cpu_ms_p50"] = round(float(np.median(back)), 2)  # a Python subscriber
        print(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=8000)
    parser.add_argument("--size", default="96x72", help="WIDTHxHEIGHT of the rgb8 images")
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--no-path-recorder", action="store_true")
    parser.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE")
    parser.add_argument("--json", type=Path, help="write the per-window rows here")
    parser.add_argument("--path-cost", action="store_true", help="only time ~/path messages")
    args = parser.parse_args()
    if args.path_cost:
        path_cost()
        return
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 80))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    width, height = (int(v) for v in args.size.split("x"))

    import cv2
    import rclpy
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Odometry
    from nav_msgs.msg import Path as PathMsg
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from latent_memory_ros.conversions import stamp_from_ns, stamp_to_ns

    node_process, log = start_node(args)
    rclpy.init()
    node = rclpy.create_node("soak_driver")
    reliable = QoSProfile(depth=50, reliability=QoSReliabilityPolicy.RELIABLE)
    image_pub = node.create_publisher(Image, IMAGE_TOPIC, reliable)
    odom_pub = node.create_publisher(Odometry, ODOM_TOPIC, reliable)
    answered: dict[int, float] = {}
    diagnostics: list[dict[str, str]] = []
    paths = [0]

    def on_pose(msg: PoseStamped) -> None:
        answered[stamp_to_ns(msg.header.stamp)] = time.monotonic()

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == f"{NAME}: runtime":
                diagnostics.append({kv.key: kv.value for kv in status.values})

    node.create_subscription(PoseStamped, f"/{NAME}/pose", on_pose, reliable)
    node.create_subscription(Odometry, f"/{NAME}/odometry", lambda m: None, reliable)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, reliable)
    if not args.no_path_recorder:
        node.create_subscription(
            PathMsg, f"/{NAME}/path", lambda m: paths.__setitem__(0, len(m.poses)), reliable
        )

    def spin_until(condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            rclpy.spin_once(node, timeout_sec=0.002)
        return True

    try:
        if not spin_until(
            lambda: (
                image_pub.get_subscription_count() > 0
                and odom_pub.get_subscription_count() > 0
                and node.count_publishers(f"/{NAME}/pose") > 0
            ),
            60.0,
        ):
            raise SystemExit(f"the node did not connect; its log: {log}")
        spin_until(lambda: False, 1.0)
        rng = np.random.default_rng(0)
        texture = cv2.resize(
            rng.integers(0, 256, (40, 60, 3), dtype=np.uint8),
            (width + 400, height),
            interpolation=cv2.INTER_CUBIC,
        )
        rows, trips, lost, window_start = [], [], 0, time.monotonic()
        start_ns = 1_000 * 10**9
        print(f"{args.frames} frames {width}x{height} lock-step, timeout {args.timeout} s")
        for k in range(args.frames):
            stamp_ns = start_ns + k * 33_333_333
            stamp = stamp_from_ns(stamp_ns, Time)
            odom = Odometry(header=Header(stamp=stamp, frame_id="odom"), child_frame_id="base_link")
            odom.pose.pose.position.x = 0.01 * k
            odom.pose.pose.orientation.w = 1.0
            shift = (3 * k) % 400
            image = Image(
                header=Header(stamp=stamp, frame_id="camera_optical"),
                height=height,
                width=width,
                encoding="rgb8",
                step=width * 3,
                data=np.ascontiguousarray(texture[:, shift : shift + width]).tobytes(),
            )
            odom_pub.publish(odom)
            sent = time.monotonic()
            image_pub.publish(image)
            if spin_until(lambda s=stamp_ns: s in answered, args.timeout):
                trips.append(1e3 * (answered[stamp_ns] - sent))
            else:
                lost += 1
            if (k + 1) % args.window == 0:
                now = time.monotonic()
                p50, p99 = np.percentile(trips, [50, 99]) if trips else (np.nan, np.nan)
                row = {
                    "frames": k + 1,
                    "rate_hz": round(args.window / (now - window_start), 1),
                    "round_trip_ms_p50": round(float(p50), 2),
                    "round_trip_ms_p99": round(float(p99), 2),
                    "lost": lost,
                    "rss_mb": round(rss_mb(node_process.pid), 1),
                    "path_poses": paths[0],
                }
                if diagnostics:  # the node's own: step and outputs, last 1,000 frames
                    for name in ("step_ms_p50", "publish_ms_p50", "publish_ms_p99"):
                        row[name] = float(diagnostics[-1].get(name, "nan"))
                rows.append(row)
                print(json.dumps(row), flush=True)
                trips, lost, window_start = [], 0, now
        spin_until(lambda: False, 1.5)
        first, last = rows[0], rows[-1]
        summary = {
            "lost_total": sum(r["lost"] for r in rows),
            "rate_last_over_first": round(last["rate_hz"] / first["rate_hz"], 3),
            "p50_last_over_first": round(last["round_trip_ms_p50"] / first["round_trip_ms_p50"], 3),
            "p99_last_over_first": round(last["round_trip_ms_p99"] / first["round_trip_ms_p99"], 3),
            "rss_growth": round(last["rss_mb"] / first["rss_mb"] - 1, 4),
            "node_counters": {
                k: v
                for k, v in (diagnostics[-1] if diagnostics else {}).items()
                if k.startswith(("frames_", "odometry", "step_ms", "publish_ms"))
            },
        }
        print(json.dumps(summary), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    finally:
        node.destroy_node()
        rclpy.shutdown()
        node_process.send_signal(signal.SIGINT)
        try:
            node_process.wait(10)
        except subprocess.TimeoutExpired:
            node_process.kill()


if __name__ == "__main__":
    main()
