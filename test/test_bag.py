"""Reading runs from rosbag2 (mcap and sqlite3) with ``latent_memory_ros.bag``.

``write_test_bag`` writes a tiny run with the synthetic world's topics (world.md); the
evaluation and replay tests use it too.
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from latent_memory_ros import geometry
from latent_memory_ros.bag import BagTopicError, read_run

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


def _time(ns: int):
    return T.Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _header(ns: int, frame_id: str):
    return T.Header(stamp=_time(ns), frame_id=frame_id)


def _pose(p: np.ndarray):
    return T.Pose(
        position=T.Point(x=p[0], y=p[1], z=p[2]),
        orientation=T.Quaternion(x=p[3], y=p[4], z=p[5], w=p[6]),
    )


def _transform(parent: str, child: str, p: np.ndarray):
    return T.TransformStamped(
        header=_header(T0_NS, parent),
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
                _transform("base_link", "camera_link", link),
                _transform(
                    "camera_link",
                    "camera_optical_frame",
                    geometry.relative(link, BASE_TO_CAMERA),
                ),
            ]
        else:
            transforms = [_transform("base_link", "camera_optical_frame", BASE_TO_CAMERA)]
        write("/tf_static", T0_NS, T.TFMessage(transforms=transforms))
        fx, fy, cx, cy = INTRINSICS
        info = T.CameraInfo(
            header=_header(T0_NS, "camera_optical_frame"),
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
                header=_header(ns, "camera_optical_frame"),
                height=height,
                width=width,
                encoding="rgb8",
                is_bigendian=0,
                step=width * 3,
                data=frame_pixels(i, width, height).ravel(),
            )
            write("/camera/image_raw", ns, image)
            odometry = T.Odometry(
                header=_header(ns, "odom"),
                child_frame_id="base_link",
                pose=T.PoseWithCovariance(pose=_pose(odom[i]), covariance=np.zeros(36)),
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
                T.PoseStamped(header=_header(ns, "world"), pose=_pose(gt[i])),
            )
    return types.SimpleNamespace(
        stamps=stamps_ns * 1e-9, stamps_ns=stamps_ns, gt=gt, odom=odom, base=base, size=size
    )


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_read_run_returns_what_was_written(tmp_path: Path, storage: str) -> None:
    truth = write_test_bag(tmp_path / "bag", frames=10, storage=storage)

    run = read_run(tmp_path / "bag", "/camera/image_raw", "/ground_truth/pose", "/odom")

    assert len(run) == 10
    np.testing.assert_allclose(run.image_stamps, truth.stamps, rtol=0, atol=1e-6)
    assert run.image_frame_id == "camera_optical_frame"
    assert run.gt is not None and run.odom is not None
    gt_stamps, gt_poses = run.gt
    np.testing.assert_allclose(gt_stamps, truth.stamps, rtol=0, atol=1e-6)
    np.testing.assert_allclose(gt_poses, truth.gt, atol=1e-12)
    np.testing.assert_allclose(run.odom.poses, truth.odom, atol=1e-12)
    assert run.odom_child_frame == "base_link"
    np.testing.assert_allclose(run.base_to_camera, BASE_TO_CAMERA, atol=1e-12)
    assert run.intrinsics is not None
    assert (run.intrinsics.width, run.intrinsics.height) == truth.size
    np.testing.assert_allclose(run.intrinsics.array, INTRINSICS)

    frames = run.images()
    assert isinstance(frames, types.GeneratorType)  # decoded lazily, one at a time
    decoded = list(frames)
    assert len(decoded) == 10
    for i, (stamp, rgb) in enumerate(decoded):
        assert stamp == pytest.approx(truth.stamps[i], abs=1e-6)
        assert rgb.dtype == np.uint8 and rgb.shape == (24, 32, 3)
        np.testing.assert_array_equal(rgb, frame_pixels(i, 32, 24))
    assert len(list(run.images(max_frames=3))) == 3


def test_odom_at_takes_the_nearest_pose_within_tolerance(tmp_path: Path) -> None:
    truth = write_test_bag(tmp_path / "bag", frames=6)
    run = read_run(tmp_path / "bag", "/camera/image_raw", odom_topic="/odom")

    query = truth.stamps + np.array([0.0, 0.01, -0.01, 0.0, 0.0, 0.5])
    poses = run.odom_at(query, max_dt=0.02)

    np.testing.assert_allclose(poses[:5], truth.odom[:5], atol=1e-12)
    assert np.all(np.isnan(poses[5]))  # 0.5 s after the last odometry
    assert np.all(np.isnan(read_run(tmp_path / "bag", "/camera/image_raw").odom_at(query)))


def test_static_transforms_chain_up_to_the_odometry_frame(tmp_path: Path) -> None:
    write_test_bag(tmp_path / "bag", frames=3, camera_link=True)
    run = read_run(tmp_path / "bag", "/camera/image_raw", odom_topic="/odom")
    np.testing.assert_allclose(run.base_to_camera, BASE_TO_CAMERA, atol=1e-12)


def test_missing_topic_names_the_bag_and_lists_its_topics(tmp_path: Path) -> None:
    write_test_bag(tmp_path / "bag", frames=2, storage="sqlite3")
    with pytest.raises(BagTopicError) as err:
        read_run(tmp_path / "bag", "/camera/image_raw", gt_topic="/vicon/pose")
    message = str(err.value)
    assert str(tmp_path / "bag") in message and "'/vicon/pose'" in message
    for topic in ("/camera/image_raw", "/odom", "/ground_truth/pose", "/tf_static"):
        assert topic in message


def test_wrong_message_type_is_named(tmp_path: Path) -> None:
    write_test_bag(tmp_path / "bag", frames=2)
    with pytest.raises(BagTopicError, match="sensor_msgs/msg/CameraInfo"):
        read_run(tmp_path / "bag", "/camera/camera_info")


def test_padded_bgr_rows_decode_to_rgb(tmp_path: Path) -> None:
    width, height, step = 5, 4, 20  # 15 bytes of pixels, 5 of padding per row
    rgb = frame_pixels(7, width, height)
    rows = np.zeros((height, step), np.uint8)
    rows[:, : width * 3] = rgb[..., ::-1].reshape(height, -1)
    with Writer(tmp_path / "bag", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection("/image", "sensor_msgs/msg/Image", typestore=TYPESTORE)
        msg = T.Image(
            header=_header(T0_NS, "cam"),
            height=height,
            width=width,
            encoding="bgr8",
            is_bigendian=0,
            step=step,
            data=rows.ravel(),
        )
        writer.write(conn, T0_NS, TYPESTORE.serialize_cdr(msg, conn.msgtype))

    run = read_run(tmp_path / "bag", "/image")
    assert run.base_to_camera is None and run.intrinsics is None
    ((_, decoded),) = run.images()
    np.testing.assert_array_equal(decoded, rgb)
