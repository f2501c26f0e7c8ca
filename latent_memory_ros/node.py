"""ROS 2 node: camera frames (and wheel odometry) in, camera poses from the student out.

All the learning lives in :class:`~latent_memory_ros.runtime.StudentRuntime`; this module
only adapts messages to it and back. Topics, relative to the node (``~``):

- ``~/pose`` (geometry_msgs/PoseStamped), ``~/odometry`` (nav_msgs/Odometry),
  ``~/path`` (nav_msgs/Path): the camera optical frame in ``output_frame`` (the camera
  frame at start-up or the last reset), stamped with the input image's stamp;
- ``~/reset`` (std_srvs/Trigger): forget the memory, restart the pose and the path;
- ``/diagnostics`` (diagnostic_msgs/DiagnosticArray) at 1 Hz.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion, Twist, Vector3
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from latent_memory_ros import geometry
from latent_memory_ros.images import FrameError, image_msg_to_rgb
from latent_memory_ros.model_format import default_model_dir
from latent_memory_ros.runtime import (
    DEFAULT_PROVIDERS,
    CameraMotionFromOdometry,
    ModelError,
    StudentRuntime,
)

NODE_NAME = "latent_memory_node"
PACKAGE = "latent_memory_ros"
DEFAULT_CAMERA_FRAME = "camera_optical_frame"
IMAGE_QOS_CHOICES = ("sensor_data", "reliable", "best_effort")
DIAGNOSTICS_PERIOD_S = 1.0
# Two seconds of 100 Hz odometry: more than any camera latency, so the match is there.
ODOM_BUFFER_LENGTH = 200
STEP_TIME_WINDOW = 1000


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter: the single source for its declaration and the shipped YAML."""

    name: str
    default: Any
    description: str
    # Read-only parameters are read once at start-up; changing them later would not
    # take effect, so ROS refuses it instead of silently ignoring it.
    read_only: bool = True
    choices: tuple[str, ...] = ()
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None

    def descriptor(self) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(description=self.description, read_only=self.read_only)
        if self.choices:
            descriptor.additional_constraints = "one of: " + ", ".join(self.choices)
        if self.int_range:
            descriptor.integer_range = [
                IntegerRange(from_value=self.int_range[0], to_value=self.int_range[1], step=1)
            ]
        if self.float_range:
            descriptor.floating_point_range = [
                FloatingPointRange(
                    from_value=self.float_range[0], to_value=self.float_range[1], step=0.0
                )
            ]
        return descriptor


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec(
        "model_dir",
        "",
        "Exported model directory (model.json, step.onnx). Empty: the installed "
        "share/latent_memory_ros/models/default, or models/default of a source checkout.",
    ),
    ParameterSpec(
        "providers",
        list(DEFAULT_PROVIDERS),
        "onnxruntime execution providers in order of preference; unavailable ones are "
        "skipped and CPU is the last resort (reported on /diagnostics).",
    ),
    ParameterSpec("image_topic", "/camera/image_raw", "sensor_msgs/Image input topic."),
    ParameterSpec(
        "image_qos",
        "sensor_data",
        "QoS of the image subscription. sensor_data / best_effort suit a live camera; "
        "reliable with a deeper image_qos_depth processes every frame of a bag replay.",
        choices=IMAGE_QOS_CHOICES,
    ),
    ParameterSpec(
        "image_qos_depth",
        1,
        "Queue depth of the image subscription; 1 always takes the most recent frame.",
        int_range=(1, 1000),
    ),
    ParameterSpec("odom_topic", "/odom", "nav_msgs/Odometry input topic (wheel/IMU odometry)."),
    ParameterSpec(
        "use_odom",
        True,
        "Feed odometry to the model; only used when the model takes it (model.json "
        "inputs_optional lists odom).",
    ),
    ParameterSpec(
        "odom_qos_depth", 50, "Queue depth of the odometry subscription.", int_range=(1, 10000)
    ),
    ParameterSpec(
        "odom_tolerance_s",
        0.1,
        "Largest gap between an image stamp and the nearest odometry stamp for that "
        "odometry to be used; otherwise the frame gets no odometry.",
        float_range=(0.0, 10.0),
    ),
    ParameterSpec(
        "base_to_camera",
        [0.0, 0.0, 0.5, -0.5, 0.5, -0.5, 0.5],
        "Camera optical frame in the odometry child (base) frame: x, y, z, qx, qy, qz, qw. "
        "The default is a camera 0.5 m above the base looking forward.",
    ),
    ParameterSpec(
        "output_frame",
        "latent_memory_start",
        "frame_id of the outputs: the camera optical frame at start-up or the last reset.",
    ),
    ParameterSpec("publish_path", True, "Publish ~/path.", read_only=False),
    ParameterSpec(
        "path_max_length",
        2000,
        "Poses kept in ~/path (oldest dropped first).",
        read_only=False,
        int_range=(1, 1_000_000),
    ),
    ParameterSpec(
        "warn_throttle_s",
        5.0,
        "Least time between two warnings about the same problem (e.g. bad frames).",
        read_only=False,
        float_range=(0.0, 3600.0),
    ),
)


