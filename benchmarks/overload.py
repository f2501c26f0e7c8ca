"""The real node over DDS fed faster than it can run: is latency bounded, is every loss counted?

The node runs as a child process with the shipped parameter file (image QoS
``sensor_data``, depth 1: a live camera's). First its capacity is measured in the same
run: ``--capacity-frames`` frames lock-step (each waits for its pose), capacity = 1 /
median round trip. Then, per factor of ``--factors`` (default 2 and 5), ``--frames``
frames are published open-loop at factor x capacity, each with its odometry just before
it (best-effort images, as a camera driver sends them), followed by a few lock-step
frames so that losses at the end of the burst show in the stamps too.

    nice -n 10 .venv/bin/python benchmarks/overload.py --frames 600

Stamps are 20 ms apart throughout (whatever the publishing rate), so the node's
estimate of the camera period, and with it ``frames_missing``, does not depend on the
wall clock. Per factor it reports the round trip (image published -> pose received)
percentiles of the answered frames and the node's counters over that phase: every
frame published must be received or counted missing (``sent = received + missing``),
and every received one processed, dropped in the node's own slot, or rejected.
The last line of stdout is the JSON summary.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from common import (
    image_msg,
    isolate_dds,
    odometry_msg,
    percentiles,
    rss_mb,
    start_node,
    stop_node,
    texture,
    wait_for_node,
    write_json,
)
from common import spin_until as common_spin_until

NAME = "overload_node"
IMAGE_TOPIC = "/overload/image_raw"
ODOM_TOPIC = "/overload/odom"
STAMP_STEP_NS = 20_000_000
TAIL_FRAMES = 3
COUNTERS = ("received", "processed", "dropped", "missing", "rejected")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=600, help="frames per overload factor")
    parser.add_argument("--capacity-frames", type=int, default=100)
    parser.add_argument("--factors", type=float, nargs="+", default=[2.0, 5.0])
    parser.add_argument("--size", default="96x72", help="WIDTHxHEIGHT of the rgb8 images")
    parser.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    isolate_dds(140)
    width, height = (int(v) for v in args.size.split("x"))

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Odometry
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from latent_memory_ros.conversions import stamp_to_ns

    params = [
        f"image_topic:={IMAGE_TOPIC}",
        f"odom_topic:={ODOM_TOPIC}",
        "providers:=[CPUExecutionProvider]",
        *args.node_param,
    ]
    process, log = start_node(NAME, params)
    rclpy.init()
    node = rclpy.create_node("overload_driver")
    reliable = QoSProfile(depth=50, reliability=QoSReliabilityPolicy.RELIABLE)
    image_pub = node.create_publisher(Image, IMAGE_TOPIC, qos_profile_sensor_data)
    odom_pub = node.create_publisher(Odometry, ODOM_TOPIC, reliable)
    answered: dict[int, float] = {}
    diagnostics: list[dict[str, str]] = []

    def on_pose(msg: PoseStamped) -> None:
        answered[stamp_to_ns(msg.header.stamp)] = time.monotonic()

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == f"{NAME}: runtime":
                diagnostics.append({kv.key: kv.value for kv in status.values})

    node.create_subscription(PoseStamped, f"/{NAME}/pose", on_pose, reliable)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, reliable)

    def spin_until(condition, timeout: float) -> bool:
        return common_spin_until(node, condition, timeout, 0.002)

    tex = texture(width, height)
    frame_index = [0]
    sent_at: dict[int, float] = {}

    def publish() -> int:
        k = frame_index[0]
        frame_index[0] += 1
        stamp_ns = 1_000 * 10**9 + k * STAMP_STEP_NS
        odom_pub.publish(odometry_msg(0.002 * k, stamp_ns))
        sent_at[stamp_ns] = time.monotonic()
        image_pub.publish(image_msg(tex, k, width, stamp_ns))
        return stamp_ns

    def lock_step(n: int) -> list[float]:
        trips = []
        for _ in range(n):
            s = publish()
            if spin_until(lambda s=s: s in answered, 5.0):
                trips.append(answered[s] - sent_at[s])
        return trips

    def counters_now(after: int) -> dict[str, int]:
        """The node's counters from a /diagnostics report newer than ``after`` reports."""
        spin_until(lambda: len(diagnostics) > after + 1, 10.0)
        values = diagnostics[-1]
        return {k: int(values[f"frames_{k}"]) for k in COUNTERS}

    result: dict = {"size": args.size, "frames": args.frames, "stamp_step_ms": STAMP_STEP_NS / 1e6}
    try:
        wait_for_node(node, [image_pub, odom_pub], NAME, log)
        lock_step(10)  # warm-up
        trips = lock_step(args.capacity_frames)
        service_s = float(np.median(trips))
        capacity_hz = 1.0 / service_s
        result["capacity"] = {
            "frames": args.capacity_frames,
            "answered": len(trips),
            "round_trip_ms_p50_p99": percentiles(np.array(trips) * 1e3),
            "capacity_hz": round(capacity_hz, 2),
        }
        print(result["capacity"], flush=True)
        result["phases"] = []
        for factor in args.factors:
            rate = factor * capacity_hz
            before = counters_now(len(diagnostics))
            first = frame_index[0]
            start = time.monotonic()
            for i in range(args.frames):
                due = start + i / rate
                while (wait := due - time.monotonic()) > 0:
                    rclpy.spin_once(node, timeout_sec=min(wait, 0.005))
                publish()
            burst_s = time.monotonic() - start
            stamps = [1_000 * 10**9 + k * STAMP_STEP_NS for k in range(first, frame_index[0])]
            spin_until(lambda: False, 2.0)  # the last frames of the burst are answered
            lock_step(TAIL_FRAMES)
            phase_stamps = [1_000 * 10**9 + k * STAMP_STEP_NS for k in range(first, frame_index[0])]
            after = counters_now(len(diagnostics))
            delta = {k: after[k] - before[k] for k in COUNTERS}
            sent = args.frames + TAIL_FRAMES
            trips = [answered[s] - sent_at[s] for s in stamps if s in answered]
            phase = {
                "factor": factor,
                "rate_hz": round(rate, 2),
                "achieved_rate_hz": round(args.frames / burst_s, 2),
                "sent": sent,
                "answered": sum(s in answered for s in phase_stamps),
                **{f"node_{k}": v for k, v in delta.items()},
                "round_trip_ms_p50_p90_p99_max": percentiles(
                    np.array(trips) * 1e3, (50, 90, 99, 100)
                ),
                "every_loss_counted": sent == delta["received"] + delta["missing"],
                "received_add_up": delta["received"]
                == delta["processed"] + delta["dropped"] + delta["rejected"],
            }
            result["phases"].append(phase)
            print(phase, flush=True)
        result["node_alive"] = process.poll() is None
        result["node_rss_mb"] = round(rss_mb(process.pid), 1)
        result["log"] = log
    finally:
        node.destroy_node()
        rclpy.shutdown()
        result["exit_code"] = stop_node(process)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
