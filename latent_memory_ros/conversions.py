"""Stamps, poses, transforms and twists between ROS messages and numpy, without ROS.

The readers take any object with the ROS field names (rclpy's generated messages, the
rosbags dataclasses of a bag, a test's stand-in); the writers fill one given, so the
node, the bag reader, the replay, the demo and the tests share one copy and none of them
needs rclpy to use it. Poses are ``(7,)`` x, y, z, qx, qy, qz, qw; twists ``(6,)``
linear x, y, z then angular x, y, z.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

__all__ = [
    "NS_PER_S",
    "format_stamp",
    "ns_to_sec_nanosec",
    "pose_to_array",
    "stamp_from_ns",
    "stamp_to_ns",
    "stamp_to_s",
    "transform_to_array",
    "write_pose",
    "write_transform",
    "write_twist",
]

NS_PER_S = 1_000_000_000
Target = TypeVar("Target")


def stamp_to_ns(stamp: Any) -> int:
    """A ``builtin_interfaces/Time`` (``sec``, ``nanosec``) in integer nanoseconds."""
    return stamp.sec * NS_PER_S + stamp.nanosec


def stamp_to_s(stamp: Any) -> float:
    """A ``builtin_interfaces/Time`` in seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def ns_to_sec_nanosec(ns: int) -> tuple[int, int]:
    """Integer nanoseconds as the (``sec``, ``nanosec``) of a stamp (floor division, so
    ``nanosec`` is never negative)."""
    return divmod(int(ns), NS_PER_S)


def stamp_from_ns(ns: int, time_type: type[Target]) -> Target:
    """A ``time_type(sec=..., nanosec=...)`` for integer nanoseconds."""
    sec, nanosec = ns_to_sec_nanosec(ns)
    return time_type(sec=sec, nanosec=nanosec)


def format_stamp(stamp: Any) -> str:
    """``sec.nanosec`` as the node's log messages name a frame."""
    return f"{stamp.sec}.{stamp.nanosec:09d}"


def pose_to_array(pose: Any) -> np.ndarray:
    """A ``geometry_msgs/Pose`` (``position``, ``orientation``) as xyz_qxyzw."""
    p, q = pose.position, pose.orientation
    return np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w])


def transform_to_array(transform: Any) -> np.ndarray:
    """A ``geometry_msgs/Transform`` (``translation``, ``rotation``) as xyz_qxyzw."""
    t, q = transform.translation, transform.rotation
    return np.array([t.x, t.y, t.z, q.x, q.y, q.z, q.w])


def _write_xyz(target: Any, values: Any) -> None:
    target.x, target.y, target.z = (float(v) for v in values)


def _write_quaternion(target: Any, q: Any) -> None:
    target.x, target.y, target.z, target.w = (float(v) for v in q)


def write_pose(target: Target, pose: np.ndarray) -> Target:
    """Fill a ``geometry_msgs/Pose`` from xyz_qxyzw; returns it."""
    _write_xyz(target.position, pose[:3])
    _write_quaternion(target.orientation, pose[3:7])
    return target


def write_transform(target: Target, pose: np.ndarray) -> Target:
    """Fill a ``geometry_msgs/Transform`` from xyz_qxyzw; returns it."""
    _write_xyz(target.translation, pose[:3])
    _write_quaternion(target.rotation, pose[3:7])
    return target


def write_twist(target: Target, twist: np.ndarray) -> Target:
    """Fill a ``geometry_msgs/Twist`` from linear xyz, angular xyz; returns it."""
    _write_xyz(target.linear, twist[:3])
    _write_xyz(target.angular, twist[3:6])
    return target
