"""Export sequences as rosbag2 (mcap or sqlite3) and as the TUM RGB-D folder layout.

Both writers stream: they touch ``seq.images[i]`` once per frame, so a lazily rendered
sequence (:class:`~latent_memory_training.data.generate.LazyFrames`) never has to fit in
memory. Both write into a temporary sibling folder and rename it at the end, so a
crashed or interrupted export never leaves a half-written bag under the final name.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from latent_memory_ros import geometry
from latent_memory_ros.tum import tum_lines, write_trajectory

from .sequence import Sequence

IMAGE_TOPIC = "/camera/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"
ODOM_TOPIC = "/odom"
GROUND_TRUTH_TOPIC = "/ground_truth/pose"
TF_STATIC_TOPIC = "/tf_static"
CAMERA_FRAME = "camera_optical_frame"
ODOM_FRAME = "odom"
BASE_FRAME = "base_link"
WORLD_FRAME = "world"
CUSTOM_DATA_KEY = "latent_memory"

# Odometry covariances: per-frame-noise-sized values for the planar dimensions and a
# large value for the dimensions a planar wheel odometry does not measure.
_UNMEASURED = 1e3
_POSE_COV = np.diag([0.05**2, 0.05**2, _UNMEASURED, _UNMEASURED, _UNMEASURED, 0.05**2]).ravel()
_TWIST_COV = np.diag([0.02**2, 0.02**2, _UNMEASURED, _UNMEASURED, _UNMEASURED, 0.02**2]).ravel()

Progress = Callable[[int], None]


def stamps_ns(seq: Sequence) -> np.ndarray:
    """Integer nanosecond stamps of a sequence's frames."""
    return np.round(np.asarray(seq.stamps, dtype=np.float64) * 1e9).astype(np.int64)


