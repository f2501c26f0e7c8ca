"""Read a recorded run from a ROS 2 bag (mcap or sqlite3) without a ROS installation.

``read_run`` makes one pass over the bag for everything small (stamps, image sizes, poses,
odometry, transforms, intrinsics) and keeps the images on disk: ``BagRun.images()`` opens
the bag again and decodes one frame at a time, so a long 640x480 run never sits in memory.
Frames are decoded by :mod:`latent_memory_ros.images`, the node's own decoder (Image in
every encoding the node takes, CompressedImage as JPEG or PNG).

Ground truth and odometry come from a pose topic (PoseStamped, PoseWithCovarianceStamped,
Odometry, TransformStamped) or from a chain of TF transforms between two named frames
(``gt_frames=("world", "robot")`` for motion capture, ``("map", "base_link")`` for a SLAM
run, ``odom_frames=("odom", "base_link")``). What cannot be read (a truncated bag, a
topic that is not there, stamps that repeat or go back, a frame size that changes) raises
an error naming the bag and the topic.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.interfaces import Connection
from rosbags.typesys import Stores, get_typestore

from latent_memory_ros import geometry
from latent_memory_ros.conversions import pose_to_array, stamp_to_s, transform_to_array
from latent_memory_ros.images import (
    FrameError,
    PinholeCamera,
    compressed_size,
    decode_frame,
    validate_image_msg,
)
from latent_memory_ros.images import camera_info_topic as camera_info_topic_beside
from latent_memory_ros.tracks import DatasetError, Track, check_increasing

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
POSE_TYPES = (
    "geometry_msgs/msg/PoseStamped",
    "geometry_msgs/msg/PoseWithCovarianceStamped",
    "geometry_msgs/msg/TransformStamped",
    "nav_msgs/msg/Odometry",
)
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
TF_TYPE = "tf2_msgs/msg/TFMessage"

# Bags recorded by older distributions may lack embedded definitions for common
# messages; the newest store knows all of them.
_TYPESTORE = get_typestore(Stores.LATEST)


class BagTopicError(LookupError):
    """A topic is missing from a bag or has a type this reader cannot use."""

    def __str__(self) -> str:
        return str(self.args[0])


class BagReadError(DatasetError):
    """A bag whose storage cannot be read (truncated, corrupt) or whose messages
    disagree with each other; the message names the bag and the topic."""


class Distortion(NamedTuple):
    """A camera_info's lens model: ``model`` (its ``distortion_model``) and ``d``."""

    model: str
    d: np.ndarray


@dataclass
class BagRun:
    """One run read from a bag; ``images()`` streams the frames lazily."""

    path: Path
    image_topic: str
    image_stamps: np.ndarray  # (N,) header stamps in seconds
    image_frame_id: str
    gt: Track | None
    odom: Track | None  # base poses from the odometry
    odom_child_frame: str  # the odometry's base frame, e.g. base_link
    base_to_camera: np.ndarray | None  # (7,) image frame in odom_child_frame
    intrinsics: PinholeCamera | None
    distortion: Distortion | None = None  # from camera_info, None without one
    image_size: tuple[int, int] | None = None  # (width, height), the same for every frame
    gt_child_frame: str = ""  # the frame the ground truth is the pose of, "" if unnamed
    static: dict[str, tuple[str, np.ndarray]] | None = None  # /tf_static: child -> parent, pose

    def __len__(self) -> int:
        return len(self.image_stamps)

    def images(self, max_frames: int | None = None) -> Iterator[tuple[float, np.ndarray]]:
        """Yield ``(stamp_s, rgb uint8 HxWx3)`` in bag order, decoding one frame at a time."""
        limit = len(self) if max_frames is None else min(max_frames, len(self))
        if limit == 0:
            return
        with _open(self.path) as reader:
            connections = _connections(reader, self.path, self.image_topic, IMAGE_TYPES)
            messages = _messages(reader, self.path, connections)
            for count, (conn, _, raw) in enumerate(messages, start=1):
                msg = reader.deserialize(raw, conn.msgtype)
                try:
                    rgb = decode_frame(msg)
                except FrameError as err:
                    raise BagReadError(
                        f"bag {self.path}, topic {self.image_topic}, message {count - 1}: {err}"
                    ) from err
                yield stamp_to_s(msg.header.stamp), rgb
                if count >= limit:
                    return

    def odom_at(self, stamps: np.ndarray, max_dt: float = 0.02) -> np.ndarray:
        """Nearest-in-time odometry base pose for each stamp: ``(len(stamps), 7)``.

        Rows with no odometry message within ``max_dt`` seconds are NaN.
        """
        if self.odom is None:
            return np.full((len(stamps), 7), np.nan)
        return self.odom.at(stamps, max_dt)


