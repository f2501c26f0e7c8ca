"""Helpers the tests share: the node as a separate process and a harness that talks to
it over DDS, frames to send, and a tiny rosbag2 run with the synthetic world's topics.

Test modules import from here (never from each other or from conftest.py, which holds
only the session's ROS environment and the fixtures).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from latent_memory_ros import geometry
from latent_memory_ros.conversions import stamp_from_ns
from latent_memory_ros.messages import pose_to_msg

REPO = Path(__file__).resolve().parent.parent

# The node and its harness --------------------------------------------------------------


@dataclass
class NodeProcess:
    """A node started with ``python -m``; its stdout and stderr go to one log file."""

    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"node still running after {timeout} s; its log:\n{self.log()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            # SIGINT is what Ctrl-C and ros2 launch send: the node should shut down cleanly.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def node_environment() -> dict[str, str]:
    """This process's environment: the ROS wheels' LD_LIBRARY_PATH and bootstrap marker
    travel together (or not at all), plus the session's domain and the repo on the path."""
    env = dict(os.environ)
    path = [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(path)
    env["PYTHONUNBUFFERED"] = "1"
    env["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"
    return env


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    spin: Callable[[], None],
    what: str,
    node: NodeProcess | None = None,
) -> None:
    """Spin until ``condition()``; fail naming ``what`` (with the node's log) on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if node is not None and node.process.poll() is not None:
            pytest.fail(
                f"node exited with {node.process.returncode} while waiting for {what}; "
                f"its log:\n{node.log()}"
            )
        if time.monotonic() > deadline:
            log = f"; node log:\n{node.log()}" if node is not None else ""
            pytest.fail(f"timed out after {timeout} s waiting for {what}{log}")
        spin()


IMAGE_TOPIC = "/latent_memory_test/image"
ODOM_TOPIC = "/latent_memory_test/odom"
CAMERA_FRAME = "test_camera_optical"
TIMEOUT_S = 20.0
ODOMETRY_LEAD_S = 0.005  # odometry published this long before its image (send_frame)
RELIABLE = QoSProfile(depth=50, reliability=QoSReliabilityPolicy.RELIABLE)


def texture_frames(count: int, width: int = 96, height: int = 72) -> list[np.ndarray]:
    """BGR crops sliding over one smooth random texture: what a camera moving sideways sees."""
    rng = np.random.default_rng(7)
    texture = cv2.resize(
        rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), (600, 400), interpolation=cv2.INTER_CUBIC
    )
    return [
        np.ascontiguousarray(texture[50 : 50 + height, 10 + 12 * k : 10 + 12 * k + width])
        for k in range(count)
    ]


def image_msg(bgr: np.ndarray, stamp: Time, **overrides: object) -> Image:
    msg = Image(
        header=Header(stamp=stamp, frame_id=CAMERA_FRAME),
        height=bgr.shape[0],
        width=bgr.shape[1],
        encoding="bgr8",
        step=bgr.shape[1] * 3,
        data=bgr.tobytes(),
    )
    for name, value in overrides.items():
        setattr(msg, name, value)
    return msg


def key(stamp: Time) -> tuple[int, int]:
    return stamp.sec, stamp.nanosec


class Harness:
    """The test side of the wire: publishers for the node's inputs, recorders of its outputs."""

    def __init__(
        self,
        node_process: NodeProcess,
        name: str = "latent_memory_node",
        image_topic: str = IMAGE_TOPIC,
        odom_topic: str = ODOM_TOPIC,
    ) -> None:
        self.node_process = node_process
        self.name = name
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"{name}_test", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.image_pub = self.node.create_publisher(Image, image_topic, RELIABLE)
        self.odom_pub = self.node.create_publisher(Odometry, odom_topic, RELIABLE)
        self.poses: dict[tuple[int, int], PoseStamped] = {}
        self.odometry: dict[tuple[int, int], Odometry] = {}
        self.paths: list[PathMsg] = []
        self.diagnostics: list[DiagnosticStatus] = []
        self.diagnostics_headers: list[Time] = []
        self.pose_count = 0
        for msg_type, topic, record in (
            (PoseStamped, f"/{name}/pose", self._on_pose),
            (Odometry, f"/{name}/odometry", self._on_odometry),
            (PathMsg, f"/{name}/path", self.paths.append),
            (DiagnosticArray, "/diagnostics", self._on_diagnostics),
        ):
            self.node.create_subscription(msg_type, topic, record, RELIABLE)
        self.reset_client = self.node.create_client(Trigger, f"/{name}/reset")
        self.sent_good = 0
        self.sent_bad = 0
        self._clock_ns = 1_000 * 10**9 + 123_456_789

    def _on_pose(self, msg: PoseStamped) -> None:
        self.pose_count += 1
        self.poses[key(msg.header.stamp)] = msg

    def _on_odometry(self, msg: Odometry) -> None:
        self.odometry[key(msg.header.stamp)] = msg

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        self.diagnostics.extend(msg.status)
        self.diagnostics_headers.append(msg.header.stamp)

    def odometry_for(self, pose: PoseStamped) -> Odometry:
        """The ~/odometry message published with ``pose``."""
        stamp = key(pose.header.stamp)
        self.wait(lambda: stamp in self.odometry, f"the odometry stamped {stamp}")
        return self.odometry[stamp]

    def spin(self) -> None:
        self.executor.spin_once(timeout_sec=0.02)

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = TIMEOUT_S) -> None:
        wait_for(condition, timeout, self.spin, what, self.node_process)

    def connect(self, odometry: bool = True) -> None:
        # Discovery is asynchronous: publish only once the node's readers have matched ours,
        # or the first frames vanish.
        self.wait(lambda: self.image_pub.get_subscription_count() > 0, "image subscription")
        if odometry:
            self.wait(lambda: self.odom_pub.get_subscription_count() > 0, "odom subscription")
        for topic in (f"/{self.name}/pose", f"/{self.name}/odometry", f"/{self.name}/path"):
            self.wait(lambda t=topic: self.node.count_publishers(t) > 0, f"publisher of {topic}")
        self.wait(self.reset_client.service_is_ready, "the ~/reset service")

    def next_stamp(self) -> Time:
        # One clock across the module keeps stamps increasing, so odometry recorded by an
        # earlier test is never the nearest to a later frame.
        self._clock_ns += 100_000_000
        return stamp_from_ns(self._clock_ns, Time)

    def send_odometry(self, stamp: Time, base_x: float) -> None:
        msg = Odometry(header=Header(stamp=stamp, frame_id="odom"), child_frame_id="base_link")
        msg.pose.pose = pose_to_msg(np.array([base_x, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]))
        self.odom_pub.publish(msg)

    def send_frame(self, bgr: np.ndarray, base_x: float | None = None) -> PoseStamped:
        """Publish one good frame (and its odometry); return the pose the node answers with."""
        stamp = self.next_stamp()
        if base_x is not None:
            self.send_odometry(stamp, base_x)
            # Two topics are not ordered with each other on the wire: a moment for the
            # odometry to arrive first, as it would from a driver publishing it all along
            # (otherwise the frame may take the previous sample, 0.1 s away, as its own).
            time.sleep(ODOMETRY_LEAD_S)
        self.image_pub.publish(image_msg(bgr, stamp))
        self.sent_good += 1
        self.wait(lambda: key(stamp) in self.poses, f"the pose for the frame stamped {key(stamp)}")
        return self.poses[key(stamp)]

    def send_bad_frame(self, bgr: np.ndarray, **overrides: object) -> None:
        self.image_pub.publish(image_msg(bgr, self.next_stamp(), **overrides))
        self.sent_bad += 1

    def reset(self) -> Trigger.Response:
        future = self.reset_client.call_async(Trigger.Request())
        self.wait(future.done, "the ~/reset response")
        return future.result()

    def status(
        self, condition: Callable[[dict[str, str]], bool], name: str | None = None
    ) -> tuple[DiagnosticStatus, dict[str, str]]:
        """The first diagnostics status of ``name`` (default: this node's runtime status)
        whose values satisfy ``condition``."""
        name = name or f"{self.name}: runtime"
        found: list[tuple[DiagnosticStatus, dict[str, str]]] = []

        def check() -> bool:
            for status in self.diagnostics:
                values = {kv.key: kv.value for kv in status.values}
                if status.name == name and condition(values):
                    found.append((status, values))
                    return True
            return False

        self.wait(check, f"a {name!r} diagnostics status that matches")
        return found[0]

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


