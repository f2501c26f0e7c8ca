"""ROS 2 node: camera frames (and wheel odometry) in, the robot's pose (REP 105) out.

All the learning lives in :class:`~latent_memory_ros.runtime.StudentRuntime` and all the
per-frame bookkeeping (frames, covariance, tracking state, time) in
:class:`~latent_memory_ros.localizer.Localizer`; this module adapts messages to them and
back. Interfaces, relative to the node (``~``):

- ``~/pose`` (geometry_msgs/PoseStamped), ``~/odometry`` (nav_msgs/Odometry, twist in
  the base frame, covariances from the predicted uncertainty), ``~/path``
  (nav_msgs/Path): ``base_frame`` in ``odom_frame``, stamped with the input image's stamp;
  the odom → base transform on TF when ``publish_tf`` (and tf2_ros imports);
- ``~/status`` (diagnostic_msgs/DiagnosticStatus, every frame: the tracking state),
  ``~/markers`` (visualization_msgs/MarkerArray: the tracking state in RViz),
  ``/diagnostics`` at 1 Hz;
- ``~/reset``, ``~/save_memory``, ``~/load_memory`` (std_srvs/Trigger), ``~/enable``
  (std_srvs/SetBool), ``~/set_pose`` (geometry_msgs/PoseWithCovarianceStamped topic);
- map-free queries, when the model has a query graph (``query.onnx``): an image on
  ``~/query/image`` is answered on ``~/query/pose`` (geometry_msgs/
  PoseWithCovarianceStamped: where the camera that took it is, in the camera frame of
  the latest processed frame) and ``~/query/markers`` (an arrow in ``odom_frame``).
  A query reads the memory and never changes it.

Threads: inference runs on its own thread. Image and odometry callbacks only queue and
wake it, so the executor keeps answering services, parameters and odometry while a
frame is being processed. Services that change the memory, and queries, wait for the
step in progress (a lock), so they see the memory between two frames, never half of
one; a query runs its graph outside the lock. The node always runs the most recent
frame: frames that arrive while a step runs replace each other (counted as dropped), so
latency does not grow when inference is slower than the camera.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import (
    Point,
    Pose,
    PoseStamped,
    PoseWithCovarianceStamped,
    Quaternion,
    Transform,
    TransformStamped,
    Twist,
    Vector3,
)
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rcl_interfaces.msg import (
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSHistoryPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import ColorRGBA, Header
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import Marker, MarkerArray

from latent_memory_ros import geometry, images
from latent_memory_ros.localizer import (
    Estimate,
    Localizer,
    LocalizerConfig,
    SnapshotError,
    StampError,
    TrackingState,
    remove_stale_temporaries,
)
from latent_memory_ros.model_format import default_model_dir
from latent_memory_ros.parameters import (
    IMAGE_QOS_CHOICES,
    IMAGE_TRANSPORT_CHOICES,
    PARAMETERS,
)
from latent_memory_ros.runtime import ModelError, StudentRuntime

try:  # a robot has tf2_ros; the PyPI wheels do not
    import tf2_ros
except ImportError:
    tf2_ros = None

NODE_NAME = "latent_memory_node"
LIFECYCLE_NODE_NAME = "latent_memory_lifecycle_node"
PACKAGE = "latent_memory_ros"
DIAGNOSTICS_PERIOD_S = 1.0
PATH_FLUSH_PERIOD_S = 0.1  # how soon a path held back by path_period_s goes out once due
STEP_TIME_WINDOW = 1000
LEVELS = {
    TrackingState.OK: DiagnosticStatus.OK,
    TrackingState.UNCERTAIN: DiagnosticStatus.WARN,
    TrackingState.LOST: DiagnosticStatus.ERROR,
}
COLOURS = {
    TrackingState.OK: ColorRGBA(r=0.2, g=0.9, b=0.2, a=1.0),
    TrackingState.UNCERTAIN: ColorRGBA(r=1.0, g=0.7, b=0.0, a=1.0),
    TrackingState.LOST: ColorRGBA(r=1.0, g=0.1, b=0.1, a=1.0),
}


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


def twist_to_msg(twist: np.ndarray) -> Twist:
    v = [float(x) for x in twist]
    return Twist(linear=Vector3(x=v[0], y=v[1], z=v[2]), angular=Vector3(x=v[3], y=v[4], z=v[5]))


@dataclass
class _Frame:
    msg: Any
    stamp_ns: int
    arrived: float  # time.monotonic()
    held: bool = False  # seen by the worker and kept waiting for its odometry


@dataclass
class _Counters:
    received: int = 0
    processed: int = 0
    dropped: int = 0  # replaced in the node's own slot by a newer frame
    missing: int = 0  # never reached the node: gaps in the stamps of those that did
    rejected: int = 0
    paused: int = 0
    without_odometry: int = 0  # processed without odometry while use_odom is on
    resets: int = 0
    jitter: int = 0
    odometry_late: int = 0  # samples that came after their frame had run without them
    untrusted: int = 0  # processed with a camera the vision checks did not trust
    queries: int = 0  # answered
    queries_rejected: int = 0


# Counters that /diagnostics does not prefix with "frames_".
_NOT_FRAME_COUNTERS = ("resets", "jitter", "odometry_late", "queries", "queries_rejected")


class StampGaps:
    """Frames that never arrived, told by the stamps of those that did.

    The camera's period is a low percentile of the recent intervals between arriving
    stamps, so it holds while most frames are lost at random; an interval of n periods
    then hides n - 1 frames. Intervals beyond ``max_gap_ns`` (a pause, a time jump) and
    stamps that go back start over rather than count."""

    WINDOW = 1000  # intervals
    PERCENTILE = 10
    MIN_INTERVALS = 8
    REFRESH = 25  # intervals between re-estimates of the period

    def __init__(self) -> None:
        self._intervals: deque[int] = deque(maxlen=self.WINDOW)
        self._last_ns: int | None = None
        self._period_ns: float | None = None
        self._since_refresh = 0

    @property
    def period_s(self) -> float | None:
        return None if self._period_ns is None else self._period_ns * 1e-9

    def missing(self, stamp_ns: int, max_gap_ns: int) -> int:
        """How many frames are missing just before the one stamped ``stamp_ns``."""
        last = self._last_ns
        if last is not None and stamp_ns == last:
            return 0
        self._last_ns = stamp_ns
        if last is None:
            return 0
        interval = stamp_ns - last
        if interval < 0 or (max_gap_ns > 0 and interval > max_gap_ns):
            self._intervals.clear()
            self._period_ns, self._since_refresh = None, 0
            return 0
        self._intervals.append(interval)
        self._since_refresh += 1
        if len(self._intervals) >= self.MIN_INTERVALS and (
            self._period_ns is None or self._since_refresh >= self.REFRESH
        ):
            self._period_ns = float(np.percentile(self._intervals, self.PERCENTILE))
            self._since_refresh = 0
        if not self._period_ns:
            return 0
        # A quarter period of slack each way: a jittery interval of 1.7 periods is one
        # late frame, not a lost one.
        return max(0, int(interval / self._period_ns + 0.25) - 1)


class OdometryTiming:
    """When odometry samples arrive and how they are stamped, to bound how long a frame
    waits for one: the next sample comes about one period after the last."""

    WINDOW = 32
    # A sample this close to a frame's stamp (as a fraction of the odometry period) is
    # a match: using it instead of interpolating moves the pose by that fraction of one
    # odometry step at most.
    NEAR_FRACTION = 0.1
    MARGIN_S = 0.005

    def __init__(self) -> None:
        self._stamps: deque[int] = deque(maxlen=self.WINDOW)
        self._arrivals: deque[float] = deque(maxlen=self.WINDOW)

    def add(self, stamp_ns: int, arrived: float) -> None:
        self._stamps.append(stamp_ns)
        self._arrivals.append(arrived)

    def clear(self) -> None:
        self._stamps.clear()
        self._arrivals.clear()

    @staticmethod
    def _median_step(values: deque) -> float | None:
        steps = np.diff(np.asarray(values, dtype=np.float64))
        steps = steps[steps > 0]
        return float(np.median(steps)) if len(steps) >= 3 else None

    def has_match(self, stamp_ns: int) -> bool:
        """A sample stamped at the frame's stamp, or within a tenth of a period of it."""
        if stamp_ns in self._stamps:
            return True
        period = self._median_step(self._stamps)
        if period is None:
            return False
        near = self.NEAR_FRACTION * period
        return any(abs(s - stamp_ns) <= near for s in self._stamps)

    def deadline(self, frame_arrived: float, tolerance_s: float) -> float:
        """The time (time.monotonic) after which waiting for odometry is pointless: the
        tolerance after the frame arrived, or two arrival periods after the last sample,
        whichever is earlier (so a stopped odometry costs no frame a wait)."""
        bound = frame_arrived + tolerance_s
        stamp_period = self._median_step(self._stamps)
        arrival_period = self._median_step(self._arrivals)
        if stamp_period is None or arrival_period is None:
            return bound
        # The next sample is stamped one period after the last, so it comes about one
        # period after the last came; odometry that arrives in bursts has the longer
        # arrival period.
        period = max(stamp_period * 1e-9, arrival_period)
        return min(bound, self._arrivals[-1] + 2 * period + self.MARGIN_S)