class StartupError(RuntimeError):
    """A model or configuration the node cannot run with; the message says which."""


def image_qos_profile(name: str, depth: int) -> QoSProfile:
    """The image subscription QoS for the ``image_qos`` parameter."""
    if name not in IMAGE_QOS_CHOICES:
        raise StartupError(
            f"parameter image_qos is '{name}', expected one of {', '.join(IMAGE_QOS_CHOICES)}"
        )
    reliable = name == "reliable"
    return QoSProfile(
        history=QoSHistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=QoSReliabilityPolicy.RELIABLE if reliable else QoSReliabilityPolicy.BEST_EFFORT,
        durability=QoSDurabilityPolicy.VOLATILE,
    )


def stamp_ns(stamp: Any) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def pose_to_msg(pose: np.ndarray) -> Pose:
    x, y, z, qx, qy, qz, qw = (float(v) for v in pose)
    return Pose(position=Point(x=x, y=y, z=z), orientation=Quaternion(x=qx, y=qy, z=qz, w=qw))


def pose_from_msg(pose: Pose) -> np.ndarray:
    p, q = pose.position, pose.orientation
    return np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w])


def covariance_from_log_var(log_var: np.ndarray) -> np.ndarray:
    """6x6 row-major diagonal covariance (x, y, z, rot x, y, z) as ROS messages want it."""
    covariance = np.zeros(36)
    covariance[::7] = np.exp(np.asarray(log_var, dtype=np.float64))
    return covariance


def twist_between(previous: np.ndarray, current: np.ndarray, dt: float) -> Twist:
    """Finite-difference velocity, expressed in the (previous) child frame."""
    motion = geometry.relative(previous, current)
    linear = motion[:3] / dt
    angular = geometry.quat_to_rotvec(motion[3:]) / dt
    return Twist(
        linear=Vector3(x=float(linear[0]), y=float(linear[1]), z=float(linear[2])),
        angular=Vector3(x=float(angular[0]), y=float(angular[1]), z=float(angular[2])),
    )


