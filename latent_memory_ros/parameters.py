"""The node's parameters: one list, the single source for their declaration (with
descriptors), config/latent_memory.yaml (a test checks it) and the launch arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from latent_memory_ros.defaults import DEFAULT_MAX_PIXELS, DEFAULT_PROVIDERS

IMAGE_QOS_CHOICES = ("sensor_data", "reliable", "best_effort")
IMAGE_TRANSPORT_CHOICES = ("raw", "compressed")


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter: the single source for its declaration, the shipped YAML and
    the launch arguments."""

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


def _float(name: str, default: float, description: str, upper: float, **kw: Any) -> ParameterSpec:
    return ParameterSpec(name, default, description, float_range=(0.0, upper), **kw)


PARAMETERS: tuple[ParameterSpec, ...] = (
    # The model and where it runs.
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
        "skipped and CPU is the last resort (a GPU request that falls back is warned about "
        "and reported on /diagnostics).",
    ),
    ParameterSpec(
        "intra_op_threads",
        1,
        "CPU threads of one inference (0: onnxruntime's default, one per core). One is "
        "fastest for the shipped model on 2 shared cores (docs/benchmarks.md, 'Latency').",
        int_range=(0, 256),
    ),
    # Inputs.
    ParameterSpec("image_topic", "/camera/image_raw", "Camera image topic (sensor_msgs/Image)."),
    ParameterSpec(
        "image_transport",
        "raw",
        "raw: sensor_msgs/Image on image_topic; compressed: sensor_msgs/CompressedImage "
        "(jpeg, png) on image_topic/compressed, as image_transport names it.",
        choices=IMAGE_TRANSPORT_CHOICES,
    ),
    ParameterSpec(
        "image_qos",
        "sensor_data",
        "QoS of the image subscription. sensor_data / best_effort suit a live camera; "
        "reliable matches reliable-only publishers (e.g. ros2 bag play defaults).",
        choices=IMAGE_QOS_CHOICES,
    ),
    ParameterSpec(
        "image_qos_depth", 1, "Queue depth of the image subscription.", int_range=(1, 1000)
    ),
    ParameterSpec(
        "max_image_pixels",
        DEFAULT_MAX_PIXELS,
        "Largest width x height of an image (raw, or as a compressed one's PNG / JPEG "
        "header declares it); larger ones are refused before decoding and counted as "
        "frames_rejected: a small PNG can declare gigabytes of pixels. The default, 16.8 "
        "MPixel (4096x4096), is above any robot camera.",
        int_range=(1, 1 << 30),
    ),
    ParameterSpec(
        "camera_info_topic",
        "",
        "sensor_msgs/CameraInfo topic; empty: camera_info beside image_topic. Its size and "
        "frame_id are checked against the images, and images are rescaled / cropped to "
        "the model's field of view when the intrinsics differ (one warning).",
    ),
    ParameterSpec(
        "use_camera_info", True, "Check and adapt images with camera_info when it is published."
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
    _float(
        "odom_tolerance_s",
        0.1,
        "The longest a frame waits for odometry stamped at or after it (it waits no longer "
        "than two odometry periods after the last sample came, and not at all when one is "
        "stamped within a tenth of a period of it), and the largest gap to the nearest "
        "odometry sample for it to be used.",
        10.0,
    ),
    # Frames (REP 105).
    ParameterSpec("odom_frame", "odom", "frame_id of the outputs (REP 105 odom frame)."),
    ParameterSpec("base_frame", "base_link", "child_frame_id of the outputs: the robot base."),
    ParameterSpec(
        "camera_frame",
        "",
        "Camera optical frame for the base -> camera lookup on TF; empty: the image's "
        "header.frame_id.",
    ),
    ParameterSpec(
        "base_to_camera",
        [0.0, 0.0, 0.5, -0.5, 0.5, -0.5, 0.5],
        "Camera optical frame in base_frame (x, y, z, qx, qy, qz, qw), used when TF does "
        "not have it (or tf2_ros is not installed). The default is a camera 0.5 m above "
        "the base looking forward.",
    ),
    ParameterSpec(
        "publish_tf",
        True,
        "Broadcast odom_frame -> base_frame on TF. Switch off when an EKF (e.g. "
        "robot_localization) owns that transform and fuses ~/odometry instead.",
    ),
    # Tracking and time.
    _float(
        "uncertain_sigma_m",
        0.0,
        "Predicted per-frame translation sigma (m) from which tracking is UNCERTAIN. 0: the "
        "model's own (model.json 'tracking': the p99 of its held-out sigma with odometry, "
        "so good odometry is OK on 99 % of frames and a run without it mostly UNCERTAIN).",
        100.0,
        read_only=False,
    ),
    _float(
        "lost_sigma_m",
        0.0,
        "Predicted per-frame translation sigma (m) from which tracking is LOST: outputs "
        "then carry a covariance of 9999 (rtabmap's convention). 0: the model's own "
        "(model.json 'tracking': above its held-out p99.9 in both modes).",
        100.0,
        read_only=False,
    ),
    ParameterSpec(
        "vision_checks",
        True,
        "Judge every frame's camera (no contrast or corners to track, a smeared image, a "
        "frame repeated while the odometry moves, a rotation the odometry does not "
        "make) and report tracking UNCERTAIN (LOST without odometry) while it cannot be "
        "trusted: the model's sigma does not show it (docs/benchmarks.md, 'Graceful "
        "degradation').",
        read_only=False,
    ),
    ParameterSpec(
        "tracking_frames",
        3,
        "Consecutive frames a worse tracking state must last before it is entered (a "
        "single-frame spike of the predicted sigma does not flip it); better states are "
        "entered at once.",
        read_only=False,
        int_range=(1, 1000),
    ),
    _float(
        "lost_reset_s",
        2.0,
        "Restart the memory after this long LOST (stamp time; 0: never).",
        3600.0,
        read_only=False,
    ),
    _float(
        "max_gap_s",
        1.0,
        "Restart the memory (the pose continues) when frames are further apart (0: never). "
        "A stamp going backwards (a bag loop) always resets everything. Either jump is "
        "trusted at the second frame on the new time; the first is rejected, so a lone "
        "wild stamp changes nothing.",
        3600.0,
        read_only=False,
    ),
    _float(
        "jitter_warn_s",
        0.02,
        "Warn when a frame interval differs from the typical one by more (0: never).",
        10.0,
        read_only=False,
    ),
    # Memory snapshots.
    ParameterSpec(
        "snapshot_path",
        "~/.ros/latent_memory/memory.npz",
        "File ~/save_memory writes and ~/load_memory reads (atomic writes; a snapshot from "
        "another model is refused).",
        read_only=False,
    ),
    ParameterSpec(
        "memory_snapshot", "", "Snapshot to load at start-up (empty: start with no memory)."
    ),
    # Output.
    ParameterSpec("publish_path", True, "Publish ~/path.", read_only=False),
    ParameterSpec(
        "path_max_length",
        2000,
        "Poses kept in ~/path (oldest dropped first).",
        read_only=False,
        int_range=(1, 1_000_000),
    ),
    _float(
        "path_period_s",
        1.0,
        "Least time between two ~/path messages (0: one per frame). Each carries up to "
        "path_max_length poses: 2,000 took the node 46 ms to send here, so one per frame "
        "capped the frame rate.",
        3600.0,
        read_only=False,
    ),
    _float(
        "warn_throttle_s",
        5.0,
        "Least time between two warnings about the same problem (e.g. bad frames).",
        3600.0,
        read_only=False,
    ),
)