# The arrow marker's frame (x forward, REP 103) in the camera optical frame.
_Q_OPTICAL_ARROW = geometry.matrix_to_quat(geometry.R_BODY_OPTICAL.T)
QUERY_COLOUR = ColorRGBA(r=0.9, g=0.2, b=0.9, a=1.0)
# Keeps exp(log_var) finite in the covariance however wild an untrained head is.
MAX_LOG_VAR = 30.0


def declare_parameters(node: Node) -> None:
    node.declare_parameters("", [(p.name, p.default, p.descriptor()) for p in PARAMETERS])


class LocalisationCore:
    """Everything the node does, on a given rclpy node (plain or lifecycle):
    :meth:`configure` loads the model and creates outputs, :meth:`activate` subscribes,
    :meth:`deactivate` unsubscribes, :meth:`cleanup` releases it all."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.localizer: Localizer | None = None
        self._subscriptions: list[Any] = []
        self._entities: list[tuple[str, Any]] = []  # ("publisher" | "service" | ..., obj)
        self._lock = threading.Lock()  # the localizer and the path
        self._frames_lock = threading.Lock()  # the pending frames and the counters
        self._frames = threading.Condition(self._frames_lock)  # wakes the inference thread
        self._pending: deque[_Frame] = deque()
        self._worker: threading.Thread | None = None
        self._stopping = False
        self.counters = _Counters()
        self._step_ms: deque[float] = deque(maxlen=STEP_TIME_WINDOW)
        self._publish_ms: deque[float] = deque(maxlen=STEP_TIME_WINDOW)  # a frame's outputs
        self._stamp_gaps = StampGaps()
        self._odom_timing = OdometryTiming()
        # (stamp_ns, arrived) of recent frames that ran without odometry: a sample that
        # comes for one later is counted (odometry_late) and said how late.
        self._missed_odometry: deque[tuple[int, float]] = deque(maxlen=64)
        self._enabled = True
        self._warned: set[str] = set()
        self._warned_at: dict[str, float] = {}

    def _param(self, name: str) -> Any:
        return self.node.get_parameter(name).value

    def _log(self):
        return self.node.get_logger()

    def _warn(self, kind: str, text: str) -> None:
        """A warning throttled per kind of problem (rclpy throttles per call site, which
        would let one kind silence the others)."""
        now = time.monotonic()
        if now - self._warned_at.get(kind, -np.inf) >= self._warn_throttle_s:
            self._warned_at[kind] = now
            self._log().warning(text)

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._log().warning(text)

    # Lifecycle ------------------------------------------------------------------------

    def configure(self) -> None:
        """Load the model and create outputs, services and timers; StartupError names
        what is wrong."""
        node, param = self.node, self._param
        # Configuration mistakes are reported before the (slow) model load.
        self._image_qos = image_qos_profile(param("image_qos"), param("image_qos_depth"))
        if param("image_transport") not in IMAGE_TRANSPORT_CHOICES:
            raise StartupError(
                f"parameter image_transport is '{param('image_transport')}', expected one of "
                f"{', '.join(IMAGE_TRANSPORT_CHOICES)}"
            )
        base_to_camera = self._base_to_camera(param("base_to_camera"))
        self._max_pixels: int = param("max_image_pixels")

        model_dir = param("model_dir") or str(default_model_dir())
        try:
            runtime = StudentRuntime(
                model_dir, providers=param("providers"), intra_op_threads=param("intra_op_threads")
            )
        except ModelError as err:
            raise StartupError(f"cannot load the model: {err}") from err
        spec = runtime.spec
        self._log().info(
            f"model '{spec.name}' (cell {spec.cell}, {spec.image_width}x{spec.image_height}) "
            f"from {spec.directory}; providers: {', '.join(runtime.active_providers)}"
        )
        if runtime.fallback_warning:
            self._log().warning(runtime.fallback_warning)
        self.localizer = Localizer(runtime, LocalizerConfig(base_to_camera=base_to_camera))
        self._apply_parameters([node.get_parameter(p.name) for p in PARAMETERS])
        # A ~/save_memory killed before its rename leaves its temporary file behind.
        stale = remove_stale_temporaries(self._snapshot_path)
        if stale:
            self._log().info(
                f"removed {len(stale)} temporary file(s) of interrupted snapshot saves: "
                + ", ".join(str(p) for p in stale)
            )
        if param("memory_snapshot"):
            try:
                meta = self.localizer.load_snapshot(param("memory_snapshot"))
            except SnapshotError as err:
                raise StartupError(f"parameter memory_snapshot: {err}") from err
            self._log().info(
                f"memory loaded from {param('memory_snapshot')} ({meta['frames']} frames)"
            )

        self._odom_frame: str = param("odom_frame")
        self._base_frame: str = param("base_frame")
        self._camera_frame: str = param("camera_frame")
        self._use_odom = spec.uses_odom and param("use_odom")
        self._use_camera_info: bool = param("use_camera_info")
        self._camera_info: CameraInfo | None = None
        self._adapter: images.FieldOfViewAdapter | None = None
        self._adapter_key: tuple | None = None
        self._last_estimate: Estimate | None = None
        self._memory_norm = float("nan")
        self._last_camera_frame = ""  # of the latest processed frame
        self._supports_query = runtime.supports_query
        if not self._supports_query:
            self._log().info(
                f"model '{spec.name}' has no query graph (query.onnx): ~/query/image is "
                "not subscribed"
            )

        self._input_group = MutuallyExclusiveCallbackGroup()
        self._control_group = MutuallyExclusiveCallbackGroup()
        self._query_group = MutuallyExclusiveCallbackGroup()
        pub = self._publisher
        self._pose_pub = pub(PoseStamped, "~/pose", 10)
        self._odometry_pub = pub(Odometry, "~/odometry", 10)
        self._path_pub = pub(PathMsg, "~/path", 10)
        self._status_pub = pub(DiagnosticStatus, "~/status", 10)
        self._markers_pub = pub(MarkerArray, "~/markers", 10)
        self._diagnostics_pub = pub(DiagnosticArray, "/diagnostics", 10)
        if self._supports_query:
            self._query_pose_pub = pub(PoseWithCovarianceStamped, "~/query/pose", 10)
            self._query_markers_pub = pub(MarkerArray, "~/query/markers", 10)
        control = self._control_group
        self._service(Trigger, "~/reset", self._on_reset, control)
        self._service(Trigger, "~/save_memory", self._on_save_memory, control)
        self._service(Trigger, "~/load_memory", self._on_load_memory, control)
        # Default group: answers even while the control group waits for a slow step.
        self._service(SetBool, "~/enable", self._on_enable, None)
        self._entities.append(
            (
                "subscription",
                node.create_subscription(
                    PoseWithCovarianceStamped,
                    "~/set_pose",
                    self._on_set_pose,
                    10,
                    callback_group=control,
                ),
            )
        )
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        # A steady clock keeps diagnostics flowing while simulated time is paused.
        self._timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics, None, steady)
        self._path_sent, self._path_sent_at = True, -np.inf
        self._timer(PATH_FLUSH_PERIOD_S, self._flush_path, control, steady)

        self._tf_broadcaster = None
        self._tf_buffer = None
        self._extrinsic_from_tf = False
        if tf2_ros is None:
            self._log().warning(
                "tf2_ros is not importable: publishing the topics without TF (no odom -> "
                "base transform; base -> camera from the base_to_camera parameter)"
            )
        else:
            if param("publish_tf"):
                self._tf_broadcaster = tf2_ros.TransformBroadcaster(node)
            self._tf_buffer = tf2_ros.Buffer()
            self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, node)

    def activate(self) -> None:
        node, param = self.node, self._param
        self._stopping = False
        self._worker = threading.Thread(target=self._run_worker, name="inference", daemon=True)
        self._worker.start()
        image_topic = param("image_topic")
        group = self._input_group
        if param("image_transport") == "compressed":
            image_topic = f"{image_topic}/compressed"
            kind = CompressedImage
        else:
            kind = Image
        subs = [
            node.create_subscription(
                kind, image_topic, self._on_image, self._image_qos, callback_group=group
            )
        ]
        notes = [f"images from {node.resolve_topic_name(image_topic)} ({param('image_qos')})"]
        if self._use_odom:
            subs.append(
                node.create_subscription(
                    Odometry,
                    param("odom_topic"),
                    self._on_odom,
                    param("odom_qos_depth"),
                    callback_group=group,
                )
            )
            notes.append(f"odometry from {node.resolve_topic_name(param('odom_topic'))}")
        if self._use_camera_info:
            info_topic = param("camera_info_topic") or images.camera_info_topic(
                param("image_topic")
            )
            subs.append(
                node.create_subscription(
                    CameraInfo,
                    info_topic,
                    self._on_camera_info,
                    qos_profile_sensor_data,
                    callback_group=group,
                )
            )
            notes.append(f"camera_info from {node.resolve_topic_name(info_topic)}")
        if self._supports_query:
            query_topic = "~/query/image" + ("/compressed" if kind is CompressedImage else "")
            subs.append(
                node.create_subscription(
                    kind,
                    query_topic,
                    self._on_query,
                    self._image_qos,
                    callback_group=self._query_group,
                )
            )
            notes.append(f"queries from {node.resolve_topic_name(query_topic)}")
        self._subscriptions = subs
        self._log().info("listening: " + "; ".join(notes))

    def deactivate(self) -> None:
        for sub in self._subscriptions:
            self.node.destroy_subscription(sub)
        self._subscriptions = []
        with self._frames:
            self._pending.clear()
            self._stopping = True
            self._frames.notify()
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    def cleanup(self) -> None:
        self.deactivate()
        for kind, entity in reversed(self._entities):
            getattr(self.node, f"destroy_{kind}")(entity)
        self._entities = []
        self.localizer = None  # releases the onnxruntime session

    def _publisher(self, kind: type, topic: str, depth: int) -> Any:
        publisher = self.node.create_publisher(kind, topic, depth)
        self._entities.append(("publisher", publisher))
        return publisher

    def _service(self, kind: type, name: str, callback: Any, group: Any) -> None:
        service = self.node.create_service(kind, name, callback, callback_group=group)
        self._entities.append(("service", service))

    def _timer(self, period: float, callback: Any, group: Any, clock: Clock) -> None:
        timer = self.node.create_timer(period, callback, callback_group=group, clock=clock)
        self._entities.append(("timer", timer))

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

    # Parameters -----------------------------------------------------------------------

    def on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        if self.localizer is not None:
            self._apply_parameters(parameters)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, parameters: list[Parameter]) -> None:
        config = self.localizer.config
        for p in parameters:
            if p.name in (
                "tracking_frames",
                "uncertain_sigma_m",
                "lost_sigma_m",
                "lost_reset_s",
                "max_gap_s",
                "jitter_warn_s",
                "odom_tolerance_s",
            ):
                setattr(config, p.name, p.value)
            elif p.name == "vision_checks":
                config.health.enabled = p.value
            elif p.name == "publish_path":
                self._publish_path = p.value
            elif p.name == "path_period_s":
                self._path_period_s = p.value
            elif p.name == "path_max_length":
                self._path = deque(getattr(self, "_path", ()), maxlen=p.value)
            elif p.name == "warn_throttle_s":
                self._warn_throttle_s = p.value
            elif p.name == "snapshot_path":
                self._snapshot_path = p.value

    # Inputs (input group: only queue) --------------------------------------------------

    def _on_image(self, msg: Any) -> None:
        stamp = stamp_ns(msg.header.stamp)
        max_gap_ns = int(self.localizer.config.max_gap_s * 1e9)
        with self._frames_lock:
            self.counters.received += 1
            self.counters.missing += self._stamp_gaps.missing(stamp, max_gap_ns)
            if not self._enabled:
                self.counters.paused += 1
                return
        try:  # headers against payload and size; no pixel is decoded here
            if isinstance(msg, Image):
                images.validate_image_msg(msg, self._max_pixels)
            else:
                images.validate_compressed_msg(msg, self._max_pixels)
        except images.FrameError as err:
            self._reject(msg, err)
            return
        frame = _Frame(msg, stamp, time.monotonic())
        with self._frames:
            self._pending.append(frame)
            self._frames.notify()

    def _on_odom(self, msg: Odometry) -> None:
        stamp, now = stamp_ns(msg.header.stamp), time.monotonic()
        self.localizer.add_odometry(stamp, pose_from_msg(msg.pose.pose))
        late = None
        with self._frames:
            self._odom_timing.add(stamp, now)
            tolerance_ns = int(self.localizer.config.odom_tolerance_s * 1e9)
            # The frame it was nearest to: the latest one stamped at or before it.
            for missed in self._missed_odometry:
                if 0 <= stamp - missed[0] <= tolerance_ns and (late is None or missed > late):
                    late = missed
            if late is not None:
                self._missed_odometry.remove(late)
                self.counters.odometry_late += 1
            if self._pending:
                self._frames.notify()
        if late is not None:
            self._warn(
                "odometry_late",
                f"odometry stamped {stamp * 1e-9:.3f} came {now - late[1]:.3f} s after its "
                f"frame (stamped {late[0] * 1e-9:.3f}), which had run without it. Odometry "
                "published just before a large image by the same process is delayed when "
                "the image does not fit Fast DDS shared memory: give the publisher the "
                "profile config/fastdds.xml (README, 'QoS and latency')",
            )

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _reject(self, msg: Any, err: Exception) -> None:
        with self._frames_lock:
            self.counters.rejected += 1
        stamp = msg.header.stamp
        self._warn("frame", f"skipping frame stamped {stamp.sec}.{stamp.nanosec:09d}: {err}")

    # Inference (its own thread) -------------------------------------------------------

    def _next_frame(self) -> tuple[_Frame | None, float | None]:
        """With ``_frames`` held: the frame to run now, if any: the oldest one if it was
        held for odometry, else the newest (the ones before it are dropped: they came
        while a step was running). Otherwise how long to wait: until the held frame's
        odometry tolerance runs out, or (None) until something arrives."""
        while len(self._pending) > 1 and not self._pending[0].held:
            self._pending.popleft()
            self.counters.dropped += 1
        if not self._pending:
            return None, None
        frame = self._pending[0]
        if (
            len(self._pending) == 1
            and self._use_odom
            and not self.localizer.odometry_covers(frame.stamp_ns)
            and not self._odom_timing.has_match(frame.stamp_ns)
        ):
            # Odometry stamped with this image is usually a moment behind it on the wire:
            # wait for it, but no longer than the odometry's rate makes necessary.
            deadline = self._odom_timing.deadline(
                frame.arrived, self.localizer.config.odom_tolerance_s
            )
            now = time.monotonic()
            if now < deadline:
                frame.held = True
                return None, deadline - now + 1e-3
        return self._pending.popleft(), None

    def _run_worker(self) -> None:
        """The inference thread: a plain thread rather than an executor callback, so a
        frame that arrives as a step ends is never missed (an executor drops a wake-up
        whose callback group is busy) and no timer has to poll for held frames."""
        while True:
            with self._frames:
                while not self._stopping:
                    frame, wait = self._next_frame()
                    if frame is not None:
                        break
                    self._frames.wait(timeout=wait)
                else:
                    return
            try:
                with self._lock:
                    self._process(frame)
            except Exception:  # a bug must not stop the node: say so loudly, go on
                with self._frames_lock:
                    self.counters.rejected += 1
                self._log().error(f"frame failed unexpectedly:\n{traceback.format_exc()}")

    def _process(self, frame: _Frame) -> None:
        msg = frame.msg
        try:
            rgb = self._adapt(self._decode(msg), msg.header.frame_id)
            self._resolve_extrinsic(msg.header.frame_id)
            estimate = self.localizer.process(rgb, frame.stamp_ns, self._use_odom)
        except (images.FrameError, StampError) as err:
            self._reject(msg, err)
            return
        with self._frames_lock:
            self.counters.processed += 1
            self._step_ms.append(estimate.step_ms)
            for kind, _ in estimate.events:
                if kind in ("time_backwards", "gap", "lost_reset"):
                    self.counters.resets += 1
                elif kind == "jitter":
                    self.counters.jitter += 1
                elif kind == "no_odometry":
                    self.counters.without_odometry += 1
                    self._missed_odometry.append((frame.stamp_ns, frame.arrived))
            if estimate.vision_fault is not None:
                self.counters.untrusted += 1
        for kind, text in estimate.events:
            self._warn(kind, text)
        if estimate.vision_fault is not None:
            self._warn(
                "vision_fault",
                f"camera not trusted ({estimate.vision_fault.value}): tracking "
                f"{estimate.tracking.name}",
            )
        if estimate.restart == "full":
            self._path.clear()
        self._memory_norm = self.localizer.memory_norm
        self._last_estimate = estimate
        self._last_camera_frame = self._camera_frame or msg.header.frame_id
        started = time.perf_counter()
        self._publish(msg.header.stamp, estimate)
        with self._frames_lock:
            self._publish_ms.append((time.perf_counter() - started) * 1e3)

    def _decode(self, msg: Image | CompressedImage) -> np.ndarray:
        """RGB pixels of a camera or query image; FrameError says why not."""
        if isinstance(msg, CompressedImage):
            return images.compressed_msg_to_rgb(msg, max_pixels=self._max_pixels)
        return images.image_msg_to_rgb(msg, max_pixels=self._max_pixels)

    def _adapt(self, rgb: np.ndarray, frame_id: str) -> np.ndarray:
        """Check camera_info against the image; map it to the model's field of view."""
        info = self._camera_info
        if info is None:
            return rgb
        height, width = rgb.shape[:2]
        for problem in images.check_camera_info(info, width, height, frame_id):
            self._warn_once(problem, f"camera_info: {problem}")
        key = (info.width, info.height, tuple(info.k), width, height)
        if key != self._adapter_key:
            self._adapter_key = key
            self._adapter = None
            runtime = self.localizer.runtime
            if info.width == width and info.height == height and runtime.camera_aware:
                # The network reads the intrinsics (model.json inputs_optional 'camera'):
                # frames of any field of view go in as they are.
                k = [float(v) for v in info.k]
                try:
                    runtime.set_camera((k[0], k[4], k[2], k[5]), width, height)
                except (ValueError, IndexError) as err:
                    self._warn_once(f"camera {err}", f"camera_info not used: {err}")
                else:
                    self._log().info(
                        f"camera_info: the model takes this camera as it is (fx {k[0]:.1f}, "
                        f"fy {k[4]:.1f}, cx {k[2]:.1f}, cy {k[5]:.1f} at {width}x{height})"
                    )
            elif info.width == width and info.height == height:
                w, h, intrinsics = runtime.input_camera
                try:
                    adapter = images.FieldOfViewAdapter.from_camera_info(info, w, h, intrinsics)
                except ValueError as err:  # check_camera_info has said what is wrong
                    self._warn_once(f"adapter {err}", f"camera_info not used: {err}")
                else:
                    if not adapter.is_identity_scale:
                        self._adapter = adapter
                        self._log().warning(f"camera_info: {adapter.describe()}")
        return self._adapter.apply(rgb) if self._adapter is not None else rgb

    def _resolve_extrinsic(self, image_frame_id: str) -> None:
        """Take base -> camera from TF once it has it; until then the parameter."""
        if self._tf_buffer is None or self._extrinsic_from_tf:
            return
        camera_frame = self._camera_frame or image_frame_id
        try:
            t = self._tf_buffer.lookup_transform(
                self._base_frame, camera_frame, rclpy.time.Time()
            ).transform
        except (
            tf2_ros.LookupException,
            tf2_ros.ConnectivityException,
            tf2_ros.ExtrapolationException,
        ) as err:
            self._warn_once(
                "extrinsic",
                f"no {self._base_frame} -> {camera_frame} transform on TF yet ({err}); "
                "using the base_to_camera parameter until there is",
            )
            return
        pose = np.array(
            [
                t.translation.x,
                t.translation.y,
                t.translation.z,
                t.rotation.x,
                t.rotation.y,
                t.rotation.z,
                t.rotation.w,
            ]
        )
        self.localizer.set_base_to_camera(pose)
        self._extrinsic_from_tf = True
        self._log().info(
            f"{self._base_frame} -> {camera_frame} from TF: {np.round(pose, 4).tolist()}"
        )

    # Queries (their own group) ----------------------------------------------------------

    def _on_query(self, msg: Any) -> None:
        """Where was the camera that took this image, seen from the latest frame's camera?
        Decoding and the query graph run outside the lock; only copying the state (and
        what the outputs need) holds it, so a query sees the memory between two frames."""
        try:
            rgb = self._decode(msg)
        except images.FrameError as err:
            self._reject_query(msg, err)
            return
        with self._lock:
            localizer = self.localizer
            if localizer is None:
                return
            runtime = localizer.runtime
            if runtime.frames == 0:
                self._reject_query(
                    msg,
                    "the memory holds no frame yet (none since start-up, ~/reset or a "
                    "memory restart): nothing to answer from",
                )
                return
            state = runtime.state  # copies
            base_pose = None if localizer.last_pose is None else localizer.last_pose.copy()
            base_to_camera = localizer.config.base_to_camera.copy()
            camera_frame = self._last_camera_frame or self._camera_frame or msg.header.frame_id
            adapter, adapter_key = self._adapter, self._adapter_key
        # The camera's field-of-view mapping applies to query images of its size.
        if adapter is not None and adapter_key[3:] == (rgb.shape[1], rgb.shape[0]):
            rgb = adapter.apply(rgb)
        try:
            result = runtime.query(rgb, state=state)
        except ValueError as err:
            self._reject_query(msg, err)
            return
        with self._frames_lock:
            self.counters.queries += 1
        header = Header(stamp=msg.header.stamp, frame_id=camera_frame)
        answer = PoseWithCovarianceStamped(header=header)
        answer.pose.pose = pose_to_msg(result.pose)
        variance = np.exp(np.minimum(result.log_var, MAX_LOG_VAR))
        answer.pose.covariance = np.diag(variance).reshape(36).tolist()
        self._query_pose_pub.publish(answer)
        if base_pose is not None:
            camera = geometry.compose(geometry.compose(base_pose, base_to_camera), result.pose)
            self._query_markers_pub.publish(self._query_markers(msg.header.stamp, camera))

    def _query_markers(self, stamp: Any, camera_in_odom: np.ndarray) -> MarkerArray:
        """An arrow along the query camera's viewing direction, in ``odom_frame``."""
        arrow = Marker(
            header=Header(stamp=stamp, frame_id=self._odom_frame),
            ns="query",
            id=0,
            type=Marker.ARROW,
            action=Marker.ADD,
            color=QUERY_COLOUR,
        )
        rotate = np.concatenate([np.zeros(3), _Q_OPTICAL_ARROW])
        arrow.pose = pose_to_msg(geometry.compose(camera_in_odom, rotate))
        arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.4, 0.05, 0.05
        return MarkerArray(markers=[arrow])

    def _reject_query(self, msg: Any, reason: Any) -> None:
        with self._frames_lock:
            self.counters.queries_rejected += 1
        stamp = msg.header.stamp
        self._warn(
            "query", f"query image stamped {stamp.sec}.{stamp.nanosec:09d} rejected: {reason}"
        )

    # Outputs --------------------------------------------------------------------------

    def _publish(self, stamp: Any, estimate: Estimate) -> None:
        header = Header(stamp=stamp, frame_id=self._odom_frame)
        pose_msg = pose_to_msg(estimate.pose)
        pose_stamped = PoseStamped(header=header, pose=pose_msg)
        self._pose_pub.publish(pose_stamped)

        odometry = Odometry(header=header, child_frame_id=self._base_frame)
        odometry.pose.pose = pose_msg
        odometry.pose.covariance = estimate.pose_covariance
        if estimate.twist is not None:
            odometry.twist.twist = twist_to_msg(estimate.twist)
        odometry.twist.covariance = estimate.twist_covariance
        self._odometry_pub.publish(odometry)

        if self._tf_broadcaster is not None:
            p = estimate.pose
            self._tf_broadcaster.sendTransform(
                TransformStamped(
                    header=header,
                    child_frame_id=self._base_frame,
                    transform=Transform(
                        translation=Vector3(x=p[0], y=p[1], z=p[2]), rotation=pose_msg.orientation
                    ),
                )
            )

        self._path.append(pose_stamped)
        self._path_sent = False
        self._status_pub.publish(self._status(estimate))
        if self._markers_pub.get_subscription_count() > 0:
            self._markers_pub.publish(self._markers(header, estimate))
        # After this frame's outputs, so its latency never pays for the path.
        self._publish_path_if_due()

    def _publish_path_if_due(self) -> None:
        """Send ~/path at most every ``path_period_s``, and only when someone listens: it
        re-sends up to path_max_length poses, the costly part of the outputs (2,000 poses
        took 46 ms to serialise here, so one per frame capped the frame rate). With the
        localizer lock held."""
        now = time.monotonic()
        if (
            self._path_sent
            or not self._path
            or not self._publish_path
            or now - self._path_sent_at < self._path_period_s
            or self._path_pub.get_subscription_count() == 0
        ):
            return
        latest = self._path[-1].header
        self._path_pub.publish(PathMsg(header=latest, poses=list(self._path)))
        self._path_sent, self._path_sent_at = True, now

    def _flush_path(self) -> None:
        """The steady timer's share: the last poses of a run that stopped still go out.
        It never waits for the lock: the executor is single-threaded, and a step in
        progress publishes the path itself when it ends."""
        if self._path_sent or not self._lock.acquire(blocking=False):
            return
        try:
            if self.localizer is not None:
                self._publish_path_if_due()
        finally:
            self._lock.release()

    def _status(self, estimate: Estimate) -> DiagnosticStatus:
        values = {
            "tracking": estimate.tracking.name,
            "sigma_m": f"{estimate.sigma_m:.4g}",
            "odometry_used": str(estimate.odometry_used).lower(),
            "step_ms": f"{estimate.step_ms:.2f}",
            "frames": str(self.localizer.runtime.frames),
        }
        return DiagnosticStatus(
            level=LEVELS[estimate.tracking],
            name=f"{self.node.get_name()}: tracking",
            message=estimate.tracking.name,
            hardware_id=self.localizer.runtime.spec.name,
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )

    def _markers(self, header: Header, estimate: Estimate) -> MarkerArray:
        text = Marker(
            header=header,
            ns="tracking",
            id=0,
            type=Marker.TEXT_VIEW_FACING,
            action=Marker.ADD,
            text=f"{estimate.tracking.name}  σ={estimate.sigma_m * 1e3:.1f} mm",
            color=COLOURS[estimate.tracking],
        )
        text.pose = pose_to_msg(estimate.pose)
        text.pose.position.z += 0.8
        text.scale.z = 0.25
        return MarkerArray(markers=[text])

    def _publish_diagnostics(self) -> None:
        localizer = self.localizer
        if localizer is None:
            return
        runtime = localizer.runtime
        with self._frames_lock:
            counters = dict(vars(self.counters))
            times = list(self._step_ms)
            publish_times = list(self._publish_ms)
            period = self._stamp_gaps.period_s
        tracking = self._last_estimate.tracking if self._last_estimate else TrackingState.OK
        status = DiagnosticStatus(
            name=f"{self.node.get_name()}: runtime", hardware_id=runtime.spec.name
        )
        level, message = LEVELS[tracking], f"tracking {tracking.name}"
        if not self._enabled:
            level, message = DiagnosticStatus.WARN, "paused (~/enable false)"
        if runtime.fallback_warning:
            level, message = max(level, DiagnosticStatus.WARN), runtime.fallback_warning
        status.level, status.message = level, message
        p50, p99 = np.percentile(times, [50, 99]) if times else (np.nan, np.nan)
        values = {
            "model": runtime.spec.name,
            "cell": runtime.spec.cell,
            "provider": runtime.active_providers[0],
            "tracking": tracking.name,
            "vision_fault": (
                self._last_estimate.vision_fault.value
                if self._last_estimate and self._last_estimate.vision_fault
                else "none"
            ),
            "enabled": str(self._enabled).lower(),
            **{f"frames_{k}": v for k, v in counters.items() if k not in _NOT_FRAME_COUNTERS},
            "odometry_late": counters["odometry_late"],
            "camera_period_s": f"{period:.4g}" if period else "unknown",
            "memory_resets": counters["resets"],
            "jitter_warnings": counters["jitter"],
            "step_ms_p50": f"{p50:.2f}",
            "step_ms_p99": f"{p99:.2f}",
            **{
                f"publish_ms_p{q}": f"{v:.2f}"
                for q, v in zip(
                    (50, 99),
                    np.percentile(publish_times, [50, 99]) if publish_times else (np.nan,) * 2,
                    strict=True,
                )
            },
            "memory_norm": f"{self._memory_norm:.4g}",
            "extrinsic": "tf" if self._extrinsic_from_tf else "parameter",
        }
        if self._supports_query:
            values["queries"] = counters["queries"]
            values["queries_rejected"] = counters["queries_rejected"]
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        self._diagnostics_pub.publish(
            DiagnosticArray(
                header=Header(stamp=self.node.get_clock().now().to_msg()), status=[status]
            )
        )

    # Services -------------------------------------------------------------------------

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            frames = self.localizer.runtime.frames
            with self._frames_lock:
                self.counters.dropped += len(self._pending)
                self._pending.clear()
            self.localizer.reset()
            self._path.clear()
        response.success = True
        response.message = f"memory, pose and path reset after {frames} frames"
        self._log().info(response.message)
        return response

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        with self._frames_lock:
            self._enabled = request.data
            if not request.data:
                self.counters.dropped += len(self._pending)
                self._pending.clear()
        response.success = True
        response.message = "processing frames" if request.data else "paused; the memory is kept"
        self._log().info(response.message)
        return response

    def _on_set_pose(self, msg: PoseWithCovarianceStamped) -> None:
        if msg.header.frame_id not in ("", self._odom_frame):
            self._warn(
                "set_pose",
                f"~/set_pose in frame '{msg.header.frame_id}' ignored: it must be in "
                f"'{self._odom_frame}'",
            )
            return
        with self._lock:
            self.localizer.set_pose(pose_from_msg(msg.pose.pose), np.array(msg.pose.covariance))
        self._log().info(f"pose set to {np.round(pose_from_msg(msg.pose.pose), 4).tolist()}")

    def _on_save_memory(
        self, request: Trigger.Request, response: Trigger.Response
    ) -> Trigger.Response:
        try:
            with self._lock:
                path = self.localizer.save_snapshot(self._snapshot_path)
            response.success, response.message = True, f"memory saved to {path}"
        except SnapshotError as err:
            response.success, response.message = False, str(err)
        self._log().info(response.message)
        return response

    def _on_load_memory(
        self, request: Trigger.Request, response: Trigger.Response
    ) -> Trigger.Response:
        try:
            with self._lock:
                meta = self.localizer.load_snapshot(self._snapshot_path)
            response.success = True
            response.message = f"memory loaded from {Path(self._snapshot_path).expanduser()} ({meta['frames']} frames)"
        except SnapshotError as err:
            response.success, response.message = False, str(err)
        if response.success:
            self._log().info(response.message)
        else:
            self._log().error(response.message)
        return response


