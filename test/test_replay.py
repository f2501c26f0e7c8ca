"""BagPlayer over real DDS: a listener in another process gets every message, stamps intact.

The ROS domain and loopback-only discovery come from conftest.py (set at import, before
``rclpy.init``); the listener process inherits them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rclpy
from helpers import REPO, write_test_bag
from rclpy.node import Node

from latent_memory_ros.replay import BagPlayer

ACK_TOPIC = "/fake_node/pose"
TOPICS = {
    "/camera/image_raw": "sensor_msgs.msg:Image",
    "/camera/camera_info": "sensor_msgs.msg:CameraInfo",
    "/odom": "nav_msgs.msg:Odometry",
    "/ground_truth/pose": "geometry_msgs.msg:PoseStamped",
}

# Records the header stamp of every message per topic and, when asked, acknowledges each
# image as the node does: a PoseStamped on ACK_TOPIC stamped with the image's stamp.
LISTENER = r"""
import importlib, json, sys, time
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.qos import QoSProfile, QoSReliabilityPolicy

from latent_memory_ros.conversions import stamp_to_ns

topics, expected, ack_topic, out = json.loads(sys.argv[1])
rclpy.init()
node = rclpy.create_node("replay_listener")
received = {t: [] for t in topics}
odom_before_image = []
ack = node.create_publisher(PoseStamped, ack_topic, 10) if ack_topic else None

def make_callback(topic):
    def callback(msg):
        stamp = stamp_to_ns(msg.header.stamp)
        received[topic].append(stamp)
        if topic == "/camera/image_raw":
            if "/odom" in received:
                odom_before_image.append(len(received["/odom"]))
            if ack is not None:
                ack.publish(PoseStamped(header=msg.header))
    return callback

qos = QoSProfile(depth=100, reliability=QoSReliabilityPolicy.RELIABLE)
subscriptions = [
    node.create_subscription(
        getattr(importlib.import_module(kind.split(":")[0]), kind.split(":")[1]),
        topic, make_callback(topic), qos)
    for topic, kind in topics.items()
]
# Ready once this side has matched the player too: discovery is not symmetric in time.
deadline = time.monotonic() + 20
while any(s.get_publisher_count() == 0 for s in subscriptions) and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.05)
print("ready", flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline and any(
        len(received[t]) < n for t, n in expected.items()):
    rclpy.spin_once(node, timeout_sec=0.1)
# The last acknowledgement is still on its way: destroying the publisher now loses it.
end = time.monotonic() + (1.0 if ack else 0.0)
while time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.05)
with open(out, "w") as f:
    json.dump({"received": received, "odom_before_image": odom_before_image}, f)
