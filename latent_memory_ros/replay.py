"""A minimal rosbag2 player over DDS, for machines without ``ros2 bag play``.

The bag is read with ``rosbags``; each raw CDR message becomes the installed rclpy
message class through ``rclpy.serialization.deserialize_message`` (which also checks that
the recorded type matches the installed definition) and is published on its topic.

Two modes:

- paced: messages at their recorded times, scaled by ``rate``;
- lock-step: one image at a time; before it, every other message stamped up to the
  image's stamp (even one recorded just after the image); after it, wait until a message
  stamped with that image's stamp arrives on an acknowledgement topic (the node's
  ``~/pose``) or a timeout. No frame is dropped however slow the node is, and each round
  trip is measured.

The player spins its node while it waits, so callbacks the caller added to the same node
(e.g. a subscription collecting poses) run during playback; nothing else may spin it then.
Full-size images need :func:`use_large_message_transport` before ``rclpy.init()``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geometry_msgs.msg import PoseStamped
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSHistoryPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
)
from rclpy.serialization import deserialize_message
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from latent_memory_ros.atomic import atomic_path
from latent_memory_ros.conversions import stamp_to_ns

DEFAULT_ACK_TOPIC = "/latent_memory_node/pose"

# Reliable publishers reach both reliable and best-effort subscribers.
DEFAULT_QOS = QoSProfile(
    history=QoSHistoryPolicy.KEEP_LAST, depth=10, reliability=QoSReliabilityPolicy.RELIABLE
)
# Late subscribers (a node started after playback began) must still get the mount.
TF_STATIC_QOS = QoSProfile(
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=100,
    reliability=QoSReliabilityPolicy.RELIABLE,
    durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
)


# Fast DDS's default shared-memory segment is 512 KB: a 640x480 rgb8 image (0.9 MB)
# falls back to fragmented UDP, where on loopback about half of the best-effort frames
# are lost and reliable repair stalls the other topics. The publisher's segment is the
# one that counts, so the player enlarges its own.
FASTDDS_LARGE_MESSAGES = """<?xml version="1.0" encoding="UTF-8" ?>
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>shm_large_messages</transport_id>
        <type>SHM</type>
        <segment_size>33554432</segment_size>
        <maxMessageSize>8388608</maxMessageSize>
      </transport_descriptor>
      <transport_descriptor>
        <transport_id>udp</transport_id>
        <type>UDPv4</type>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="latent_memory_large_messages" is_default_profile="true">
      <rtps>
        <userTransports>
          <transport_id>shm_large_messages</transport_id>
          <transport_id>udp</transport_id>
        </userTransports>
        <useBuiltinTransports>false</useBuiltinTransports>
      </rtps>
    </participant>
  </profiles>
