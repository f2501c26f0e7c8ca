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

``--runtime-frames N`` soaks the node's ROS-free Localizer (StudentRuntime, cues, vision
checks, odometry) for N frames in this process instead, without DDS:

    nice -n 10 .venv/bin/python benchmarks/soak.py --runtime-frames 100000

Both end with a JSON summary (the last line of stdout) that compares the last window
with the first against the issue's goals: RSS growth under 1 %, p50 and p99 of the last
window within 10 % of the first; ``goals`` says pass or fail for each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
from common import (
    REPO,
    crop,
    image_msg,
    isolate_dds,
    odometry_msg,
    percentiles,
    rss_mb,
    stop_node,
    texture,
    wait_for_node,
    write_json,
)
from common import spin_until as common_spin_until

NAME = "soak_node"
IMAGE_TOPIC = "/soak/image_raw"
ODOM_TOPIC = "/soak/odom"


def start_node(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    from common import start_node as start

    params = [
        f"image_topic:={IMAGE_TOPIC}",
        f"odom_topic:={ODOM_TOPIC}",
        "providers:=[CPUExecutionProvider]",
        "image_qos:=reliable",
        "image_qos_depth:=20",
        *args.node_param,
    ]
    return start(NAME, params)


def goals(first: dict, last: dict, rss_first: float, rss_last: float) -> dict:
    """The issue's soak goals, last window against the first."""
    growth = rss_last / rss_first - 1
    p50 = last["p50"] / first["p50"]
    p99 = last["p99"] / first["p99"]
    return {
        "rss_growth": round(growth, 4),
        "p50_last_over_first": round(p50, 3),
        "p99_last_over_first": round(p99, 3),
        "goals": {
            "rss_growth_under_1pc": "pass" if growth < 0.01 else "fail",
            "p50_within_10pc": "pass" if abs(p50 - 1) <= 0.1 else "fail",
            "p99_within_10pc": "pass" if abs(p99 - 1) <= 0.1 else "fail",
        },
    }


def runtime_soak(args: argparse.Namespace) -> None:
    """``--runtime-frames`` through the Localizer as the node runs it (odometry with
    every frame), timed around :meth:`Localizer.process` (wall clock, and the CPU time
    of this process, which other load does not inflate); RSS of this process."""
    import resource

    from latent_memory_ros.localizer import Localizer, LocalizerConfig
    from latent_memory_ros.runtime import StudentRuntime

    width, height = (int(v) for v in args.size.split("x"))
    runtime = StudentRuntime(
        args.model, providers=["CPUExecutionProvider"], intra_op_threads=args.threads
    )
    mount = np.array([0.0, 0.0, 0.3, -0.5, 0.5, -0.5, 0.5])
    localizer = Localizer(runtime, LocalizerConfig(base_to_camera=mount))
    tex = texture(width, height)
    frames = [crop(tex, k, width) for k in range(2 * (tex.shape[1] - width) // 3)]
    rows, times, cpu, restarts = [], [], [], 0
    states: dict[str, int] = {}
    started = time.monotonic()
    print(f"{args.runtime_frames} frames {width}x{height} through the Localizer", flush=True)
    for k in range(args.runtime_frames):
        stamp_ns = 1_000 * 10**9 + k * 33_333_333
        base = np.array([0.001 * k, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
        localizer.add_odometry(stamp_ns, base)
        t0, c0 = time.perf_counter(), time.process_time()
        estimate = localizer.process(frames[k % len(frames)], stamp_ns, use_odometry=True)
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
        restarts += estimate.restart is not None
        states[estimate.tracking.name] = states.get(estimate.tracking.name, 0) + 1
        if not np.all(np.isfinite(estimate.pose)):
            raise SystemExit(f"frame {k}: pose {estimate.pose} is not finite")
        if (k + 1) % args.window == 0:
            p50, p99 = percentiles(times)
            row = {"frames": k + 1, "p50": p50, "p99": p99, "rss_mb": rss_mb(os.getpid())}
            # CPU time of this process per frame: what the frame cost, whatever the load.
            row["cpu_p50"], row["cpu_p99"] = percentiles(cpu)
            row["elapsed_s"] = round(time.monotonic() - started, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
            times, cpu = [], []
            if args.max_seconds and row["elapsed_s"] > args.max_seconds:
                break
    first, last = rows[0], rows[-1]
    summary = {
        "kind": "runtime",
        "frames": last["frames"],
        "threads": args.threads,
        "window": args.window,
        "size": args.size,
        "first": first,
        "last": last,
        "rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cpu_p50_last_over_first": round(last["cpu_p50"] / first["cpu_p50"], 3),
        "cpu_p99_last_over_first": round(last["cpu_p99"] / first["cpu_p99"], 3),
        "restarts": restarts,
        "tracking": states,
        **goals(first, last, first["rss_mb"], last["rss_mb"]),
    }
    write_json(args.json, {"rows": rows, "summary": summary} if args.json else summary)


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=8000)
    parser.add_argument("--size", default="96x72", help="WIDTHxHEIGHT of the rgb8 images")
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--no-path-recorder", action="store_true")
    parser.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE")
    parser.add_argument("--json", type=Path, help="write the per-window rows here")
    parser.add_argument("--path-cost", action="store_true", help="only time ~/path messages")
    parser.add_argument(
        "--runtime-frames", type=int, default=0, help="soak the Localizer, not the node"
    )
    parser.add_argument("--model", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument(
        "--max-seconds", type=float, default=0.0, help="stop after the window that passes this"
    )
    args = parser.parse_args(argv)
    if args.path_cost:
        path_cost()
        return
    if args.runtime_frames:
        runtime_soak(args)
        return
    isolate_dds(150)
    width, height = (int(v) for v in args.size.split("x"))

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Odometry
    from nav_msgs.msg import Path as PathMsg
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import Image

    from latent_memory_ros.conversions import stamp_to_ns

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
        return common_spin_until(node, condition, timeout, 0.002)

    try:
        wait_for_node(node, [image_pub, odom_pub], NAME, log)
        tex = texture(width, height)
        rows, trips, lost, window_start = [], [], 0, time.monotonic()
        started = window_start
        start_ns = 1_000 * 10**9
        print(f"{args.frames} frames {width}x{height} lock-step, timeout {args.timeout} s")
        for k in range(args.frames):
            stamp_ns = start_ns + k * 33_333_333
            odom_pub.publish(odometry_msg(0.01 * k, stamp_ns))
            sent = time.monotonic()
            image_pub.publish(image_msg(tex, k, width, stamp_ns))
            if spin_until(lambda s=stamp_ns: s in answered, args.timeout):
                trips.append(1e3 * (answered[stamp_ns] - sent))
            else:
                lost += 1
            if (k + 1) % args.window == 0:
                now = time.monotonic()
                p50, p99 = percentiles(trips)
                row = {
                    "frames": k + 1,
                    "rate_hz": round(args.window / (now - window_start), 1),
                    "p50": p50,  # round trip, ms
                    "p99": p99,
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
                if args.max_seconds and now - started > args.max_seconds:
                    break
        spin_until(lambda: False, 1.5)
        first, last = rows[0], rows[-1]
        counters = diagnostics[-1] if diagnostics else {}
        summary = {
            "kind": "node",
            "frames": last["frames"],
            "window": args.window,
            "size": args.size,
            "answered": len(answered),
            "lost_total": sum(r["lost"] for r in rows),
            "node_alive": node_process.poll() is None,
            "first": first,
            "last": last,
            "rate_last_over_first": round(last["rate_hz"] / first["rate_hz"], 3),
            **goals(first, last, first["rss_mb"], last["rss_mb"]),
            "node_counters": {
                k: v
                for k, v in counters.items()
                if k.startswith(("frames_", "odometry", "step_ms", "publish_ms"))
            },
        }
        write_json(args.json, {"rows": rows, "summary": summary} if args.json else summary)
    finally:
        node.destroy_node()
        rclpy.shutdown()
        stop_node(node_process)


if __name__ == "__main__":
    main()