class LatentMemoryNode(Node):
    """Runs every camera frame through the student and publishes where the camera is."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.declare_parameters(
            "", [(spec.name, spec.default, spec.descriptor()) for spec in PARAMETERS]
        )
        param = self._param
        # Configuration mistakes are reported before the (slow) model load.
        image_qos = image_qos_profile(param("image_qos"), param("image_qos_depth"))
        base_to_camera = self._base_to_camera(param("base_to_camera"))

        model_dir = param("model_dir") or str(default_model_dir())
        try:
            self._runtime = StudentRuntime(model_dir, providers=param("providers"))
        except ModelError as err:
            raise StartupError(f"cannot load the model: {err}") from err
        spec = self._runtime.spec
        self.get_logger().info(
            f"model '{spec.name}' (cell {spec.cell}, {spec.image_width}x{spec.image_height}) "
            f"from {spec.directory}; providers: {', '.join(self._runtime.active_providers)}"
        )
        if self._runtime.fallback_warning:
            self.get_logger().warning(self._runtime.fallback_warning)

        self._output_frame: str = param("output_frame")
        self._publish_path: bool = param("publish_path")
        self._warn_throttle_s: float = param("warn_throttle_s")
        self._path: deque[PoseStamped] = deque(maxlen=param("path_max_length"))
        self._odom_tolerance_s: float = param("odom_tolerance_s")
        # (header, rgb, stamp ns, arrival monotonic s) of a frame waiting for odometry.
        self._held: tuple[Header, np.ndarray, int, float] | None = None

        self._frames_received = 0
        self._frames_processed = 0
        self._frames_rejected = 0
        self._step_ms: deque[float] = deque(maxlen=STEP_TIME_WINDOW)
        self._last_pose: np.ndarray | None = None
        self._last_stamp_ns: int | None = None

        self._pose_pub = self.create_publisher(PoseStamped, "~/pose", 10)
        self._odometry_pub = self.create_publisher(Odometry, "~/odometry", 10)
        self._path_pub = self.create_publisher(PathMsg, "~/path", 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(Trigger, "~/reset", self._on_reset)

        image_topic = param("image_topic")
        self.create_subscription(Image, image_topic, self._on_image, image_qos)

        self._odom_buffer: deque[tuple[int, np.ndarray]] = deque(maxlen=ODOM_BUFFER_LENGTH)
        self._camera_motion: CameraMotionFromOdometry | None = None
        if spec.uses_odom and param("use_odom"):
            self._camera_motion = CameraMotionFromOdometry(base_to_camera)
            self.create_subscription(
                Odometry, param("odom_topic"), self._on_odom, param("odom_qos_depth")
            )
            odom_note = f"odometry from {self.resolve_topic_name(param('odom_topic'))}"
            self.create_timer(0.01, self._flush_held, clock=Clock(clock_type=ClockType.STEADY_TIME))
        elif spec.uses_odom:
            odom_note = "odometry off (use_odom is false)"
        else:
            odom_note = "odometry unused (the model does not take it)"
        self.get_logger().info(
            f"listening to {self.resolve_topic_name(image_topic)} ({param('image_qos')}); "
            f"{odom_note}"
        )

        # A steady clock keeps diagnostics flowing while simulated time is paused.
        self.create_timer(
            DIAGNOSTICS_PERIOD_S,
            self._publish_diagnostics,
            clock=Clock(clock_type=ClockType.STEADY_TIME),
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    @staticmethod
    def _base_to_camera(values: list[float]) -> np.ndarray:
        pose = np.asarray(values, dtype=np.float64)
        if pose.shape != (7,) or not np.all(np.isfinite(pose)) or np.linalg.norm(pose[3:]) < 1e-6:
            raise StartupError(
                f"parameter base_to_camera must be 7 finite numbers x, y, z, qx, qy, qz, qw "
                f"with a non-zero quaternion, got {list(values)}"
            )
        pose[3:] = geometry.quat_normalize(pose[3:])
        return pose

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        for parameter in parameters:
            if parameter.name == "publish_path":
                self._publish_path = parameter.value
            elif parameter.name == "path_max_length":
                self._path = deque(self._path, maxlen=parameter.value)
            elif parameter.name == "warn_throttle_s":
                self._warn_throttle_s = parameter.value
        return SetParametersResult(successful=True)

    def _on_odom(self, msg: Odometry) -> None:
        stamp = stamp_ns(msg.header.stamp)
        self._odom_buffer.append((stamp, pose_from_msg(msg.pose.pose)))
        if self._held is not None and stamp >= self._held[2]:
            self._step_held()

    def _odom_covers(self, image_ns: int) -> bool:
        return bool(self._odom_buffer) and self._odom_buffer[-1][0] >= image_ns

    def _step_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._step(*held[:3])

    def _flush_held(self) -> None:
        """Step a held frame whose odometry has not come within the tolerance (wall time)."""
        if self._held is not None and time.monotonic() - self._held[3] > self._odom_tolerance_s:
            self._step_held()

    def _odom_motion(self, image_ns: int) -> np.ndarray | None:
        """Camera motion since the previous frame from the odometry nearest the image stamp."""
        assert self._camera_motion is not None
        pose = self._odom_at(image_ns)
        if pose is None:
            # Without odometry for this frame the next frame's motion would span two
            # frames; start the chain again instead.
            self._camera_motion.reset()
            self.get_logger().warning(
                f"no odometry within {self._odom_tolerance_s:.3f} s of the image stamp; "
                "this frame runs without it",
                throttle_duration_sec=self._warn_throttle_s,
            )
            return None
        return self._camera_motion.update(pose)

    def _odom_at(self, image_ns: int) -> np.ndarray | None:
        """The base pose at the image stamp: interpolated between the odometry samples
        around it, else the nearest sample within odom_tolerance_s, else None."""
        tolerance_ns = int(self._odom_tolerance_s * 1e9)
        before = after = None
        for sample in self._odom_buffer:
            if sample[0] <= image_ns:
                before = sample
            elif after is None:
                after = sample
        if before is not None and before[0] == image_ns:
            return before[1]
        if before is not None and after is not None:
            if after[0] - before[0] <= 2 * tolerance_ns:
                fraction = (image_ns - before[0]) / (after[0] - before[0])
                return geometry.interpolate(before[1], after[1], fraction)
        near = [s for s in (before, after) if s is not None]
        nearest = min(near, key=lambda s: abs(s[0] - image_ns), default=None)
        if nearest is None or abs(nearest[0] - image_ns) > tolerance_ns:
            return None
        return nearest[1]

    def _on_image(self, msg: Image) -> None:
        self._frames_received += 1
        try:
            rgb = image_msg_to_rgb(msg)
        except FrameError as err:
            self._frames_rejected += 1
            self.get_logger().warning(
                f"skipping frame stamped {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}: "
                f"{err}",
                throttle_duration_sec=self._warn_throttle_s,
            )
            return

        now_ns = stamp_ns(msg.header.stamp)
        if self._camera_motion is not None and not self._odom_covers(now_ns):
            # Odometry stamped with this image is usually a moment behind it on the wire:
            # hold the frame until it comes (or odom_tolerance_s passes), so the motion
            # fed to the model is this frame's and not the previous one's. A newer frame
            # releases the held one first: nothing is dropped.
            self._step_held()
            self._held = (msg.header, rgb, now_ns, time.monotonic())
            return
        self._step_held()
        self._step(msg.header, rgb, now_ns)

    def _step(self, header: Header, rgb: np.ndarray, now_ns: int) -> None:
        dt = None
        if self._last_stamp_ns is not None:
            dt = (now_ns - self._last_stamp_ns) * 1e-9
            if dt <= 0.0:
                self.get_logger().warning(
                    f"image stamp went back by {-dt:.3f} s; stepping without dt (call ~/reset "
                    "when a bag restarts)",
                    throttle_duration_sec=self._warn_throttle_s,
                )
                dt = None
        motion = self._odom_motion(now_ns) if self._camera_motion is not None else None

        result = self._runtime.step(rgb, odom_motion=motion, dt=dt)
        self._frames_processed += 1
        self._step_ms.append(result.step_ms)
        self._publish(header, result.pose, result.log_var, dt)
        self._last_pose, self._last_stamp_ns = result.pose, now_ns

    def _publish(
        self, image_header: Header, pose: np.ndarray, log_var: np.ndarray, dt: float | None
    ) -> None:
        header = Header(stamp=image_header.stamp, frame_id=self._output_frame)
        pose_stamped = PoseStamped(header=header, pose=pose_to_msg(pose))
        self._pose_pub.publish(pose_stamped)

        odometry = Odometry(
            header=header, child_frame_id=image_header.frame_id or DEFAULT_CAMERA_FRAME
        )
        odometry.pose.pose = pose_stamped.pose
        odometry.pose.covariance = covariance_from_log_var(log_var)
        if self._last_pose is not None and dt is not None:
            odometry.twist.twist = twist_between(self._last_pose, pose, dt)
        self._odometry_pub.publish(odometry)

        self._path.append(pose_stamped)
        # Re-sending up to path_max_length poses each frame is the costly part; skip it
        # when nobody listens or it is switched off.
        if self._publish_path and self._path_pub.get_subscription_count() > 0:
            self._path_pub.publish(PathMsg(header=header, poses=list(self._path)))

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        frames = self._runtime.frames
        self._held = None
        self._runtime.reset()
        self._path.clear()
        self._last_pose = None
        self._last_stamp_ns = None
        if self._camera_motion is not None:
            self._camera_motion.reset()
        response.success = True
        response.message = f"memory, pose and path reset after {frames} frames"
        self.get_logger().info(response.message)
        return response

    def _publish_diagnostics(self) -> None:
        runtime = self._runtime
        status = DiagnosticStatus(name=f"{self.get_name()}: runtime", hardware_id=runtime.spec.name)
        if runtime.fallback_warning:
            status.level, status.message = DiagnosticStatus.WARN, runtime.fallback_warning
        else:
            status.level, status.message = DiagnosticStatus.OK, "running"
        p50, p99 = np.percentile(self._step_ms, [50, 99]) if self._step_ms else (np.nan, np.nan)
        values = {
            "model": runtime.spec.name,
            "cell": runtime.spec.cell,
            "provider": runtime.active_providers[0],
            "frames_received": self._frames_received,
            "frames_processed": self._frames_processed,
            "frames_rejected": self._frames_rejected,
            "step_ms_p50": f"{p50:.2f}",
            "step_ms_p99": f"{p99:.2f}",
        }
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        self._diagnostics_pub.publish(
            DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()), status=[status])
        )


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run latent_memory_ros latent_memory_node``; returns the exit code."""
    rclpy.init(args=args)
    node = None
    try:
        node = LatentMemoryNode()
        rclpy.spin(node)
    except (StartupError, ParameterException) as err:
        get_logger(NODE_NAME).fatal(f"cannot start: {err}")
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