def read_run(
    bag_dir: str | Path,
    image_topic: str,
    gt_topic: str | None = None,
    odom_topic: str | None = None,
    camera_info_topic: str | None = None,
    tf_static_topic: str = "/tf_static",
    *,
    gt_frames: tuple[str, str] | None = None,
    odom_frames: tuple[str, str] | None = None,
    tf_topic: str = "/tf",
) -> BagRun:
    """Read everything but the pixels of one run from a ROS 2 bag.

    ``camera_info_topic`` defaults to the ``camera_info`` beside the image topic when the
    bag has one. ``base_to_camera`` chains the static transforms from the image frame up to
    the odometry's child frame (or to the root of the static tree without odometry); it is
    None when the bag has no static transform for the image frame.

    Instead of ``gt_topic`` / ``odom_topic``, ``gt_frames`` / ``odom_frames`` name a
    ``(parent, child)`` pair of frames joined by transforms on ``tf_topic`` (and
    ``tf_static_topic``): the track is the chain's pose at the stamps of its busiest
    transform, the others interpolated there.

    Raises :class:`BagTopicError` for a topic that is not there (listing those that are),
    :class:`BagReadError` for a bag that cannot be read, image stamps that repeat or go
    back, a frame that cannot be decoded or changes size, and :class:`DatasetError` for
    pose stamps that repeat or go back or a TF chain that does not join the frames.
    """
    path = Path(bag_dir)
    if gt_topic and gt_frames:
        raise ValueError("give the ground truth as gt_topic or as gt_frames, not both")
    if odom_topic and odom_frames:
        raise ValueError("give the odometry as odom_topic or as odom_frames, not both")
    with _open(path) as reader:
        image_conns = _connections(reader, path, image_topic, IMAGE_TYPES)
        gt_conns = _connections(reader, path, gt_topic, POSE_TYPES) if gt_topic else []
        odom_conns = _connections(reader, path, odom_topic, POSE_TYPES) if odom_topic else []
        tf_conns = (
            _connections(reader, path, tf_topic, (TF_TYPE,)) if gt_frames or odom_frames else []
        )
        if camera_info_topic is None:
            # image_transport: /camera/image_raw/compressed has /camera/camera_info too.
            sibling = camera_info_topic_beside(image_topic.removesuffix("/compressed"))
            if any(c.topic == sibling for c in reader.connections):
                camera_info_topic = sibling
        info_conns = (
            _connections(reader, path, camera_info_topic, (CAMERA_INFO_TYPE,))
            if camera_info_topic
            else []
        )
        static_conns = [
            c for c in reader.connections if c.topic == tf_static_topic and c.msgtype == TF_TYPE
        ]

        image_stamps: list[float] = []
        image_frame_id = ""
        image_size: tuple[int, int] | None = None
        poses: dict[str, list[tuple[float, np.ndarray]]] = {"gt": [], "odom": []}
        child_frames = {"gt": "", "odom": ""}
        intrinsics: PinholeCamera | None = None
        distortion: Distortion | None = None
        static: dict[str, tuple[str, np.ndarray]] = {}
        dynamic: dict[tuple[str, str], list[tuple[float, np.ndarray]]] = {}
        role = {c.id: "image" for c in image_conns}
        role |= {c.id: "gt" for c in gt_conns}
        role |= {c.id: "odom" for c in odom_conns}
        role |= {c.id: "info" for c in info_conns}
        role |= {c.id: "static" for c in static_conns}
        role |= {c.id: "tf" for c in tf_conns}
        wanted = image_conns + gt_conns + odom_conns + info_conns + static_conns + tf_conns
        for conn, _, raw in _messages(reader, path, _unique(wanted)):
            msg = reader.deserialize(raw, conn.msgtype)
            kind = role[conn.id]
            if kind == "image":
                where = f"bag {path}, topic {image_topic}, message {len(image_stamps)}"
                size = _frame_size(msg, conn.msgtype, where)
                if image_size is not None and size != image_size:
                    raise BagReadError(
                        f"{where}: the frame is {size[0]}x{size[1]}, the ones before "
                        f"{image_size[0]}x{image_size[1]}; the image size must not change "
                        "within a run"
                    )
                image_size = size
                image_stamps.append(stamp_to_s(msg.header.stamp))
                image_frame_id = image_frame_id or msg.header.frame_id
            elif kind in ("gt", "odom"):
                poses[kind].append((stamp_to_s(msg.header.stamp), _pose_of(msg, conn.msgtype)))
                child_frames[kind] = child_frames[kind] or getattr(msg, "child_frame_id", "")
            elif kind == "info" and intrinsics is None:
                intrinsics = PinholeCamera(
                    int(msg.width), int(msg.height), *(float(msg.k[i]) for i in (0, 4, 2, 5))
                )
                distortion = Distortion(
                    str(msg.distortion_model), np.asarray(msg.d, dtype=np.float64)
                )
            elif kind == "static":
                for tf in msg.transforms:
                    static[tf.child_frame_id] = (
                        tf.header.frame_id,
                        transform_to_array(tf.transform),
                    )
            elif kind == "tf":
                for tf in msg.transforms:
                    edge = (tf.header.frame_id, tf.child_frame_id)
                    dynamic.setdefault(edge, []).append(
                        (stamp_to_s(tf.header.stamp), transform_to_array(tf.transform))
                    )

    check_increasing(
        np.asarray(image_stamps), lambda i: f"bag {path}, topic {image_topic}, message {i}"
    )
    tracks = {
        kind: _track(poses[kind], f"bag {path}, topic {topic}")
        for kind, topic in (("gt", gt_topic), ("odom", odom_topic))
        if topic
    }
    for kind, frames in (("gt", gt_frames), ("odom", odom_frames)):
        if frames:
            tracks[kind] = _tf_chain_track(path, tf_topic, dynamic, static, *frames)
            child_frames[kind] = frames[1]
    odom_child_frame = child_frames["odom"]
    return BagRun(
        path=path,
        image_topic=image_topic,
        image_stamps=np.asarray(image_stamps, dtype=np.float64),
        image_frame_id=image_frame_id,
        gt=tracks.get("gt"),
        odom=tracks.get("odom"),
        odom_child_frame=odom_child_frame,
        base_to_camera=_chain(static, image_frame_id, odom_child_frame),
        intrinsics=intrinsics,
        distortion=distortion,
        image_size=image_size,
        gt_child_frame=child_frames["gt"],
        static=static,
    )


