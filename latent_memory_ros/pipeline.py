"""What the node does with its inputs, without rclpy: frames through the scheduler and
the localizer to the outputs, odometry, camera_info, queries, and the memory operations
its services call. :mod:`latent_memory_ros.node` creates the subscriptions, services and
publishers and hands their messages here.

Threads: inference runs on the scheduler's thread. Image and odometry callbacks only
queue and wake it, so the executor keeps answering services, parameters and odometry
while a frame is being processed. Operations that change the memory, and queries, wait
for the step in progress (``lock``), so they see the memory between two frames, never
half of one; a query runs its graph outside the lock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from latent_memory_ros import geometry, images, messages
from latent_memory_ros.camera_mapping import CameraInfoMapping
from latent_memory_ros.conversions import format_stamp, pose_to_array, stamp_to_ns
from latent_memory_ros.localizer import (
    Estimate,
    Localizer,
    Restart,
    SnapshotError,
    StampError,
    TrackingState,
)
from latent_memory_ros.scheduling import Frame, FrameScheduler, FrameStats, OdometryTiming

__all__ = ["LocalisationPipeline", "PipelineSettings", "Warnings"]


class Warnings:
    """Warnings throttled per kind of problem (rclpy throttles per call site, which would
    let one kind silence the others), and warnings given once per key."""

    def __init__(self, log: Any, throttle_s: float) -> None:
        self._log = log
        self.throttle_s = throttle_s
        self._warned: set[str] = set()
        self._warned_at: dict[str, float] = {}

    def warn(self, kind: str, text: str) -> None:
        now = time.monotonic()
        if now - self._warned_at.get(kind, -np.inf) >= self.throttle_s:
            self._warned_at[kind] = now
            self._log.warning(text)

    def once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._log.warning(text)


@dataclass
class PipelineSettings:
    """The read-only parameters the pipeline uses (read once, at configure)."""

    use_odom: bool
    max_pixels: int
    camera_frame: str  # empty: the image's frame_id
    snapshot_path: str  # writable: ~/save_memory and ~/load_memory read it when called


class LocalisationPipeline:
    """The localizer between the node's input messages and its outputs."""

    def __init__(
        self,
        localizer: Localizer,
        settings: PipelineSettings,
        outputs: messages.EstimatePublisher,
        mount: Any,  # resolve(image_frame_id): base -> camera from TF once it has it
        node_name: str,
        log: Any,
        warnings: Warnings,
    ) -> None:
        self.localizer = localizer
        self.settings = settings
        self.outputs = outputs
        self.mount = mount
        self.node_name = node_name
        self._log, self.warnings = log, warnings
        self.lock = threading.Lock()  # the localizer and the path
        self.stats = FrameStats()
        self.odometry_timing = OdometryTiming()
        self.camera_info = CameraInfoMapping(localizer.runtime, log, warnings.once)
        self.scheduler = FrameScheduler(
            self._run, self._hold_until, lambda n: self.stats.count("dropped", n), self._failed
        )
        self.last_estimate: Estimate | None = None
        self.memory_norm = float("nan")
        self.last_camera_frame = ""  # of the latest processed frame

    # Inputs (the executor's thread: only queue) -----------------------------------------

    def on_image(self, msg: Image | CompressedImage) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        self.stats.received(stamp, int(self.localizer.config.max_gap_s * 1e9))
        if not self.scheduler.enabled:
            self.stats.count("paused")
            return
        try:  # headers against payload and size; no pixel is decoded here
            if isinstance(msg, Image):
                images.validate_image_msg(msg, self.settings.max_pixels)
            else:
                images.validate_compressed_msg(msg, self.settings.max_pixels)
        except images.FrameError as err:
            self._reject(msg, err)
            return
        self.scheduler.submit(Frame(msg, stamp, time.monotonic()))

    def on_odom(self, msg: Any) -> None:
        stamp, now = stamp_to_ns(msg.header.stamp), time.monotonic()
        refused = self.localizer.add_odometry(stamp, pose_to_array(msg.pose.pose))
        if refused is not None:
            self.stats.count("odometry_rejected")
            self.warnings.warn(
                "odometry", f"odometry stamped {stamp * 1e-9:.3f} refused: {refused}"
            )
            return
        self.odometry_timing.add(stamp, now)
        late = self.stats.odometry_arrived(stamp, int(self.localizer.config.odom_tolerance_s * 1e9))
        self.scheduler.wake()
        if late is not None:
            self.warnings.warn(
                "odometry_late",
                f"odometry stamped {stamp * 1e-9:.3f} came {now - late[1]:.3f} s after its "
                f"frame (stamped {late[0] * 1e-9:.3f}), which had run without it. Odometry "
                "published just before a large image by the same process is delayed when "
                "the image does not fit Fast DDS shared memory: give the publisher the "
                "profile config/fastdds.xml (README, 'QoS and latency')",
            )

    def on_camera_info(self, msg: CameraInfo) -> None:
        self.camera_info.info = msg

    def _reject(self, msg: Any, err: Any) -> None:
        self.stats.count("rejected")
        self.warnings.warn(
            "frame", f"skipping frame stamped {format_stamp(msg.header.stamp)}: {err}"
        )

    # Inference (the scheduler's thread) --------------------------------------------------

    def _hold_until(self, frame: Frame) -> float | None:
        """Odometry stamped with this image is usually a moment behind it on the wire:
        wait for it, but no longer than the odometry's rate makes necessary."""
        if (
            not self.settings.use_odom
            or self.localizer.odometry_covers(frame.stamp_ns)
            or self.odometry_timing.has_match(frame.stamp_ns)
        ):
            return None
        return self.odometry_timing.deadline(frame.arrived, self.localizer.config.odom_tolerance_s)

    def _failed(self, frame: Frame, trace: str) -> None:
        self.stats.count("rejected")
        self._log.error(f"frame failed unexpectedly:\n{trace}")

    def _run(self, frame: Frame) -> None:
        with self.lock:
            self._process(frame)

    def _process(self, frame: Frame) -> None:
        msg = frame.msg
        try:
            rgb = self.camera_info.apply(self.decode(msg), msg.header.frame_id)
            self.mount.resolve(msg.header.frame_id)
            estimate = self.localizer.process(rgb, frame.stamp_ns, self.settings.use_odom)
        except (images.FrameError, StampError) as err:
            self._reject(msg, err)
            return
        fault = estimate.vision_fault
        kinds = [kind for kind, _ in estimate.events]
        self.stats.processed(frame, estimate.step_ms, kinds, untrusted=fault is not None)
        for kind, text in estimate.events:
            self.warnings.warn(kind, text)
        if fault is not None:
            self.warnings.warn(
                "vision_fault",
                f"camera not trusted ({fault.value}): tracking {estimate.tracking.name}",
            )
        if estimate.restart is Restart.FULL:
            self.outputs.path.clear()
        self.memory_norm = self.localizer.memory_norm
        self.last_estimate = estimate
        self.last_camera_frame = self.settings.camera_frame or msg.header.frame_id
        started = time.perf_counter()
        runtime = self.localizer.runtime
        status = messages.tracking_status(
            estimate, self.node_name, runtime.frames, runtime.spec.name
        )
        self.outputs.publish(msg.header.stamp, estimate, status)
        self.stats.published((time.perf_counter() - started) * 1e3)

    def decode(self, msg: Image | CompressedImage) -> np.ndarray:
        """RGB pixels of a camera or query image; FrameError says why not."""
        return images.decode_frame(msg, self.settings.max_pixels)

    def flush_path(self) -> None:
        """The steady timer's share: the last poses of a run that stopped still go out.
        It never waits for the lock: the executor is single-threaded, and a step in
        progress publishes the path itself when it ends."""
        if self.outputs.path.sent or not self.lock.acquire(blocking=False):
            return
        try:
            self.outputs.publish_path_if_due()
        finally:
            self.lock.release()

    # Queries (their own callback group) -------------------------------------------------

    def on_query(self, msg: Image | CompressedImage) -> None:
        """Where was the camera that took this image, seen from the latest frame's camera?
        Decoding and the query graph run outside the lock; only copying the state (and
        what the outputs need) holds it, so a query sees the memory between two frames."""
        try:
            rgb = self.decode(msg)
        except images.FrameError as err:
            self._reject_query(msg, err)
            return
        with self.lock:
            localizer = self.localizer
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
            camera_frame = (
                self.last_camera_frame or self.settings.camera_frame or msg.header.frame_id
            )
            # The camera's field-of-view mapping applies to query images of its size.
            adapt = self.camera_info.for_queries()
        try:
            result = runtime.query(adapt(rgb), state=state)
        except ValueError as err:
            self._reject_query(msg, err)
            return
        self.stats.count("queries")
        camera = None
        if base_pose is not None:
            camera = geometry.compose(geometry.compose(base_pose, base_to_camera), result.pose)
        self.outputs.publish_query(
            Header(stamp=msg.header.stamp, frame_id=camera_frame), result, camera
        )

    def _reject_query(self, msg: Any, reason: Any) -> None:
        self.stats.count("queries_rejected")
        self.warnings.warn(
            "query", f"query image stamped {format_stamp(msg.header.stamp)} rejected: {reason}"
        )

    # What the services do -----------------------------------------------------------------

    def reset(self) -> str:
        with self.lock:
            frames = self.localizer.runtime.frames
            self.scheduler.clear()
            self.localizer.reset()
            self.outputs.path.clear()
        return f"memory, pose and path reset after {frames} frames"

    def set_enabled(self, enabled: bool) -> str:
        self.scheduler.set_enabled(enabled)
        return "processing frames" if enabled else "paused; the memory is kept"

    def set_pose(self, frame_id: str, pose: np.ndarray, covariance: np.ndarray) -> None:
        """Re-anchor at ``pose`` (with ``covariance``), given in ``frame_id``."""
        odom_frame = self.outputs.odom_frame
        if frame_id not in ("", odom_frame):
            self.warnings.warn(
                "set_pose",
                f"~/set_pose in frame '{frame_id}' ignored: it must be in '{odom_frame}'",
            )
            return
        with self.lock:
            self.localizer.set_pose(pose, covariance)
        self._log.info(f"pose set to {np.round(pose, 4).tolist()}")

    def save_memory(self) -> tuple[bool, str]:
        try:
            with self.lock:
                path = self.localizer.save_snapshot(self.settings.snapshot_path)
        except SnapshotError as err:
            return False, str(err)
        return True, f"memory saved to {path}"

    def load_memory(self) -> tuple[bool, str]:
        snapshot = self.settings.snapshot_path
        try:
            with self.lock:
                meta = self.localizer.load_snapshot(snapshot)
        except SnapshotError as err:
            return False, str(err)
        return True, f"memory loaded from {Path(snapshot).expanduser()} ({meta['frames']} frames)"

    # Diagnostics --------------------------------------------------------------------------

    def diagnostics(self) -> Any:
        """The node's /diagnostics status (a diagnostic_msgs/DiagnosticStatus)."""
        estimate = self.last_estimate
        return messages.runtime_diagnostics(
            self.node_name,
            self.localizer.runtime,
            self.stats.snapshot(),
            estimate.tracking if estimate else TrackingState.OK,
            estimate.vision_fault if estimate else None,
            self.scheduler.enabled,
            self.memory_norm,
            self.mount.from_tf,
        )