@contextmanager
def _atomic_dir(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a fresh folder with the final name inside ``<out_dir>.tmp``; move it into
    place on success, drop it on failure."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it")
    staging = out_dir.with_name(out_dir.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    # The inner folder already has the final name, because rosbag2 names its storage
    # file after the bag folder.
    inner = staging / out_dir.name
    try:
        yield inner
        if out_dir.exists():
            shutil.rmtree(out_dir)
        inner.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def sequence_summary(seq: Sequence) -> dict:
    """The sequence's scalar metadata (JSON-serialisable), for bag custom data and TUM."""
    bias = np.asarray(seq.yaw_bias) if seq.yaw_bias is not None else np.zeros(len(seq))
    meta = {k: v for k, v in seq.meta.items() if isinstance(v, (str, int, float, bool, list))}
    return {
        "name": seq.name,
        **meta,
        "odom_scale": float(seq.odom_scale),
        "yaw_bias_mean": float(bias.mean()),
        "intrinsics": [float(v) for v in seq.intrinsics],
        "width": seq.size[0],
        "height": seq.size[1],
        "base_to_camera": [float(v) for v in seq.base_to_camera],
        "frames": len(seq),
    }


def write_rosbag2(
    seq: Sequence,
    out_dir: Path,
    storage: str = "mcap",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Write ``seq`` as a rosbag2 (format version 9) at ``out_dir``; returns the path.

    Topics: /camera/image_raw (rgb8; mono8 for a grey camera), /camera/camera_info, /odom (odom -> base_link),
    /ground_truth/pose (camera optical frame in ``world``) and one latched /tf_static
    (base_link -> camera_optical_frame), all stamped with the image time.
    """
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise ValueError(f"storage must be one of {sorted(plugins)}, not {storage!r}")
    ts = get_typestore(Stores.ROS2_KILTED)
    t = ts.types
    mono = seq.meta.get("encoding") == "mono8"
    Header, Time = t["std_msgs/msg/Header"], t["builtin_interfaces/msg/Time"]
    Point, Quaternion, Vector3 = (
        t["geometry_msgs/msg/Point"],
        t["geometry_msgs/msg/Quaternion"],
        t["geometry_msgs/msg/Vector3"],
    )
    Pose, Twist, Transform = (
        t["geometry_msgs/msg/Pose"],
        t["geometry_msgs/msg/Twist"],
        t["geometry_msgs/msg/Transform"],
    )

    def header(ns: int, frame: str):  # noqa: ANN202 - rosbags message dataclass
        return Header(stamp=Time(sec=int(ns // 10**9), nanosec=int(ns % 10**9)), frame_id=frame)

    def pose_msg(p: np.ndarray):  # noqa: ANN202
        return Pose(
            position=Point(x=float(p[0]), y=float(p[1]), z=float(p[2])),
            orientation=Quaternion(x=float(p[3]), y=float(p[4]), z=float(p[5]), w=float(p[6])),
        )

    w, h = seq.size
    fx, fy, cx, cy = (float(v) for v in seq.intrinsics)
    ns = stamps_ns(seq)
    odom = np.asarray(seq.odom_base, dtype=np.float64)
    # Body-frame velocity: the odometry's own step into each frame over its duration.
    steps = geometry.relative(odom[:-1], odom[1:])
    if len(steps):
        steps = np.concatenate([steps[:1], steps])
        dts = np.diff(ns) / 1e9
        dts = np.concatenate([dts[:1], dts])
        lin = steps[:, :3] / dts[:, None]
        ang = geometry.quat_to_rotvec(steps[:, 3:]) / dts[:, None]
    else:
        lin = ang = np.zeros((len(seq), 3))
    latched = Qos(
        history=QosHistory.KEEP_LAST,
        depth=1,
        reliability=QosReliability.RELIABLE,
        durability=QosDurability.TRANSIENT_LOCAL,
        deadline=QosTime(0, 0),
        lifespan=QosTime(0, 0),
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=QosTime(0, 0),
        avoid_ros_namespace_conventions=False,
    )
    out_dir = Path(out_dir)
    with _atomic_dir(out_dir, overwrite) as path:
        writer = Writer(path, version=9, storage_plugin=plugins[storage])
        writer.set_custom_data(CUSTOM_DATA_KEY, json.dumps(sequence_summary(seq)))
        with writer:
            c_tf = writer.add_connection(
                TF_STATIC_TOPIC,
                "tf2_msgs/msg/TFMessage",
                typestore=ts,
                offered_qos_profiles=[latched],
            )
            c_info = writer.add_connection(
                CAMERA_INFO_TOPIC, "sensor_msgs/msg/CameraInfo", typestore=ts
            )
            c_img = writer.add_connection(IMAGE_TOPIC, "sensor_msgs/msg/Image", typestore=ts)
            c_odom = writer.add_connection(ODOM_TOPIC, "nav_msgs/msg/Odometry", typestore=ts)
            c_gt = writer.add_connection(
                GROUND_TRUTH_TOPIC, "geometry_msgs/msg/PoseStamped", typestore=ts
            )
            mount = np.asarray(seq.base_to_camera, dtype=np.float64)
            tf = t["tf2_msgs/msg/TFMessage"](
                transforms=[
                    t["geometry_msgs/msg/TransformStamped"](
                        header=header(int(ns[0]), BASE_FRAME),
                        child_frame_id=CAMERA_FRAME,
                        transform=Transform(
                            translation=Vector3(
                                x=float(mount[0]), y=float(mount[1]), z=float(mount[2])
                            ),
                            rotation=Quaternion(
                                x=float(mount[3]),
                                y=float(mount[4]),
                                z=float(mount[5]),
                                w=float(mount[6]),
                            ),
                        ),
                    )
                ]
            )
            writer.write(c_tf, int(ns[0]), ts.serialize_cdr(tf, "tf2_msgs/msg/TFMessage"))
            for i in range(len(seq)):
                stamp = int(ns[i])
                info = t["sensor_msgs/msg/CameraInfo"](
                    header=header(stamp, CAMERA_FRAME),
                    height=h,
                    width=w,
                    distortion_model="plumb_bob",
                    d=np.zeros(5),
                    k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1], dtype=np.float64),
                    r=np.eye(3).ravel(),
                    p=np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], dtype=np.float64),
                    binning_x=0,
                    binning_y=0,
                    roi=t["sensor_msgs/msg/RegionOfInterest"](
                        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
                    ),
                )
                writer.write(c_info, stamp, ts.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
                img = np.ascontiguousarray(seq.images[i], dtype=np.uint8)
                if mono:  # a grey camera (world.md v2) publishes mono8, as a real one does
                    img = np.ascontiguousarray(img[..., 0])
                image = t["sensor_msgs/msg/Image"](
                    header=header(stamp, CAMERA_FRAME),
                    height=h,
                    width=w,
                    encoding="mono8" if mono else "rgb8",
                    is_bigendian=0,
                    step=(1 if mono else 3) * w,
                    data=img.reshape(-1),
                )
                writer.write(c_img, stamp, ts.serialize_cdr(image, "sensor_msgs/msg/Image"))
                od = t["nav_msgs/msg/Odometry"](
                    header=header(stamp, ODOM_FRAME),
                    child_frame_id=BASE_FRAME,
                    pose=t["geometry_msgs/msg/PoseWithCovariance"](
                        pose=pose_msg(odom[i]), covariance=_POSE_COV.copy()
                    ),
                    twist=t["geometry_msgs/msg/TwistWithCovariance"](
                        twist=Twist(
                            linear=Vector3(
                                x=float(lin[i, 0]), y=float(lin[i, 1]), z=float(lin[i, 2])
                            ),
                            angular=Vector3(
                                x=float(ang[i, 0]), y=float(ang[i, 1]), z=float(ang[i, 2])
                            ),
                        ),
                        covariance=_TWIST_COV.copy(),
                    ),
                )
                writer.write(c_odom, stamp, ts.serialize_cdr(od, "nav_msgs/msg/Odometry"))
                gt = t["geometry_msgs/msg/PoseStamped"](
                    header=header(stamp, WORLD_FRAME), pose=pose_msg(seq.gt_camera[i])
                )
                writer.write(c_gt, stamp, ts.serialize_cdr(gt, "geometry_msgs/msg/PoseStamped"))
                if progress is not None:
                    progress(1)
    return out_dir


def write_tum(
    seq: Sequence, out_dir: Path, overwrite: bool = False, progress: Progress | None = None
) -> Path:
    """Write ``seq`` in the TUM RGB-D layout at ``out_dir``; returns the path.

    ``rgb/<stamp>.png``, ``rgb.txt``, ``groundtruth.txt`` (camera optical frame in the
    world), ``odometry.txt`` (noisy base pose in the odom frame, same format), plus
    ``meta.json`` (intrinsics, mount, odometry scale) and ``yaw_bias.txt``, which the
    TUM format has no place for.
    """
    out_dir = Path(out_dir)
    # The same stamp text as the trajectory files, so TUM association matches exactly.
    names = [line.split(" ", 1)[0] for line in tum_lines(seq.stamps, seq.gt_camera)]
    if len(set(names)) != len(names):
        raise ValueError("stamps collide at microsecond resolution")
    with _atomic_dir(out_dir, overwrite) as path:
        (path / "rgb").mkdir(parents=True)
        for i, name in enumerate(names):
            bgr = cv2.cvtColor(np.asarray(seq.images[i], dtype=np.uint8), cv2.COLOR_RGB2BGR)
            if not cv2.imwrite(
                str(path / "rgb" / f"{name}.png"), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1]
            ):
                raise OSError(f"could not write frame {i} of {seq.name}")
            if progress is not None:
                progress(1)
        head = f"# file: '{seq.name}'\n"
        (path / "rgb.txt").write_text(
            "# color images\n"
            + head
            + "# timestamp filename\n"
            + "".join(f"{n} rgb/{n}.png\n" for n in names)
        )
        pose_head = "# timestamp tx ty tz qx qy qz qw\n"
        gt_head = "# ground truth trajectory: camera optical frame in the world frame\n"
        write_trajectory(
            path / "groundtruth.txt", seq.stamps, seq.gt_camera, gt_head + head + pose_head
        )
        odom_head = "# wheel odometry: base_link in the odom frame\n"
        write_trajectory(
            path / "odometry.txt", seq.stamps, seq.odom_base, odom_head + head + pose_head
        )
        bias = np.asarray(seq.yaw_bias) if seq.yaw_bias is not None else np.zeros(len(seq))
        (path / "yaw_bias.txt").write_text(
            "# odometry yaw bias, rad per frame, added to the yaw step into this frame\n"
            + head
            + "# timestamp yaw_bias\n"
            + "".join(f"{n} {b:.9e}\n" for n, b in zip(names, bias, strict=True))
        )
        (path / "meta.json").write_text(json.dumps(sequence_summary(seq), indent=1))
    return out_dir
