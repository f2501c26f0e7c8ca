"""Reading runs from rosbag2 (mcap and sqlite3) with ``latent_memory_ros.bag``.

``helpers.write_test_bag`` writes a tiny run with the synthetic world's topics
(world.md).
"""

from __future__ import annotations

import types
from pathlib import Path

import cv2
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
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import StoragePlugin, Writer
from sensor_msgs.msg import CompressedImage, Image

from latent_memory_ros.bag import BagTopicError, read_run
from latent_memory_ros.images import decode_frame


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


def write_frame(path: Path, msg: object, msgtype: str = "sensor_msgs/msg/Image") -> bytes:
    """A bag with one message on /image; returns its CDR bytes."""
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection("/image", msgtype, typestore=TYPESTORE)
        cdr = TYPESTORE.serialize_cdr(msg, msgtype)
        writer.write(conn, T0_NS, cdr)
    return bytes(cdr)


def test_padded_bgr_rows_decode_to_rgb(tmp_path: Path) -> None:
    msg = raw_frame("bgr8", padding=5)  # a step of 20 for 15 bytes of pixels
    write_frame(tmp_path / "bag", msg)

    run = read_run(tmp_path / "bag", "/image")
    assert run.base_to_camera is None and run.intrinsics is None
    ((_, decoded),) = run.images()
    np.testing.assert_array_equal(decoded, frame_pixels(7, 5, 4) * 9)


def raw_frame(encoding: str, padding: int = 0):
    """A 5x4 Image in ``encoding`` with ``padding`` garbage bytes after each row."""
    width, height = 5, 4
    rgb = frame_pixels(7, width, height) * 9  # uint8 wraps: every value differs
    pixels = {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "mono8": rgb[..., :1],
        "mono16": (rgb[..., :1].astype("<u2") * 257 + 100).view(np.uint8),
    }[encoding]
    rows = pixels.reshape(height, -1)
    data = np.concatenate([rows, np.full((height, padding), 0xAB, np.uint8)], axis=1)
    return T.Image(
        header=bag_header(T0_NS, "cam"),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=data.shape[1],
        data=data.ravel(),
    )


def compressed_frame(ext: str):
    ok, data = cv2.imencode(ext, frame_pixels(7, 32, 24) * 9)
    assert ok
    return T.CompressedImage(
        header=bag_header(T0_NS, "cam"),
        format=f"bgr8; {ext[1:].replace('jpg', 'jpeg')} compressed bgr8",
        data=data.ravel(),
    )


@pytest.mark.parametrize(
    ("make", "node_type"),
    [
        (lambda: raw_frame("rgb8"), Image),
        (lambda: raw_frame("bgr8"), Image),
        (lambda: raw_frame("mono8"), Image),
        (lambda: raw_frame("mono16"), Image),
        (lambda: raw_frame("bgr8", padding=5), Image),  # a step of 20 for 15 bytes of pixels
        (lambda: raw_frame("mono16", padding=3), Image),  # an odd step for 2-byte pixels
        (lambda: compressed_frame(".jpg"), CompressedImage),
        (lambda: compressed_frame(".png"), CompressedImage),
    ],
    ids=["rgb8", "bgr8", "mono8", "mono16", "bgr8-padded", "mono16-odd-step", "jpeg", "png"],
)
def test_bag_frames_decode_as_the_node_decodes_them(
    tmp_path: Path, make: object, node_type: type
) -> None:
    # The node's subscription gets the same CDR bytes the bag stores, deserialised by
    # rclpy; LocalisationPipeline.decode hands them to images.decode_frame.
    cdr = write_frame(tmp_path / "bag", make(), f"sensor_msgs/msg/{node_type.__name__}")

    ((_, offline),) = read_run(tmp_path / "bag", "/image").images()
    node = decode_frame(deserialize_message(cdr, node_type))

    size = (4, 5) if node_type is Image else (24, 32)
    assert offline.dtype == node.dtype == np.uint8
    assert offline.shape == node.shape == (*size, 3)
    np.testing.assert_array_equal(offline, node)
