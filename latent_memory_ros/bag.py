"""Read a recorded run from a ROS 2 bag (mcap or sqlite3) without a ROS installation.

``read_run`` makes one pass over the bag for everything small (stamps, poses, odometry,
static transforms, intrinsics) and keeps the images on disk: ``BagRun.images()`` opens the
bag again and decodes one frame at a time, so a long 640x480 run never sits in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.image import message_to_cvimage
from rosbags.image.image import to_cvtype
from rosbags.interfaces import Connection
from rosbags.typesys import Stores, get_typestore

from latent_memory_ros import geometry
from latent_memory_ros.images import PinholeCamera
from latent_memory_ros.images import camera_info_topic as camera_info_topic_beside

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


class Track(NamedTuple):
    """Poses in time: ``stamps`` (N,) seconds and ``poses`` (N, 7) xyz_qxyzw."""

    stamps: np.ndarray
    poses: np.ndarray

    def at(self, stamps: np.ndarray, max_dt: float = np.inf) -> np.ndarray:
        """The nearest-in-time pose for each of ``stamps``: ``(len(stamps), 7)``; rows with
        no pose within ``max_dt`` seconds are NaN."""
        stamps = np.asarray(stamps, dtype=np.float64)
        out = np.full((len(stamps), 7), np.nan)
        if len(self.stamps) == 0:
            return out
        nearest = _nearest(self.stamps, stamps)
        ok = np.abs(self.stamps[nearest] - stamps) <= max_dt
        out[ok] = self.poses[nearest[ok]]
        return out


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

    def __len__(self) -> int:
        return len(self.image_stamps)

    def images(self, max_frames: int | None = None) -> Iterator[tuple[float, np.ndarray]]:
        """Yield ``(stamp_s, rgb uint8 HxWx3)`` in bag order, decoding one frame at a time."""
        limit = len(self) if max_frames is None else min(max_frames, len(self))
        if limit == 0:
            return
        with _open(self.path) as reader:
            connections = _connections(reader, self.path, self.image_topic, IMAGE_TYPES)
            for count, (conn, _, raw) in enumerate(reader.messages(connections), start=1):
                msg = reader.deserialize(raw, conn.msgtype)
                yield _stamp(msg.header), _to_rgb(msg)
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
) -> BagRun:
    """Read everything but the pixels of one run from a ROS 2 bag.

    ``camera_info_topic`` defaults to the ``camera_info`` beside the image topic when the
    bag has one. ``base_to_camera`` chains the static transforms from the image frame up to
    the odometry's child frame (or to the root of the static tree without odometry); it is
    None when the bag has no static transform for the image frame.
    """
    path = Path(bag_dir)
    with _open(path) as reader:
        image_conns = _connections(reader, path, image_topic, IMAGE_TYPES)
        gt_conns = _connections(reader, path, gt_topic, POSE_TYPES) if gt_topic else []
        odom_conns = _connections(reader, path, odom_topic, POSE_TYPES) if odom_topic else []
        if camera_info_topic is None:
            sibling = camera_info_topic_beside(image_topic)
            if any(c.topic == sibling for c in reader.connections):
                camera_info_topic = sibling
        info_conns = (
            _connections(reader, path, camera_info_topic, (CAMERA_INFO_TYPE,))
            if camera_info_topic
            else []
        )
        tf_conns = [
            c for c in reader.connections if c.topic == tf_static_topic and c.msgtype == TF_TYPE
        ]

        image_stamps: list[float] = []
        image_frame_id = ""
        poses: dict[str, list[tuple[float, np.ndarray]]] = {"gt": [], "odom": []}
        odom_child_frame = ""
        intrinsics: PinholeCamera | None = None
        static: dict[str, tuple[str, np.ndarray]] = {}
        role = {c.id: "image" for c in image_conns}
        role |= {c.id: "gt" for c in gt_conns}
        role |= {c.id: "odom" for c in odom_conns}
        role |= {c.id: "info" for c in info_conns}
        role |= {c.id: "tf" for c in tf_conns}
        wanted = image_conns + gt_conns + odom_conns + info_conns + tf_conns
        for conn, _, raw in reader.messages(_unique(wanted)):
            msg = reader.deserialize(raw, conn.msgtype)
            kind = role[conn.id]
            if kind == "image":
                image_stamps.append(_stamp(msg.header))
                image_frame_id = image_frame_id or msg.header.frame_id
            elif kind in ("gt", "odom"):
                poses[kind].append((_stamp(msg.header), _pose_of(msg, conn.msgtype)))
                if kind == "odom":
                    odom_child_frame = odom_child_frame or getattr(msg, "child_frame_id", "")
            elif kind == "info" and intrinsics is None:
                intrinsics = PinholeCamera(
                    int(msg.width), int(msg.height), *(float(msg.k[i]) for i in (0, 4, 2, 5))
                )
            elif kind == "tf":
                for tf in msg.transforms:
                    static[tf.child_frame_id] = (tf.header.frame_id, _transform_pose(tf.transform))

    return BagRun(
        path=path,
        image_topic=image_topic,
        image_stamps=np.asarray(image_stamps, dtype=np.float64),
        image_frame_id=image_frame_id,
        gt=_track(poses["gt"]) if gt_topic else None,
        odom=_track(poses["odom"]) if odom_topic else None,
        odom_child_frame=odom_child_frame,
        base_to_camera=_chain(static, image_frame_id, odom_child_frame),
        intrinsics=intrinsics,
    )


def bag_topics(bag_dir: str | Path) -> dict[str, str]:
    """``{topic: message type}`` of a bag."""
    with _open(Path(bag_dir)) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def _open(path: Path) -> AnyReader:
    if not path.exists():
        raise FileNotFoundError(f"bag {path} does not exist")
    return AnyReader([path], default_typestore=_TYPESTORE)


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


def _stamp(header: Any) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def _pose_of(msg: Any, msgtype: str) -> np.ndarray:
    if msgtype == "geometry_msgs/msg/TransformStamped":
        return _transform_pose(msg.transform)
    pose = msg.pose
    if msgtype != "geometry_msgs/msg/PoseStamped":  # Odometry, PoseWithCovarianceStamped
        pose = pose.pose
    p, q = pose.position, pose.orientation
    return np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w])


def _transform_pose(transform: Any) -> np.ndarray:
    t, q = transform.translation, transform.rotation
    return np.array([t.x, t.y, t.z, q.x, q.y, q.z, q.w])


def _track(samples: list[tuple[float, np.ndarray]]) -> Track:
    if not samples:
        return Track(np.zeros(0), np.zeros((0, 7)))
    samples.sort(key=lambda s: s[0])
    stamps = np.array([s[0] for s in samples])
    poses = np.stack([s[1] for s in samples])
    poses[:, 3:] = geometry.quat_normalize(poses[:, 3:])
    return Track(stamps, poses)


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


def _nearest(sorted_stamps: np.ndarray, stamps: np.ndarray) -> np.ndarray:
    right = np.clip(np.searchsorted(sorted_stamps, stamps), 1, max(len(sorted_stamps) - 1, 1))
    left = right - 1
    if len(sorted_stamps) == 1:
        return np.zeros(len(stamps), dtype=int)
    closer_right = np.abs(sorted_stamps[right] - stamps) < np.abs(stamps - sorted_stamps[left])
    return np.where(closer_right, right, left)


def _to_rgb(msg: Any) -> np.ndarray:
    if hasattr(msg, "step"):
        _, _, typestr, channels = to_cvtype(msg.encoding)
        packed = msg.width * channels * np.dtype(typestr).itemsize
        if msg.step != packed:
            # rosbags-image assumes rows without padding; drop the padding first.
            rows = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)
            msg = replace(msg, step=packed, data=np.ascontiguousarray(rows[:, :packed]).ravel())
    return np.ascontiguousarray(message_to_cvimage(msg, "rgb8"), dtype=np.uint8)
