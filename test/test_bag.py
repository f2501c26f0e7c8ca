"""Reading runs from rosbag2 (mcap and sqlite3) with ``latent_memory_ros.bag``.

``helpers.write_test_bag`` writes a tiny run with the synthetic world's topics
(world.md).
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    BASE_TO_CAMERA,
    INTRINSICS,
    T0_NS,
    TYPESTORE,
    T,
    bag_header,
    frame_pixels,
    write_test_bag,
)
from rosbags.rosbag2 import StoragePlugin, Writer

from latent_memory_ros.bag import BagTopicError, read_run


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
            header=bag_header(T0_NS, "cam"),
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
