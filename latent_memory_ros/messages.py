"""The node's output messages, built from a :class:`~latent_memory_ros.localizer.Estimate`
(and a query's answer, and the runtime's diagnostics), and published by
:class:`EstimatePublisher`. Message packages only: no rclpy, so they can be built and
checked without DDS.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from geometry_msgs.msg import Pose, PoseStamped, PoseWithCovarianceStamped, TransformStamped
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from latent_memory_ros import geometry
from latent_memory_ros.conversions import write_pose, write_transform, write_twist
from latent_memory_ros.health import VisionFault
from latent_memory_ros.localizer import Estimate, TrackingState
from latent_memory_ros.runtime import QueryResult
from latent_memory_ros.scheduling import NOT_FRAME_COUNTERS, StatsSnapshot

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
QUERY_COLOUR = ColorRGBA(r=0.9, g=0.2, b=0.9, a=1.0)
# The arrow marker's frame (x forward, REP 103) in the camera optical frame:
# geometry.matrix_to_quat(geometry.R_BODY_OPTICAL.T), written out so that importing the
# node does not load scipy (test_geometry checks it).
Q_OPTICAL_ARROW = np.array([0.5, -0.5, 0.5, 0.5])
# Keeps exp(log_var) finite in the covariance however wild an untrained head is.
MAX_LOG_VAR = 30.0
# The variance (m^2, rad^2) of a query answer about a place the memory does not hold.
UNSEEN_VARIANCE = 1e6
TRACKING_TEXT_HEIGHT_M = 0.8  # the tracking marker floats this far above the base


def pose_to_msg(pose: np.ndarray) -> Pose:
    return write_pose(Pose(), pose)


def odometry_msg(header: Header, child_frame: str, pose: Pose, estimate: Estimate) -> Odometry:
    """nav_msgs/Odometry: the pose and its covariance, the twist in the base frame."""
    odometry = Odometry(header=header, child_frame_id=child_frame)
    odometry.pose.pose = pose
    odometry.pose.covariance = estimate.pose_covariance
    if estimate.twist is not None:
        write_twist(odometry.twist.twist, estimate.twist)
    odometry.twist.covariance = estimate.twist_covariance
    return odometry


def transform_msg(header: Header, child_frame: str, estimate: Estimate) -> TransformStamped:
    """odom -> base on TF."""
    transform = TransformStamped(header=header, child_frame_id=child_frame)
    write_transform(transform.transform, estimate.pose)
    return transform


def tracking_status(
    estimate: Estimate, node_name: str, frames: int, model_name: str
) -> DiagnosticStatus:
    """~/status: the tracking state of one frame."""
    values = {
        "tracking": estimate.tracking.name,
        "sigma_m": f"{estimate.sigma_m:.4g}",
        "odometry_used": str(estimate.odometry_used).lower(),
        "step_ms": f"{estimate.step_ms:.2f}",
        "frames": str(frames),
    }
    return DiagnosticStatus(
        level=LEVELS[estimate.tracking],
        name=f"{node_name}: tracking",
        message=estimate.tracking.name,
        hardware_id=model_name,
        values=[KeyValue(key=k, value=v) for k, v in values.items()],
    )


def tracking_markers(header: Header, estimate: Estimate) -> MarkerArray:
    """~/markers: the tracking state as text above the base, in its colour."""
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
    text.pose.position.z += TRACKING_TEXT_HEIGHT_M
    text.scale.z = 0.25
    return MarkerArray(markers=[text])


def query_answer(header: Header, result: QueryResult) -> PoseWithCovarianceStamped:
    """~/query/pose: the query camera in the latest frame's camera, with its variance.
    A place the model says it has not seen (``seen`` below one half) gets the variance
    :data:`UNSEEN_VARIANCE` on every axis: an answer that carries no information."""
    answer = PoseWithCovarianceStamped(header=header)
    answer.pose.pose = pose_to_msg(result.pose)
    variance = np.exp(np.minimum(result.log_var, MAX_LOG_VAR))
    if result.seen is not None and result.seen < 0.5:
        variance = np.full(6, UNSEEN_VARIANCE)
    answer.pose.covariance = np.diag(variance).reshape(36).tolist()
    return answer


def query_markers(header: Header, camera_in_odom: np.ndarray) -> MarkerArray:
    """~/query/markers: an arrow along the query camera's viewing direction; ``header``
    names ``odom_frame``."""
    arrow = Marker(
        header=header, ns="query", id=0, type=Marker.ARROW, action=Marker.ADD, color=QUERY_COLOUR
    )
    rotate = np.concatenate([np.zeros(3), Q_OPTICAL_ARROW])
    arrow.pose = pose_to_msg(geometry.compose(camera_in_odom, rotate))
    arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.4, 0.05, 0.05
    return MarkerArray(markers=[arrow])


def _percentiles(values: list[float]) -> tuple[float, float]:
    return tuple(np.percentile(values, [50, 99])) if values else (np.nan, np.nan)


def runtime_diagnostics(
    node_name: str,
    runtime: Any,
    stats: StatsSnapshot,
    tracking: TrackingState,
    vision_fault: VisionFault | None,
    enabled: bool,
    memory_norm: float,
    extrinsic_from_tf: bool,
) -> DiagnosticStatus:
    """The node's entry in /diagnostics: model, provider, tracking, counters, timings."""
    counters = stats.counters
    status = DiagnosticStatus(name=f"{node_name}: runtime", hardware_id=runtime.spec.name)
    level, message = LEVELS[tracking], f"tracking {tracking.name}"
    if not enabled:
        level, message = DiagnosticStatus.WARN, "paused (~/enable false)"
    if runtime.fallback_warning:
        level, message = max(level, DiagnosticStatus.WARN), runtime.fallback_warning
    status.level, status.message = level, message
    p50, p99 = _percentiles(stats.step_ms)
    period = stats.camera_period_s
    values = {
        "model": runtime.spec.name,
        "cell": runtime.spec.cell,
        "provider": runtime.active_providers[0],
        "tracking": tracking.name,
        "vision_fault": vision_fault.value if vision_fault else "none",
        "enabled": str(enabled).lower(),
        **{f"frames_{k}": v for k, v in counters.items() if k not in NOT_FRAME_COUNTERS},
        "odometry_late": counters["odometry_late"],
        "odometry_rejected": counters["odometry_rejected"],
        "camera_period_s": f"{period:.4g}" if period else "unknown",
        "memory_resets": counters["resets"],
        "jitter_warnings": counters["jitter"],
        "step_ms_p50": f"{p50:.2f}",
        "step_ms_p99": f"{p99:.2f}",
        **{
            f"publish_ms_p{q}": f"{v:.2f}"
            for q, v in zip((50, 99), _percentiles(stats.publish_ms), strict=True)
        },
        "memory_norm": f"{memory_norm:.4g}",
        "extrinsic": "tf" if extrinsic_from_tf else "parameter",
    }
    if runtime.supports_query:
        values["queries"] = counters["queries"]
        values["queries_rejected"] = counters["queries_rejected"]
    status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
    return status


