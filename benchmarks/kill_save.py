"""kill -9 during ``~/save_memory``, again and again: is a snapshot ever corrupt, does a
temporary file outlive the next start?

Each round starts the real node (a child process with the shipped parameter file,
``snapshot_path`` in a fresh directory and, from the second round on,
``memory_snapshot`` the same file, so it must load the snapshot the previous round left
at start-up), sends it a few frames, asks for ``~/save_memory`` several times in a row
and SIGKILLs it: in even rounds the moment the save's temporary file appears beside
the snapshot (mid-write), in odd ones after a random 0-50 ms. Then the snapshot is read
as the node would (``read_snapshot``: a zip of arrays, the format, the model's sha256)
and the temporaries left are counted; the next start must remove them.

    nice -n 10 .venv/bin/python benchmarks/kill_save.py --kills 50

The last line of stdout is the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    REPO,
    image_msg,
    isolate_dds,
    start_node,
    stop_node,
    texture,
    write_json,
)
from common import spin_until as common_spin_until

IMAGE_TOPIC = "/kill_save/image_raw"
WIDTH, HEIGHT = 96, 72


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--frames", type=int, default=3, help="frames before each save")
    parser.add_argument("--saves", type=int, default=5, help="~/save_memory calls per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    isolate_dds(10)
    rng = random.Random(args.seed)

    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_srvs.srv import Trigger

    from latent_memory_ros.conversions import stamp_to_ns
    from latent_memory_ros.snapshots import SnapshotError, read_snapshot

    spec = json.loads((args.model / "model.json").read_text())
    sha = spec["sha256"]["step.onnx"]
    folder = Path(tempfile.mkdtemp(prefix="kill_save_"))
    snapshot = folder / "memory.npz"

    def temporaries() -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{snapshot.name}."))

    rclpy.init()
    node = rclpy.create_node("kill_save_driver")
    reliable = QoSProfile(depth=20, reliability=QoSReliabilityPolicy.RELIABLE)
    image_pub = node.create_publisher(Image, IMAGE_TOPIC, reliable)
    answered: set[int] = set()
    node.create_subscription(
        PoseStamped,
        "/kill_save_node/pose",
        lambda m: answered.add(stamp_to_ns(m.header.stamp)),
        reliable,
    )
    save = node.create_client(Trigger, "/kill_save_node/save_memory")
    tex = texture(WIDTH, HEIGHT)

    def spin_until(condition, timeout: float) -> bool:
        return common_spin_until(node, condition, timeout, 0.002)

    def started(process, log: str) -> bool:
        """The node says it listens (the previous, killed node's endpoints linger in
        discovery for a while, so a ready service proves nothing), and the save
        service and the image subscription are matched."""
        return spin_until(
            lambda: (
                "listening:" in Path(log).read_text(errors="replace") or process.poll() is not None
            ),
            60.0,
        ) and spin_until(
            lambda: save.service_is_ready() and image_pub.get_subscription_count() > 0, 30.0
        )

    rounds, stamp_k = [], 0
    summary = {"kills": 0, "corrupt": 0, "missing_snapshot": 0, "start_up_failed": 0}
    summary |= {"killed_mid_write": 0, "temporaries_left_by_kills": 0, "temporaries_after_start": 0}
    summary |= {"saves_answered": 0, "started_with_snapshot": 0, "loaded_at_start_up": 0}
    try:
        base = [
            f"image_topic:={IMAGE_TOPIC}",
            "use_odom:=false",
            "providers:=[CPUExecutionProvider]",
            "image_qos:=reliable",
            "image_qos_depth:=20",
            f"snapshot_path:={snapshot}",
        ]
        for r in range(args.kills):
            params = list(base)
            had_snapshot = snapshot.exists()
            if had_snapshot:
                params.append(f"memory_snapshot:={snapshot}")
                summary["started_with_snapshot"] += 1
            left_before = temporaries()
            process, log = start_node("kill_save_node", params)
            ready = started(process, log)
            text = Path(log).read_text(errors="replace")
            if not ready or process.poll() is not None:
                summary["start_up_failed"] += 1
                print(
                    f"round {r}: the node did not start; its log {log}:\n{text[-2000:]}", flush=True
                )
                stop_node(process)
                continue
            summary["loaded_at_start_up"] += "memory loaded from" in text
            left_now = [t for t in temporaries() if t in left_before]
            summary["temporaries_after_start"] += len(left_now)
            for _ in range(args.frames):
                stamp_ns = 1_000 * 10**9 + stamp_k * 33_333_333
                stamp_k += 1
                image_pub.publish(image_msg(tex, stamp_k, WIDTH, stamp_ns, frame_id="camera"))
                spin_until(lambda s=stamp_ns: s in answered, 20.0)
            futures = [save.call_async(Trigger.Request()) for _ in range(args.saves)]
            mid_write = r % 2 == 0
            deadline = time.monotonic() + (5.0 if mid_write else rng.uniform(0.0, 0.05))
            while time.monotonic() < deadline:
                if mid_write and temporaries():
                    break
                rclpy.spin_once(node, timeout_sec=0)
            seen = bool(temporaries())
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
            summary["kills"] += 1
            summary["saves_answered"] += sum(f.done() for f in futures)
            left = temporaries()
            summary["killed_mid_write"] += seen
            summary["temporaries_left_by_kills"] += len(left)
            state = "absent"
            if snapshot.exists():
                try:
                    meta, arrays = read_snapshot(snapshot, spec["name"], sha)
                    assert all(
                        np.all(np.isfinite(v)) for v in arrays.values() if v.dtype.kind == "f"
                    )
                    state = f"ok ({meta['frames']} frames)"
                except (SnapshotError, AssertionError) as err:
                    state = f"corrupt: {err}"
                    summary["corrupt"] += 1
            else:  # a snapshot that was there before the kill and is gone after it
                summary["missing_snapshot"] += had_snapshot
            row = {"round": r, "mid_write": seen, "temporaries_left": len(left), "snapshot": state}
            rounds.append(row)
            print(json.dumps(row), flush=True)
        # One last start: it must remove what the last kill left, and load the snapshot.
        process, log = start_node("kill_save_node", base + [f"memory_snapshot:={snapshot}"])
        started(process, log)
        summary["final_start_loaded"] = "memory loaded from" in Path(log).read_text(
            errors="replace"
        )
        summary["temporaries_after_final_start"] = len(temporaries())
        stop_node(process)
    finally:
        node.destroy_node()
        rclpy.shutdown()
    summary["folder"] = str(folder)
    write_json(args.json, {"rounds": rounds, "summary": summary} if args.json else summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
