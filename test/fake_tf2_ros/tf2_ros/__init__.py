"""A stand-in for tf2_ros in the tests, where the PyPI ROS wheels have none.

It has the few names the node uses, with tf2_ros's signatures: ``TransformBroadcaster``
publishes each geometry_msgs/TransformStamped on ``/fake_tf`` (tf2_msgs, the real /tf
type, is not installable here either), and ``Buffer.lookup_transform`` answers from the
static transforms in the environment variable ``FAKE_TF2_STATIC``:
``{"target->source": [x, y, z, qx, qy, qz, qw]}``. A robot runs the real tf2_ros.
"""

from __future__ import annotations

import json
import os

from geometry_msgs.msg import Quaternion, Transform, TransformStamped, Vector3

TOPIC = "/fake_tf"


class LookupException(Exception):
    pass


class ConnectivityException(Exception):
    pass


class ExtrapolationException(Exception):
    pass


class TransformBroadcaster:
    def __init__(self, node, qos=100):
        self._publisher = node.create_publisher(TransformStamped, TOPIC, qos)

    def sendTransform(self, transform):  # noqa: N802 (tf2_ros's name)
        for t in transform if isinstance(transform, list) else [transform]:
            self._publisher.publish(t)


class Buffer:
    def __init__(self, *args, **kwargs):
        self._static = json.loads(os.environ.get("FAKE_TF2_STATIC", "{}"))

    def lookup_transform(self, target_frame, source_frame, time, timeout=None):
        pose = self._static.get(f"{target_frame}->{source_frame}")
        if pose is None:
            raise LookupException(f'"{target_frame}" -> "{source_frame}" does not exist')
        x, y, z, qx, qy, qz, qw = (float(v) for v in pose)
        t = TransformStamped(child_frame_id=source_frame)
        t.header.frame_id = target_frame
        t.transform = Transform(
            translation=Vector3(x=x, y=y, z=z), rotation=Quaternion(x=qx, y=qy, z=qz, w=qw)
        )
        return t


class TransformListener:
    def __init__(self, buffer, node, *args, **kwargs):
        self.buffer = buffer