class PathBuffer:
    """The poses ~/path carries (the latest ``max_length``) and when it is next due: at
    most every ``period_s``, and only with a pose not sent yet."""

    def __init__(self, max_length: int, period_s: float, enabled: bool) -> None:
        self.poses: deque[PoseStamped] = deque(maxlen=max_length)
        self.period_s = period_s
        self.enabled = enabled
        self.sent = True  # nothing new since the last ~/path
        self.sent_at = -np.inf  # time.monotonic()

    def resize(self, max_length: int) -> None:
        self.poses = deque(self.poses, maxlen=max_length)

    def add(self, pose: PoseStamped) -> None:
        self.poses.append(pose)
        self.sent = False

    def clear(self) -> None:
        self.poses.clear()

    def due(self, now: float) -> bool:
        return (
            not self.sent
            and bool(self.poses)
            and self.enabled
            and now - self.sent_at >= self.period_s
        )

    def take(self, now: float) -> PathMsg:
        """The ~/path message, marked sent at ``now``."""
        self.sent, self.sent_at = True, now
        return PathMsg(header=self.poses[-1].header, poses=list(self.poses))


class EstimatePublisher:
    """A frame's outputs on the publishers (and TF broadcaster) it is given: ~/pose,
    ~/odometry, odom -> base on TF, ~/status, ~/markers (when someone listens) and
    ~/path (when due)."""

    def __init__(
        self,
        publishers: dict[str, Any],
        tf_broadcaster: Any | None,
        odom_frame: str,
        base_frame: str,
        path: PathBuffer,
    ) -> None:
        self._pub = publishers
        self._tf_broadcaster = tf_broadcaster
        self.odom_frame, self.base_frame = odom_frame, base_frame
        self.path = path

    def publish(self, stamp: Any, estimate: Estimate, status: DiagnosticStatus) -> None:
        header = Header(stamp=stamp, frame_id=self.odom_frame)
        pose = pose_to_msg(estimate.pose)
        pose_stamped = PoseStamped(header=header, pose=pose)
        self._pub["pose"].publish(pose_stamped)
        self._pub["odometry"].publish(odometry_msg(header, self.base_frame, pose, estimate))
        if self._tf_broadcaster is not None:
            self._tf_broadcaster.sendTransform(transform_msg(header, self.base_frame, estimate))
        self.path.add(pose_stamped)
        self._pub["status"].publish(status)
        if self._pub["markers"].get_subscription_count() > 0:
            self._pub["markers"].publish(tracking_markers(header, estimate))
        # After this frame's outputs, so its latency never pays for the path.
        self.publish_path_if_due()

    def publish_path_if_due(self) -> None:
        """Send ~/path at most every ``path_period_s``, and only when someone listens: it
        re-sends up to path_max_length poses, the costly part of the outputs (2,000 poses
        took 46 ms to serialise here, so one per frame capped the frame rate). With the
        localizer lock held."""
        now = time.monotonic()
        if self.path.due(now) and self._pub["path"].get_subscription_count() > 0:
            self._pub["path"].publish(self.path.take(now))

    def publish_query(
        self, header: Header, result: QueryResult, camera_in_odom: np.ndarray | None
    ) -> None:
        self._pub["query_pose"].publish(query_answer(header, result))
        if camera_in_odom is not None:
            marker_header = Header(stamp=header.stamp, frame_id=self.odom_frame)
            self._pub["query_markers"].publish(query_markers(marker_header, camera_in_odom))
