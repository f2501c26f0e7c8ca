"""How many 640x480 frames (and their odometry) reach the node over loopback Fast DDS.

A stand-in for a same-host camera driver publishes ``--frames`` rgb8 images at
``--rate`` Hz, each with its odometry sample at the image's stamp published just
before it (what a driver at camera rate does), into the real node started with its
default image QoS (``sensor_data``). Per configuration of the Fast DDS profile
(``FASTDDS_DEFAULT_PROFILES_FILE``) on the publisher and on the node, it reports the
frames the node received (its ``/diagnostics``), the poses answered, how many ran
with their odometry (``~/status`` ``odometry_used``) and the round trip image
published -> pose received.

    nice -n 19 .venv/bin/python benchmarks/large_frames.py --frames 100 --repeats 2

The publisher runs in a child process of this script (``--publisher``), since Fast
DDS reads its profile once per process.
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
PROFILE = REPO / "config" / "fastdds.xml"
NAME = "large_frames_node"
IMAGE_TOPIC = "/large_frames/image_raw"
ODOM_TOPIC = "/large_frames/odom"
CONFIGURATIONS = {  # name: (publisher has the profile, node has the profile)
    "default": (False, False),
    "node only": (False, True),
    "publisher only": (True, False),
    "both": (True, True),
}


def environment(profile: bool) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        env.pop(name, None)
    if profile:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def run_publisher(args: argparse.Namespace) -> None:
    """The driver side: publish, record the node's answers, print one JSON line."""
    import cv2
    import rclpy
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Odometry
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from latent_memory_ros.conversions import stamp_from_ns

    rclpy.init()
    node = rclpy.create_node("large_frames_driver")
    reliable = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
    image_qos = reliable if args.publisher_qos == "reliable" else qos_profile_sensor_data
    image_pub = node.create_publisher(Image, IMAGE_TOPIC, image_qos)
    odom_pub = node.create_publisher(Odometry, ODOM_TOPIC, reliable)
    sent: dict[tuple[int, int], float] = {}
    answered: dict[tuple[int, int], float] = {}
    odometry_used: dict[tuple[int, int], bool] = {}
    diagnostics: list[dict[str, str]] = []

    def on_pose(msg: PoseStamped) -> None:
        answered.setdefault((msg.header.stamp.sec, msg.header.stamp.nanosec), time.monotonic())

    def on_status(msg: DiagnosticStatus) -> None:
        values = {kv.key: kv.value for kv in msg.values}
        if "odometry_used" in values:
            odometry_used[len(odometry_used)] = values["odometry_used"] == "true"

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == f"{NAME}: runtime":
                diagnostics.append({kv.key: kv.value for kv in status.values})

    node.create_subscription(PoseStamped, f"/{NAME}/pose", on_pose, reliable)
    node.create_subscription(DiagnosticStatus, f"/{NAME}/status", on_status, reliable)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, reliable)

    def spin_until(condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            rclpy.spin_once(node, timeout_sec=0.005)
        return True

    if not spin_until(
        lambda: (
            image_pub.get_subscription_count() > 0
            and odom_pub.get_subscription_count() > 0
            and node.count_publishers(f"/{NAME}/pose") > 0
            and diagnostics
        ),
        60.0,
    ):
        raise SystemExit("the node did not connect")
    spin_until(lambda: False, 1.0)  # let discovery settle both ways
    # A smooth texture: per-pixel noise would make the corner tracker the bottleneck.
    rng = np.random.default_rng(0)
    texture = cv2.resize(
        rng.integers(0, 256, (48, 100, 3), dtype=np.uint8), (1000, 480), cv2.INTER_CUBIC
    )
    period = 1.0 / args.rate
    start_ns = 1_000 * 10**9
    next_t = time.monotonic()
    for k in range(args.frames):
        stamp_ns = start_ns + round(k * period * 1e9)
        stamp = stamp_from_ns(stamp_ns, Time)
        header = Header(stamp=stamp, frame_id="camera_optical")
        odom = Odometry(header=Header(stamp=stamp, frame_id="odom"), child_frame_id="base_link")
        odom.pose.pose.position.x = 0.01 * k
        odom.pose.pose.orientation.w = 1.0
        shift = (3 * k) % 360
        image = Image(
            header=header,
            height=480,
            width=640,
            encoding="rgb8",
            step=640 * 3,
            data=np.ascontiguousarray(texture[:, shift : shift + 640]).tobytes(),
        )
        odom_pub.publish(odom)
        sent[(stamp.sec, stamp.nanosec)] = time.monotonic()
        image_pub.publish(image)
        next_t += period
        spin_until(lambda t=next_t: time.monotonic() >= t, period + 1.0)
    spin_until(lambda: len(answered) >= args.frames, 3.0)
    count = len(diagnostics)
    spin_until(lambda: len(diagnostics) >= count + 2, 3.0)  # counters after the last frame
    last = diagnostics[-1]
    trips = [1e3 * (answered[s] - sent[s]) for s in answered if s in sent]
    p50, p99 = np.percentile(trips, [50, 99]) if trips else (float("nan"), float("nan"))
    result = {
        "sent": args.frames,
        "received": int(last.get("frames_received", -1)),
        "answered": len(answered),
        "with_odometry": sum(odometry_used.values()),
        "round_trip_ms_p50": round(float(p50), 1),
        "round_trip_ms_p99": round(float(p99), 1),
        "round_trip_ms": [round(t) for t in trips] if args.verbose else None,
        "diagnostics": {
            k: v
            for k, v in last.items()
            if k.startswith(("frames_", "odometry", "step_ms", "camera"))
        },
    }
    print(json.dumps(result), flush=True)
    node.destroy_node()
    rclpy.shutdown()


def run_configuration(args: argparse.Namespace, publisher_profile: bool, node_profile: bool):
    log = tempfile.NamedTemporaryFile(prefix="large_frames_node_", suffix=".log", delete=False)
    node = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "latent_memory_ros.node",
            "--ros-args",
            "-r",
            f"__node:={NAME}",
            "--params-file",
            str(REPO / "config" / "latent_memory.yaml"),
            "-p",
            f"image_topic:={IMAGE_TOPIC}",
            "-p",
            f"odom_topic:={ODOM_TOPIC}",
            "-p",
            "providers:=[CPUExecutionProvider]",
            "-p",
            f"image_qos_depth:={args.image_qos_depth}",
        ],
        env=environment(node_profile),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--publisher", *sys.argv[1:]],
            env=environment(publisher_profile),
            capture_output=True,
            text=True,
            timeout=120 + args.frames / args.rate,
        )
        if out.returncode != 0:
            raise SystemExit(f"publisher failed:\n{out.stderr[-3000:]}\nnode log: {log.name}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        node.send_signal(signal.SIGINT)
        try:
            node.wait(10)
        except subprocess.TimeoutExpired:
            node.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--image-qos-depth",
        type=int,
        default=1,
        help="the node's image queue (1, its default, loses frames to a starved executor)",
    )
    parser.add_argument("--publisher-qos", choices=("reliable", "sensor_data"), default="reliable")
    parser.add_argument(
        "--configurations", nargs="*", default=list(CONFIGURATIONS), choices=list(CONFIGURATIONS)
    )
    parser.add_argument("--verbose", action="store_true", help="every round trip")
    parser.add_argument("--json", action="store_true", help="end with all results as JSON")
    parser.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 80))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if args.publisher:
        run_publisher(args)
        return
    print(f"{args.frames} frames 640x480 rgb8 at {args.rate} Hz, publisher {args.publisher_qos}")
    results: dict[str, list] = {}
    for name in args.configurations:
        for _ in range(args.repeats):
            result = run_configuration(args, *CONFIGURATIONS[name])
            results.setdefault(name, []).append(result)
            print(f"profile on {name:14s} {json.dumps(result)}", flush=True)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