node.destroy_node()
rclpy.shutdown()
"""


@pytest.fixture(scope="module")
def ros_node() -> Iterator[Node]:
    rclpy.init()
    node = rclpy.create_node("test_replay_player")
    yield node
    node.destroy_node()
    rclpy.shutdown()


def start_listener(tmp_path: Path, expected: dict[str, int], ack: bool) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    args = [TOPICS, expected, ACK_TOPIC if ack else "", str(tmp_path / "received.json")]
    listener = subprocess.Popen(
        [sys.executable, "-c", LISTENER, json.dumps(args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert listener.stdout is not None
    line = listener.stdout.readline()
    assert line.strip() == "ready", f"listener failed: {line}{listener.stdout.read()}"
    return listener


def finish_listener(listener: subprocess.Popen, tmp_path: Path) -> dict:
    try:
        listener.wait(90)
    finally:
        if listener.poll() is None:
            listener.kill()
    return json.loads((tmp_path / "received.json").read_text())


def assert_all_received(received: dict, stamps_ns: np.ndarray, t0_ns: int) -> None:
    for topic in ("/camera/image_raw", "/odom", "/ground_truth/pose"):
        assert received[topic] == [int(s) for s in stamps_ns], topic
    assert received["/camera/camera_info"] == [t0_ns]


def test_paced_playback_delivers_every_message_with_its_stamp(
    tmp_path: Path, ros_node: Node
) -> None:
    frames = 15
    truth = write_test_bag(tmp_path / "bag", frames=frames, size=(64, 48))
    expected = {t: frames for t in TOPICS} | {"/camera/camera_info": 1}
    with BagPlayer(ros_node, tmp_path / "bag", topics=[*TOPICS, "/tf_static"]) as player:
        listener = start_listener(tmp_path, expected, ack=False)
        try:
            assert player.wait_for_subscribers(list(TOPICS), timeout=20)
            start = time.monotonic()
            stats = player.play(rate=2.0)
            elapsed = time.monotonic() - start
        finally:
            received = finish_listener(listener, tmp_path)

    assert_all_received(received["received"], truth.stamps_ns, int(truth.stamps_ns[0]))
    assert stats.published["/camera/image_raw"] == frames
    # 14 frame intervals of 1/30 s at twice the recorded speed.
    assert (frames - 1) / 30 / 2 - 0.02 < elapsed < (frames - 1) / 30 / 2 + 1.0
    try:
        import tf2_msgs.msg  # noqa: F401
    except ImportError:
        assert "/tf_static" in stats.skipped_topics
    else:
        assert stats.published["/tf_static"] == 1


def test_lockstep_waits_for_each_pose(tmp_path: Path, ros_node: Node) -> None:
    frames = 12
    truth = write_test_bag(tmp_path / "bag", frames=frames, size=(64, 48), storage="sqlite3")
    expected = {t: frames for t in TOPICS} | {"/camera/camera_info": 1}
    with BagPlayer(ros_node, tmp_path / "bag", topics=list(TOPICS)) as player:
        listener = start_listener(tmp_path, expected, ack=True)
        try:
            assert player.wait_for_subscribers(list(TOPICS), timeout=20)
            stats = player.play_lockstep("/camera/image_raw", ACK_TOPIC, timeout=10.0)
        finally:
            result = finish_listener(listener, tmp_path)

    assert_all_received(result["received"], truth.stamps_ns, int(truth.stamps_ns[0]))
    assert (stats.images, stats.acked, stats.timed_out) == (frames, frames, 0)
    assert len(stats.round_trip_ms) == frames and min(stats.round_trip_ms) > 0
    # The odometry for an image goes out before it, so by image k the listener has
    # (barring reordering across topics) k odometry messages; never more, since the
    # next one waits for the acknowledgement.
    assert all(n <= i + 1 for i, n in enumerate(result["odom_before_image"]))


def test_replay_cli_plays_full_size_images_lockstep(tmp_path: Path) -> None:
    # 640x480 images exceed Fast DDS's default shared-memory segment; the CLI sets a
    # larger one for its own process before rclpy.init (see use_large_message_transport).
    frames = 10
    truth = write_test_bag(tmp_path / "bag", frames=frames, size=(640, 480))
    expected = {t: frames for t in TOPICS} | {"/camera/camera_info": 1}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    args = ["--bag", str(tmp_path / "bag"), "--topics", *TOPICS, "--lockstep"]
    args += ["--ack-topic", ACK_TOPIC, "--timeout", "10", "--wait-for-subscribers", "30"]
    player = subprocess.Popen(
        [sys.executable, "-m", "latent_memory_ros.replay", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        listener = start_listener(tmp_path, expected, ack=True)
        result = finish_listener(listener, tmp_path)
        output, _ = player.communicate(timeout=60)
    finally:
        if player.poll() is None:
            player.kill()

    assert player.returncode == 0, output
    assert f"images acked {frames}/{frames}, timed out 0" in output
    assert_all_received(result["received"], truth.stamps_ns, int(truth.stamps_ns[0]))


def test_lockstep_sends_each_odometry_before_its_image(
    tmp_path: Path, ros_node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bag holds each image before the odometry of the same instant, as recorders
    # write them; lock-step must still send that odometry first. Nobody acknowledges
    # here, so every image also times out.
    truth = write_test_bag(tmp_path / "bag", frames=3, size=(16, 12))
    sent: list[tuple[str, int]] = []
    with BagPlayer(ros_node, tmp_path / "bag", topics=["/camera/image_raw", "/odom"]) as player:
        publish = player._publish
        monkeypatch.setattr(
            player, "_publish", lambda m: (sent.append((m.topic, m.stamp_ns)), publish(m))
        )
        start = time.monotonic()
        stats = player.play_lockstep("/camera/image_raw", "/nobody/pose", timeout=0.2)
        elapsed = time.monotonic() - start

    stamps = [int(s) for s in truth.stamps_ns]
    assert sent == [(topic, s) for s in stamps for topic in ("/odom", "/camera/image_raw")]
    assert (stats.images, stats.acked, stats.timed_out) == (3, 0, 3)
    assert 0.6 <= elapsed < 2.0
    assert stats.published == {"/odom": 3, "/camera/image_raw": 3}


def test_unknown_topic_lists_the_bag_topics(tmp_path: Path, ros_node: Node) -> None:
    write_test_bag(tmp_path / "bag", frames=2)
    with pytest.raises(LookupError, match="/camera/image_raw"):
        BagPlayer(ros_node, tmp_path / "bag", topics=["/camera/depth"])
