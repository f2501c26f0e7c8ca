"""What the benchmark scripts share: the node as a child process with the shipped
parameter file, its RSS, and frames and odometry to send it.

The scripts run as ``python benchmarks/NAME.py``, so this module is importable as
``common`` from them (and from test/test_benchmarks.py, which runs them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PARAMS_FILE = REPO / "config" / "latent_memory.yaml"


def isolate_dds(base: int) -> None:
    """A domain of this run's own (``base`` + pid % 80) and localhost-only discovery,
    unless the caller set them (a test session does)."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(base + os.getpid() % 80))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_node(name: str, params: Sequence[str]) -> tuple[subprocess.Popen, str]:
    """``python -m latent_memory_ros.node`` named ``name`` with the shipped parameter
    file and ``params`` (``NAME:=VALUE``); returns the process and its log file. The
    environment is this process's (the ROS wheels' LD_LIBRARY_PATH and bootstrap
    marker travel with it) with the repository first on PYTHONPATH."""
    log = tempfile.NamedTemporaryFile(prefix=f"{name}_", suffix=".log", delete=False)
    command = [sys.executable, "-m", "latent_memory_ros.node", "--ros-args", "-r"]
    command += [f"__node:={name}", "--params-file", str(PARAMS_FILE)]
    for p in params:
        command += ["-p", p]
    path = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO
    )
    return process, log.name


def spin_until(node, condition, timeout: float, period: float = 0.002) -> bool:
    """Spin ``node`` until ``condition()`` holds (True) or ``timeout`` s pass (False)."""
    import rclpy

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        rclpy.spin_once(node, timeout_sec=period)
    return True


def wait_for_node(node, publishers, name: str, log: str, timeout: float = 60.0) -> None:
    """Spin ``node`` until the node ``name`` subscribes to every one of ``publishers``
    and publishes its pose, then 1 s more for discovery to settle both ways; SystemExit
    naming the node's log if it does not within ``timeout`` s."""

    def connected() -> bool:
        subscribed = all(p.get_subscription_count() > 0 for p in publishers)
        return subscribed and node.count_publishers(f"/{name}/pose") > 0

    if not spin_until(node, connected, timeout):
        raise SystemExit(f"the node did not connect; its log: {log}")
    spin_until(node, lambda: False, 1.0)


def stop_node(process: subprocess.Popen) -> int | None:
    """SIGINT (what ros2 launch sends), SIGKILL after 10 s; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


def texture(width: int, height: int, margin: int = 400, seed: int = 0) -> np.ndarray:
    """A smooth random RGB texture ``margin`` pixels wider than the frames cut from it."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    return cv2.resize(small, (width + margin, height), interpolation=cv2.INTER_CUBIC)


def crop(texture_rgb: np.ndarray, k: int, width: int) -> np.ndarray:
    """Frame ``k``: the camera sliding 3 pixels a frame across the texture (and back)."""
    margin = texture_rgb.shape[1] - width
    x = (3 * k) % (2 * margin)
    x = x if x < margin else 2 * margin - x
    return np.ascontiguousarray(texture_rgb[:, x : x + width])


def image_msg(
    texture_rgb: np.ndarray, k: int, width: int, stamp_ns: int, frame_id: str = "camera_optical"
):
    """Frame ``k`` of :func:`crop` as an rgb8 ``sensor_msgs/Image`` stamped ``stamp_ns``."""
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from latent_memory_ros.conversions import stamp_from_ns

    height = texture_rgb.shape[0]
    return Image(
        header=Header(stamp=stamp_from_ns(stamp_ns, Time), frame_id=frame_id),
        height=height,
        width=width,
        encoding="rgb8",
        step=width * 3,
        data=crop(texture_rgb, k, width).tobytes(),
    )


def odometry_msg(x: float, stamp_ns: int):
    """``nav_msgs/Odometry`` of base_link at ``x`` metres along odom's x axis."""
    from builtin_interfaces.msg import Time
    from nav_msgs.msg import Odometry
    from std_msgs.msg import Header

    from latent_memory_ros.conversions import stamp_from_ns

    stamp = stamp_from_ns(stamp_ns, Time)
    odom = Odometry(header=Header(stamp=stamp, frame_id="odom"), child_frame_id="base_link")
    odom.pose.pose.position.x = x
    odom.pose.pose.orientation.w = 1.0
    return odom


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 99)) -> list[float]:
    if len(values) == 0:
        return [float("nan")] * len(qs)
    return [round(float(v), 3) for v in np.percentile(values, qs)]


def write_json(path: Path | None, result: dict) -> None:
    """The result as the last line of stdout (what the tests read) and in ``path``."""
    text = json.dumps(result)
    print(text, flush=True)
    if path is not None:
        path.write_text(json.dumps(result, indent=1))