def bag_topics(bag_dir: str | Path) -> dict[str, str]:
    """``{topic: message type}`` of a bag."""
    with _open(Path(bag_dir)) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def static_chain(
    static: dict[str, tuple[str, np.ndarray]], parent: str, child: str
) -> np.ndarray | None:
    """``child``'s pose in ``parent`` through the static transforms (child -> (parent,
    pose)), None when they do not lead from ``child`` up to ``parent``."""
    pose = geometry.IDENTITY.copy()
    frame, seen = child, set()
    while frame != parent:
        if frame not in static or frame in seen:  # not joined, or a malformed cycle
            return None
        seen.add(frame)
        frame, link = static[frame]
        pose = geometry.compose(link, pose)
    return pose


@contextmanager
def _open(path: Path) -> Iterator[AnyReader]:
    """An open reader of the bag; a bag that cannot be opened raises BagReadError."""
    if not path.exists():
        raise FileNotFoundError(f"bag {path} does not exist")
    try:
        reader = AnyReader([path], default_typestore=_TYPESTORE)
        reader.open()
    except AnyReaderError as err:
        raise BagReadError(f"bag {path} cannot be read (truncated or corrupt?): {err}") from err
    try:
        yield reader
    finally:
        reader.close()


def _messages(
    reader: AnyReader, path: Path, connections: Sequence[Connection]
) -> Iterator[tuple[Connection, int, bytes]]:
    """``reader.messages``, with a storage error (a bag cut off mid-recording) named."""
    try:
        yield from reader.messages(connections)
    except (AnyReaderError, EOFError, OSError, ValueError) as err:
        topics = ", ".join(sorted({c.topic for c in connections}))
        raise BagReadError(
            f"bag {path} ends before its last message (reading {topics}; truncated or "
            f"corrupt?): {err}"
        ) from err