</dds>
"""


def use_large_message_transport() -> Path | None:
    """Let this process publish messages up to 8 MB through Fast DDS shared memory.

    Call before the first ``rclpy.init()`` of the process (Fast DDS reads its profile
    once). Does nothing, and returns None, when another RMW is selected or a Fast DDS
    profile file is already set; otherwise returns the profile file it set.
    """
    rmw = os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if not rmw.startswith("rmw_fastrtps") or any(
        os.environ.get(name)
        for name in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
    ):
        return None
    path = Path(tempfile.gettempdir()) / f"latent_memory_fastdds_{os.getuid()}.xml"
    if not path.is_file() or path.read_text() != FASTDDS_LARGE_MESSAGES:
        with atomic_path(path) as tmp:
            tmp.write_text(FASTDDS_LARGE_MESSAGES)
    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(path)
    return path


def message_class(msgtype: str) -> type:
    """The rclpy class of ``pkg/msg/Name``."""
    try:
        from rosidl_runtime_py.utilities import get_message
    except ImportError:
        package, kind, name = msgtype.split("/")
        try:
            return getattr(importlib.import_module(f"{package}.{kind}"), name)
        except (ImportError, AttributeError) as err:
            raise LookupError(
                f"message type {msgtype} is not installed (e.g. pip install "
                f"ros-{package.replace('_', '-')})"
            ) from err
    return get_message(msgtype)


@dataclass
class PlaybackStats:
    """What a playback did."""

    published: dict[str, int] = field(default_factory=dict)  # per topic
    images: int = 0
    acked: int = 0
    timed_out: int = 0
    round_trip_ms: list[float] = field(default_factory=list)  # publish -> ack, per acked image
    skipped_topics: dict[str, str] = field(default_factory=dict)  # topic -> why
    wall_s: float = 0.0


@dataclass
class _Message:
    topic: str
    log_ns: int
    stamp_ns: int  # header stamp, or the log time for messages without a header
    msg: Any


class BagPlayer:
    """Publishes a bag's messages on their topics from ``node``.

    ``topics`` limits playback to those topics (default: all). ``qos`` overrides the QoS of
    single topics; otherwise topics are reliable, depth 10, and ``/tf_static`` is also
    transient-local.
    """

    def __init__(
        self,
        node: Node,
        bag_dir: str | Path,
        topics: Sequence[str] | None = None,
        qos: Mapping[str, QoSProfile] | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.node = node
        self.bag_dir = Path(bag_dir)
        if not self.bag_dir.exists():
            raise FileNotFoundError(f"bag {self.bag_dir} does not exist")
        self._typestore = get_typestore(Stores.LATEST)
        with self._reader() as reader:
            available = {c.topic: c.msgtype for c in reader.connections}
        missing = sorted(set(topics or ()) - set(available))
        if missing:
            listing = ", ".join(sorted(available))
            raise LookupError(
                f"bag {self.bag_dir} has no topic {', '.join(missing)}; its topics are: {listing}"
            )
        self.stats = PlaybackStats()
        self._classes: dict[str, type] = {}
        self._publishers: dict[str, Any] = {}
        for topic in topics or sorted(available):
            try:
                cls = message_class(available[topic])
            except LookupError as err:
                self.stats.skipped_topics[topic] = str(err)
                node.get_logger().warning(f"not playing {topic}: {err}")
                continue
            profile = (qos or {}).get(topic) or (
                TF_STATIC_QOS if topic == "/tf_static" else DEFAULT_QOS
            )
            self._classes[topic] = cls
            self._publishers[topic] = node.create_publisher(cls, topic, profile)
        self._own_executor = executor is None
        if executor is None:
            executor = SingleThreadedExecutor(context=node.context)
            executor.add_node(node)
        self._executor = executor
        self._awaiting: int | None = None
        self._acked_at: float | None = None

    @property
    def topics(self) -> list[str]:
        return list(self._publishers)

    def close(self) -> None:
        """Destroy the publishers (so no subscriber matches a finished player)."""
        for publisher in self._publishers.values():
            self.node.destroy_publisher(publisher)
        self._publishers.clear()
        if self._own_executor:
            self._executor.remove_node(self.node)
            self._executor.shutdown()

    def __enter__(self) -> BagPlayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_for_subscribers(
        self, topics: Sequence[str], timeout: float, settle: float = 0.5
    ) -> bool:
        """Spin until every topic in ``topics`` has a subscriber, then ``settle`` seconds
        more; False on timeout.

        The settling time is there because discovery is not symmetric: a subscriber this
        side already counts may not have matched this publisher yet, and would miss the
        first messages.
        """
        deadline = time.monotonic() + timeout
        while any(self._publishers[t].get_subscription_count() == 0 for t in topics):
            if time.monotonic() > deadline:
                return False
            self._executor.spin_once(timeout_sec=0.05)
        self._spin_until(time.monotonic() + settle)
        return True

    def play(self, rate: float = 1.0) -> PlaybackStats:
        """Publish every message at its recorded time divided by ``rate`` (0: no pauses)."""
        start = time.monotonic()
        first_ns: int | None = None
        for message in self._messages():
            first_ns = message.log_ns if first_ns is None else first_ns
            if rate > 0:
                self._spin_until(start + (message.log_ns - first_ns) * 1e-9 / rate)
            self._publish(message)
        self.stats.wall_s += time.monotonic() - start
        return self.stats

    def play_lockstep(
        self,
        image_topic: str,
        ack_topic: str = DEFAULT_ACK_TOPIC,
        timeout: float = 5.0,
        first_timeout: float | None = None,
        lookahead: float = 0.1,
    ) -> PlaybackStats:
        """Publish one image at a time and wait for its acknowledgement on ``ack_topic``.

        The acknowledgement is a PoseStamped on ``ack_topic`` stamped with the image's
        stamp, as the node publishes ``~/pose``. ``first_timeout`` (default
        ``timeout``) covers the first image, which may meet a model still warming up.

        Before each image goes every other message stamped up to it, including those
        recorded after it: a recorder often writes an image before the odometry of the
        same instant. The bag is read ``lookahead`` seconds (of recording time) past the
        image's stamp to find them, and never more than two images ahead.
        """
        if image_topic not in self._publishers:
            raise LookupError(f"image topic {image_topic} is not among the played topics")
        ack = self.node.create_subscription(PoseStamped, ack_topic, self._on_ack, 10)
        self._wait_for_ack_publisher(ack, first_timeout or timeout)
        start = time.monotonic()
        stream = self._messages()
        queue: deque[_Message] = deque()  # read, not yet published, in bag order
        try:
            while (image := self._read_ahead(stream, queue, image_topic, lookahead)) is not None:
                due = [m for m in queue if m.topic != image_topic and m.stamp_ns <= image.stamp_ns]
                for m in due:
                    self._publish(m)
                    queue.remove(m)
                queue.remove(image)
                wait = timeout if self.stats.images or first_timeout is None else first_timeout
                self._publish_and_wait(image, wait)
            for m in queue:
                self._publish(m)
        finally:
            stream.close()
            self.node.destroy_subscription(ack)
        self.stats.wall_s += time.monotonic() - start
        return self.stats

    def _wait_for_ack_publisher(self, ack: Any, timeout: float, settle: float = 0.5) -> None:
        """Give the acknowledging publisher time to match the new subscription: an
        acknowledgement sent before discovery completes is lost and the image times out.
        Goes on after ``timeout`` regardless (the timeouts are then counted)."""
        deadline = time.monotonic() + timeout
        while ack.get_publisher_count() == 0 and time.monotonic() < deadline:
            self._executor.spin_once(timeout_sec=0.05)
        self._spin_until(time.monotonic() + settle)

    @staticmethod
    def _read_ahead(
        stream: Iterator[_Message], queue: deque[_Message], image_topic: str, lookahead: float
    ) -> _Message | None:
        """Read into ``queue`` until it holds the next image and what was recorded up to
        ``lookahead`` s after its stamp (at most two images more); return that image."""
        image = next((m for m in queue if m.topic == image_topic), None)
        while image is None or (
            queue[-1].log_ns <= image.stamp_ns + lookahead * 1e9
            and sum(m.topic == image_topic for m in queue) <= 2
        ):
            message = next(stream, None)
            if message is None:
                break
            queue.append(message)
            if image is None and message.topic == image_topic:
                image = message
        return image

    def _publish_and_wait(self, image: _Message, timeout: float) -> None:
        self._awaiting, self._acked_at = image.stamp_ns, None
        sent = time.monotonic()
        self._publish(image)
        self.stats.images += 1
        deadline = sent + timeout
        while self._acked_at is None and time.monotonic() < deadline:
            self._executor.spin_once(timeout_sec=min(0.05, max(deadline - time.monotonic(), 0)))
        if self._acked_at is None:
            self.stats.timed_out += 1
        else:
            self.stats.acked += 1
            self.stats.round_trip_ms.append((self._acked_at - sent) * 1e3)
        self._awaiting = None

    def _on_ack(self, msg: PoseStamped) -> None:
        if self._awaiting is None or self._acked_at is not None:
            return
        if stamp_to_ns(msg.header.stamp) == self._awaiting:
            self._acked_at = time.monotonic()

    def _spin_until(self, t: float) -> None:
        while (remaining := t - time.monotonic()) > 0:
            self._executor.spin_once(timeout_sec=remaining)

    def _publish(self, message: _Message) -> None:
        self._publishers[message.topic].publish(message.msg)
        self.stats.published[message.topic] = self.stats.published.get(message.topic, 0) + 1

    def _reader(self) -> AnyReader:
        return AnyReader([self.bag_dir], default_typestore=self._typestore)

    def _messages(self) -> Generator[_Message, None, None]:
        with self._reader() as reader:
            connections = [c for c in reader.connections if c.topic in self._publishers]
            for conn, log_ns, raw in reader.messages(connections):
                msg = deserialize_message(bytes(raw), self._classes[conn.topic])
                header = getattr(msg, "header", None)
                stamp = stamp_to_ns(header.stamp) if header is not None else log_ns
                yield _Message(conn.topic, log_ns, stamp, msg)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latent_memory_replay",
        description="Play a rosbag2 (mcap or sqlite3) over DDS without ros2 bag: paced by "
        "its stamps, or lock-step with a node (one image, then wait for its pose).",
    )
    parser.add_argument("--bag", type=Path, required=True, help="rosbag2 directory")
    parser.add_argument("--topics", nargs="+", help="topics to play (default: all)")
    parser.add_argument(
        "--rate", type=float, default=1.0, help="paced mode: speed factor (0: as fast as possible)"
    )
    parser.add_argument(
        "--lockstep", action="store_true", help="wait for each image's pose on --ack-topic"
    )
    parser.add_argument("--image-topic", default="/camera/image_raw", help="lock-step image topic")
    parser.add_argument(
        "--ack-topic",
        default=DEFAULT_ACK_TOPIC,
        help="lock-step: PoseStamped stamped like the image",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="lock-step: seconds per image")
    parser.add_argument(
        "--wait-for-subscribers",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait for a subscriber on the image topic (lock-step) before starting",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``latent_memory_replay``; returns the exit code."""
    import rclpy

    args = build_parser().parse_args(argv)
    use_large_message_transport()
    rclpy.init()
    node = Node("latent_memory_replay")
    try:
        with BagPlayer(node, args.bag, args.topics) as player:
            if args.lockstep:
                if not player.wait_for_subscribers([args.image_topic], args.wait_for_subscribers):
                    print(f"no subscriber on {args.image_topic}; playing anyway", file=sys.stderr)
                stats = player.play_lockstep(args.image_topic, args.ack_topic, args.timeout)
            else:
                stats = player.play(args.rate)
    except (LookupError, FileNotFoundError) as err:
        print(f"latent_memory_replay: error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        return 130
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    total = sum(stats.published.values())
    print(f"published {total} messages in {stats.wall_s:.1f} s: {stats.published}")
    if args.lockstep:
        print(f"images acked {stats.acked}/{stats.images}, timed out {stats.timed_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