class LatentMemoryNode(Node):
    """The node: configured and active from construction."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        declare_parameters(self)
        self.core = LocalisationCore(self)
        self.core.configure()
        self.add_on_set_parameters_callback(self.core.on_set_parameters)
        self.core.activate()

    def destroy_node(self) -> None:
        self.core.deactivate()  # stops the inference thread before the publishers go
        super().destroy_node()


class LatentMemoryLifecycleNode(LifecycleNode):
    """The managed variant: configure loads the model, activate subscribes, deactivate
    unsubscribes (the memory is kept), cleanup releases the session."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(LIFECYCLE_NODE_NAME, **kwargs)
        declare_parameters(self)
        self.core = LocalisationCore(self)
        self.add_on_set_parameters_callback(self.core.on_set_parameters)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.core.configure()
        except StartupError as err:
            self.get_logger().error(f"cannot configure: {err}")
            self.core.cleanup()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.activate()
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.deactivate()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.cleanup()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.cleanup()
        return TransitionCallbackReturn.SUCCESS


def spin(node: Node) -> None:
    # One executor thread for messages and services, beside the inference thread: measured
    # with `make demo`, rclpy's MultiThreadedExecutor doubled the p99 round trip (59 ms
    # against 26 ms here) for nothing the inference thread does not already give.
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    finally:
        executor.shutdown()


def main(args: list[str] | None = None, node_class: type[Node] = LatentMemoryNode) -> int:
    """Entry point of ``ros2 run latent_memory_ros latent_memory_node``; returns the exit code."""
    rclpy.init(args=args)
    node = None
    try:
        node = node_class()
        spin(node)
    except (StartupError, ParameterException) as err:
        get_logger(node_class.__name__).fatal(f"cannot start: {err}")
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def lifecycle_main(args: list[str] | None = None) -> int:
    """Entry point of ``latent_memory_lifecycle_node``: starts unconfigured."""
    return main(args, LatentMemoryLifecycleNode)


if __name__ == "__main__":
    sys.exit(lifecycle_main() if "--lifecycle" in sys.argv else main())