def _connections(
    reader: AnyReader, path: Path, topic: str, types: Sequence[str]
) -> list[Connection]:
    found = [c for c in reader.connections if c.topic == topic]
    if not found:
        listing = ", ".join(sorted(f"{c.topic} ({c.msgtype})" for c in _unique(reader.connections)))
        raise BagTopicError(
            f"bag {path} has no topic {topic!r}; its topics are: {listing or 'none'}"
        )
    usable = [c for c in found if c.msgtype in types]
    if not usable:
        raise BagTopicError(
            f"topic {topic!r} in bag {path} has type {found[0].msgtype}; "
            f"expected one of: {', '.join(types)}"
        )
    return usable


def _unique(connections: Sequence[Connection]) -> list[Connection]:
    seen: dict[int, Connection] = {}
    for c in connections:
        seen.setdefault(c.id, c)
    return list(seen.values())


def _pose_of(msg: Any, msgtype: str) -> np.ndarray:
    if msgtype == "geometry_msgs/msg/TransformStamped":
        return transform_to_array(msg.transform)
    pose = msg.pose
    if msgtype != "geometry_msgs/msg/PoseStamped":  # Odometry, PoseWithCovarianceStamped
        pose = pose.pose
    return pose_to_array(pose)


def _track(samples: list[tuple[float, np.ndarray]], where: str) -> Track:
    """The samples in the order they were recorded; their stamps must increase."""
    if not samples:
        return Track(np.zeros(0), np.zeros((0, 7)))
    stamps = np.array([s[0] for s in samples])
    check_increasing(stamps, lambda i: f"{where}, message {i}")
    poses = np.stack([s[1] for s in samples])
    poses[:, 3:] = geometry.quat_normalize(poses[:, 3:])
    return Track(stamps, poses)


def _tf_chain_track(
    path: Path,
    tf_topic: str,
    dynamic: dict[tuple[str, str], list[tuple[float, np.ndarray]]],
    static: dict[str, tuple[str, np.ndarray]],
    parent: str,
    child: str,
) -> Track:
    """``child`` in ``parent`` over time, composed along the TF tree (``tf_topic`` and
    /tf_static), at the stamps of the chain's busiest transform."""
    up: dict[str, tuple[str, Track | np.ndarray]] = {
        c: (p, pose) for c, (p, pose) in static.items()
    }
    for (p, c), samples in dynamic.items():
        up[c] = (p, _track(samples, f"bag {path}, topic {tf_topic}, transform {p} -> {c}"))
    chain: list[Track | np.ndarray] = []
    frame = child
    while frame != parent:
        if frame not in up or len(chain) > len(up):
            frames = ", ".join(sorted({f"{p} -> {c}" for c, (p, _) in up.items()}))
            raise DatasetError(
                f"bag {path}: no chain of transforms from {parent!r} to {child!r} on "
                f"{tf_topic} and /tf_static; the transforms there are: {frames or 'none'}"
            )
        frame, link = up[frame]
        chain.append(link)
    moving = [link for link in chain if isinstance(link, Track)]
    if not moving:
        raise DatasetError(
            f"bag {path}: the transforms from {parent!r} to {child!r} are all static "
            f"(/tf_static); a pose track needs one on {tf_topic}"
        )
    stamps = max(moving, key=lambda t: len(t.stamps)).stamps
    pose = np.broadcast_to(geometry.IDENTITY, (len(stamps), 7))
    for link in chain:  # from child up: pose = link * pose
        at = link.interpolate(stamps, np.inf) if isinstance(link, Track) else link
        pose = geometry.compose(np.broadcast_to(at, (len(stamps), 7)), pose)
    known = np.all(np.isfinite(pose), axis=1)
    return Track(stamps[known], np.ascontiguousarray(pose[known]))


def _chain(
    static: dict[str, tuple[str, np.ndarray]], child: str, base_frame: str
) -> np.ndarray | None:
    """Compose static transforms from ``child`` up to ``base_frame`` (or the tree root)."""
    if child not in static:
        return None
    pose = geometry.IDENTITY.copy()
    frame = child
    while frame in static and frame != base_frame:
        parent, parent_to_frame = static[frame]
        pose = geometry.compose(parent_to_frame, pose)
        frame = parent
        if frame == child:  # a cycle in a malformed /tf_static
            return None
    return pose


def _frame_size(msg: Any, msgtype: str, where: str) -> tuple[int, int]:
    """(width, height) of an image message, from its header fields (Image) or its PNG /
    JPEG header (CompressedImage), validated as the node validates a frame."""
    try:
        if msgtype == "sensor_msgs/msg/Image":
            validate_image_msg(msg)
            return int(msg.width), int(msg.height)
        return compressed_size(msg)
    except FrameError as err:
        raise BagReadError(f"{where}: {err}") from err