# A tiny rosbag2 run ---------------------------------------------------------------------


TYPESTORE = get_typestore(Stores.ROS2_KILTED)
T = types.SimpleNamespace(**{name.rsplit("/", 1)[-1]: cls for name, cls in TYPESTORE.types.items()})
T0_NS = 1_700_000_000_123_456_789
FRAME_NS = 33_333_333
# A camera 0.5 m above the base, 0.1 m forward, looking forward (optical from REP 103).
BASE_TO_CAMERA = np.array([0.1, 0.0, 0.5, -0.5, 0.5, -0.5, 0.5])
INTRINSICS = (525.0 / 20, 525.0 / 20, 15.5, 11.5)


def frame_pixels(i: int, width: int, height: int) -> np.ndarray:
    """Frame ``i``'s rgb8 content: every frame differs, every channel differs."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = i % 256
    image[..., 1] = np.arange(width, dtype=np.uint8)[None, :]
    image[..., 2] = np.arange(height, dtype=np.uint8)[:, None]
    return image


def base_trajectory(frames: int) -> np.ndarray:
    """The base driving most of a 2 m circle on the floor (z up), yaw along the path."""
    angle = np.linspace(0.0, 1.8 * np.pi, frames)
    poses = np.zeros((frames, 7))
    poses[:, 0], poses[:, 1] = np.sin(angle), 1.0 - np.cos(angle)
    poses[:, 3:] = np.stack([geometry.euler_to_quat(0.0, 0.0, a) for a in angle])
    return poses


def bag_header(ns: int, frame_id: str):
    return T.Header(stamp=stamp_from_ns(ns, T.Time), frame_id=frame_id)


def bag_pose(p: np.ndarray):
    return T.Pose(
        position=T.Point(x=p[0], y=p[1], z=p[2]),
        orientation=T.Quaternion(x=p[3], y=p[4], z=p[5], w=p[6]),
    )


def bag_transform(parent: str, child: str, p: np.ndarray):
    return T.TransformStamped(
        header=bag_header(T0_NS, parent),
        child_frame_id=child,
        transform=T.Transform(
            translation=T.Vector3(x=p[0], y=p[1], z=p[2]),
            rotation=T.Quaternion(x=p[3], y=p[4], z=p[5], w=p[6]),
        ),
    )


def write_test_bag(
    path: Path,
    frames: int = 12,
    storage: str = "mcap",
    size: tuple[int, int] = (32, 24),
    odom_scale: float = 1.03,
    camera_link: bool = False,
) -> types.SimpleNamespace:
    """A run with /camera/image_raw, /camera/camera_info, /odom, /ground_truth/pose and
    /tf_static, all stamped with the image time; returns what was written.

    Each instant is written image first, then odometry and ground truth, as the synthetic
    world's writer does. The odometry is the true base motion with a scale error, so it
    drifts; with ``camera_link`` the mount is two static transforms (base_link ->
    camera_link -> camera_optical_frame) instead of one.
    """
    width, height = size
    stamps_ns = T0_NS + FRAME_NS * np.arange(frames)
    base = base_trajectory(frames)
    gt = geometry.compose(base, BASE_TO_CAMERA)
    steps = geometry.relative(base[:-1], base[1:])
    steps[:, :3] *= odom_scale
    odom = np.concatenate([base[:1], geometry.integrate(steps, base[0])])

    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {
            topic: writer.add_connection(topic, msgtype, typestore=TYPESTORE)
            for topic, msgtype in (
                ("/tf_static", "tf2_msgs/msg/TFMessage"),
                ("/camera/camera_info", "sensor_msgs/msg/CameraInfo"),
                ("/camera/image_raw", "sensor_msgs/msg/Image"),
                ("/odom", "nav_msgs/msg/Odometry"),
                ("/ground_truth/pose", "geometry_msgs/msg/PoseStamped"),
            )
        }

        def write(topic: str, ns: int, msg: object) -> None:
            writer.write(conns[topic], ns, TYPESTORE.serialize_cdr(msg, conns[topic].msgtype))

        if camera_link:
            link = np.array([0.1, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0])
            transforms = [
                bag_transform("base_link", "camera_link", link),
                bag_transform(
                    "camera_link",
                    "camera_optical_frame",
                    geometry.relative(link, BASE_TO_CAMERA),
                ),
            ]
        else:
            transforms = [bag_transform("base_link", "camera_optical_frame", BASE_TO_CAMERA)]
        write("/tf_static", T0_NS, T.TFMessage(transforms=transforms))
        fx, fy, cx, cy = INTRINSICS
        info = T.CameraInfo(
            header=bag_header(T0_NS, "camera_optical_frame"),
            height=height,
            width=width,
            distortion_model="plumb_bob",
            d=np.zeros(5),
            k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1.0]),
            r=np.eye(3).ravel(),
            p=np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1.0, 0]),
            binning_x=0,
            binning_y=0,
            roi=T.RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
        )
        write("/camera/camera_info", T0_NS, info)
        for i, ns in enumerate(int(s) for s in stamps_ns):
            image = T.Image(
                header=bag_header(ns, "camera_optical_frame"),
                height=height,
                width=width,
                encoding="rgb8",
                is_bigendian=0,
                step=width * 3,
                data=frame_pixels(i, width, height).ravel(),
            )
            write("/camera/image_raw", ns, image)
            odometry = T.Odometry(
                header=bag_header(ns, "odom"),
                child_frame_id="base_link",
                pose=T.PoseWithCovariance(pose=bag_pose(odom[i]), covariance=np.zeros(36)),
                twist=T.TwistWithCovariance(
                    twist=T.Twist(
                        linear=T.Vector3(x=0, y=0, z=0), angular=T.Vector3(x=0, y=0, z=0)
                    ),
                    covariance=np.zeros(36),
                ),
            )
            write("/odom", ns, odometry)
            write(
                "/ground_truth/pose",
                ns,
                T.PoseStamped(header=bag_header(ns, "world"), pose=bag_pose(gt[i])),
            )
    return types.SimpleNamespace(
        stamps=stamps_ns * 1e-9, stamps_ns=stamps_ns, gt=gt, odom=odom, base=base, size=size
    )
