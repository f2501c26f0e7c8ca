"""Readers of recorded runs (latent_memory_ros.datasets): fixtures in each format are
written from one small render of the synthetic world, read back, and compared; bad input
is refused with the file and line, or the bag and topic."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import TYPESTORE, T, bag_header, bag_pose, bag_transform
from rosbags.rosbag2 import StoragePlugin, Writer

from latent_memory_ros import geometry
from latent_memory_ros.bag import BagReadError, BagTopicError
from latent_memory_ros.conversions import stamp_from_ns
from latent_memory_ros.datasets import ReadOptions, detect_format, find_runs, read_sequence
from latent_memory_ros.tracks import DatasetError, Track
from latent_memory_training.data.generate import render_sequence
from latent_memory_training.data.writers import write_rosbag2, write_tum

SIZE = (64, 48)


@pytest.fixture(scope="module")
def seq():
    return render_sequence("test", 1, seed=3, frames=12, size=SIZE)


def _assert_round_trip(back, seq, images: bool = True, odom: bool = True) -> None:
    assert len(back) == len(seq)
    np.testing.assert_allclose(back.stamps, seq.stamps, atol=1e-6, rtol=0)
    np.testing.assert_allclose(back.gt_camera, seq.gt_camera, atol=1e-6)
    np.testing.assert_allclose(back.intrinsics, seq.intrinsics, atol=1e-9)
    np.testing.assert_allclose(back.base_to_camera, seq.base_to_camera, atol=1e-9)
    if odom:
        np.testing.assert_allclose(back.odom_base, seq.odom_base, atol=1e-6)
    if images:
        np.testing.assert_array_equal(np.asarray(back.images), seq.images)
    assert back.meta["frames_dropped"] == 0


# --- the formats ----------------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_rosbag2_round_trip(seq, tmp_path: Path, storage: str) -> None:
    write_rosbag2(seq, tmp_path / "run", storage=storage)
    assert detect_format(tmp_path / "run") == "rosbag2"
    back = read_sequence(tmp_path / "run")  # image, ground truth and odometry topics found
    _assert_round_trip(back, seq)
    assert back.meta["image_topic"] == "/camera/image_raw" and back.meta["odom"] == "/odom"


def test_tum_round_trip(seq, tmp_path: Path) -> None:
    write_tum(seq, tmp_path / "run")
    assert detect_format(tmp_path / "run") == "tum"
    back = read_sequence(tmp_path / "run")
    _assert_round_trip(back, seq)
    assert back.images[3].shape == (SIZE[1], SIZE[0], 3)  # random access to one frame


def _distort(image: np.ndarray, k: np.ndarray, d: np.ndarray, fisheye: bool) -> np.ndarray:
    """What a lens with distortion ``d`` would have recorded of a pinhole image."""
    h, w = image.shape[:2]
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1).reshape(-1, 1, 2)
    grid = grid.astype(np.float64)
    if fisheye:
        rays = cv2.fisheye.undistortPoints(grid, k, d)
    else:
        rays = cv2.undistortPoints(grid, k, d)
    pixels = rays.reshape(-1, 2) * (k[0, 0], k[1, 1]) + (k[0, 2], k[1, 2])
    maps = pixels.reshape(h, w, 2).astype(np.float32)
    return cv2.remap(image, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, cv2.BORDER_REPLICATE)


def _pinhole_view(image: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The pinhole image ``source`` (fx fy cx cy) seen with the intrinsics ``target``."""
    sx, sy = source[0] / target[0], source[1] / target[1]
    m = np.array([[sx, 0, source[2] - sx * target[2]], [0, sy, source[3] - sy * target[3]]])
    h, w = image.shape[:2]
    return cv2.warpAffine(
        image, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip


def write_euroc(seq, root: Path, model: str, d: list[float], gt_from: int, gt_to: int) -> None:
    """The EuRoC ASL layout: grey PNGs seen through the lens ``model``/``d``, sensor.yaml
    with T_BS (the mount: camera in the body), and the body's ground truth at 200 Hz for
    frames ``gt_from .. gt_to`` only."""
    cam = root / "mav0" / "cam0"
    (cam / "data").mkdir(parents=True)
    fx, fy, cx, cy = seq.intrinsics
    k = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    ns = np.round(seq.stamps * 1e9).astype(np.int64)
    lines = ["#timestamp [ns],filename"]
    for i, stamp in enumerate(ns):
        grey = cv2.cvtColor(seq.images[i], cv2.COLOR_RGB2GRAY)
        raw = _distort(grey, k, np.array(d), model == "equidistant")
        cv2.imwrite(str(cam / "data" / f"{stamp}.png"), raw)
        lines.append(f"{stamp},{stamp}.png")
    (cam / "data.csv").write_text("\n".join(lines) + "\n")
    t_bs = geometry.to_matrix(seq.base_to_camera).ravel()
    (cam / "sensor.yaml").write_text(
        "%YAML:1.0\nsensor_type: camera\ncomment: rendered\nT_BS:\n  cols: 4\n  rows: 4\n"
        f"  data: [{', '.join(f'{v:.17g}' for v in t_bs)}]\nrate_hz: 30\n"
        f"resolution: [{seq.size[0]}, {seq.size[1]}]\ncamera_model: pinhole\n"
        f"intrinsics: [{fx}, {fy}, {cx}, {cy}]\ndistortion_model: {model}\n"
        f"distortion_coefficients: [{', '.join(map(str, d))}]\n"
    )
    # 200 Hz samples of the body between the frames, from the true camera track (itself
    # interpolated: the reader must land back on the frames' poses).
    body = geometry.compose(seq.gt_camera, geometry.inverse(seq.base_to_camera))
    t = np.arange(seq.stamps[gt_from], seq.stamps[gt_to] + 1e-9, 0.005)
    t = np.union1d(t, seq.stamps[gt_from : gt_to + 1])
    poses = Track(seq.stamps, body).interpolate(t, 1.0)
    gt = root / "mav0" / "state_groundtruth_estimate0"
    gt.mkdir(parents=True)
    rows = ["#timestamp, p_RS_R_x [m], p_RS_R_y [m], p_RS_R_z [m], q_RS_w [], q_RS_x [], "
            "q_RS_y [], q_RS_z [], v_RS_R_x [m s^-1], v_RS_R_y [m s^-1], v_RS_R_z [m s^-1], "
            "b_w_RS_S_x [rad s^-1], b_w_RS_S_y [rad s^-1], b_w_RS_S_z [rad s^-1], "
            "b_a_RS_S_x [m s^-2], b_a_RS_S_y [m s^-2], b_a_RS_S_z [m s^-2]"]  # fmt: skip
    for stamp, p in zip(t, poses, strict=True):
        values = [*p[:3], p[6], *p[3:6], *[0.0] * 9]
        rows.append(f"{round(stamp * 1e9)}," + ",".join(f"{v:.17g}" for v in values))
    (gt / "data.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize(
    "model, d",
    [
        ("radial-tangential", [-0.28, 0.07, 0.0002, 0.00002]),
        ("equidistant", [0.02, -0.01, 0.004, -0.001]),
    ],
)
def test_euroc_undistorts_and_applies_the_body_to_camera_chain(seq, tmp_path: Path, model, d):
    write_euroc(seq, tmp_path / "MH_01", model, d, gt_from=2, gt_to=len(seq) - 2)
    assert detect_format(tmp_path / "MH_01") == "euroc"
    back = read_sequence(tmp_path / "MH_01")
    # Frames outside the ground truth are dropped and counted.
    kept = slice(2, len(seq) - 1)
    assert len(back) == len(seq) - 3 and back.meta["frames_dropped"] == 3
    np.testing.assert_allclose(back.stamps, seq.stamps[kept], atol=1e-6, rtol=0)
    np.testing.assert_allclose(back.gt_camera, seq.gt_camera[kept], atol=1e-6)
    np.testing.assert_allclose(back.base_to_camera, seq.base_to_camera, atol=1e-12)
    assert np.all(np.isnan(back.odom_base))  # EuRoC has no wheel odometry
    # The undistorted frame is the pinhole render seen with the reader's intrinsics.
    frame = np.asarray(back.images[1])[..., 0].astype(float)
    truth = cv2.cvtColor(seq.images[3], cv2.COLOR_RGB2GRAY)
    expected = _pinhole_view(truth, seq.intrinsics, back.intrinsics).astype(float)
    raw = cv2.imread(str(sorted((tmp_path / "MH_01/mav0/cam0/data").iterdir())[3]), 0)
    inner = (slice(4, -4), slice(4, -4))
    error = np.abs(frame - expected)[inner].mean()
    distorted = np.abs(raw.astype(float) - expected)[inner].mean()
    print(f"{model}: mean error {error:.2f} grey levels, {distorted:.2f} before undistortion")
    assert error < 0.5 * distorted, (error, distorted)
    assert error < 6.0


def write_kitti(seq, root: Path, sequence: str = "07", baseline: float = 0.06) -> Path:
    """The KITTI odometry layout: colour camera 2 images, calib.txt (P2 offset from cam0
    by ``baseline``), times.txt and poses/NN.txt (cam0 poses)."""
    folder = root / "sequences" / sequence
    (folder / "image_2").mkdir(parents=True)
    for i, image in enumerate(seq.images):
        cv2.imwrite(str(folder / "image_2" / f"{i:06d}.png"), image[..., ::-1])
    fx, fy, cx, cy = seq.intrinsics
    p0 = [fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0]
    p2 = [fx, 0, cx, fx * baseline, 0, fy, cy, 0, 0, 0, 1, 0]
    (folder / "calib.txt").write_text(
        "".join(
            f"P{i}: {' '.join(f'{v:.12e}' for v in p)}\n" for i, p in enumerate([p0, p0, p2, p2])
        )
    )
    (folder / "times.txt").write_text("".join(f"{t - seq.stamps[0]:.6e}\n" for t in seq.stamps))
    # Camera 2's centre is at x = -baseline in cam0's frame (P2 = K [I | (baseline, 0, 0)]).
    cam0 = geometry.compose(seq.gt_camera, np.array([baseline, 0, 0, 0, 0, 0, 1.0]))
    (root / "poses").mkdir()
    (root / "poses" / f"{sequence}.txt").write_text(
        "".join(
            " ".join(f"{v:.12e}" for v in geometry.to_matrix(p)[:3].ravel()) + "\n" for p in cam0
        )
    )
    return folder


def test_kitti_round_trip_with_the_colour_camera_offset(seq, tmp_path: Path) -> None:
    folder = write_kitti(seq, tmp_path)
    assert detect_format(folder) == "kitti"
    back = read_sequence(folder)
    assert len(back) == len(seq) and back.meta["camera"] == "image_2"
    np.testing.assert_allclose(back.stamps, seq.stamps - seq.stamps[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(back.gt_camera, seq.gt_camera, atol=1e-9)
    np.testing.assert_allclose(back.intrinsics, seq.intrinsics, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(back.images), seq.images)


def write_robot_bag(
    seq,
    path: Path,
    storage: str = "mcap",
    gt: str = "tf",
    image: str = "compressed",
    d: tuple[float, ...] = (0.0,) * 5,
) -> None:
    """A bag as a robot records it, other names than the project's writer uses.

    ``gt="tf"``: a SLAM-like chain map -> odom -> base_link on /tf (map -> odom only every
    other frame) with the odometry as odom -> base_link on /tf; ``gt="pose"``: a
    motion-capture PoseWithCovarianceStamped of base_link on /mocap/pose with the
    odometry on /wheel/odometry. The mount is base_link -> cam_link -> cam_optical on
    /tf_static; images PNG-compressed on /cam/image_raw/compressed, or mono8 raw Images
    on /cam/image_raw; camera_info on /cam/camera_info with distortion ``d``."""
    width, height = seq.size
    fx, fy, cx, cy = seq.intrinsics
    ns = np.round(seq.stamps * 1e9).astype(np.int64)
    base = geometry.compose(seq.gt_camera, geometry.inverse(seq.base_to_camera))
    map_to_odom = geometry.compose(base, geometry.inverse(seq.odom_base))
    link = np.array([0.05, 0.0, 0.3, 0.0, 0.0, 0.0, 1.0])
    image_topic = "/cam/image_raw/compressed" if image == "compressed" else "/cam/image_raw"
    image_type = (
        "sensor_msgs/msg/CompressedImage" if image == "compressed" else "sensor_msgs/msg/Image"
    )
    topics = [("/tf_static", "tf2_msgs/msg/TFMessage"), ("/cam/camera_info", "sensor_msgs/msg/CameraInfo"),
              (image_topic, image_type)]  # fmt: skip
    if gt == "tf":
        topics.append(("/tf", "tf2_msgs/msg/TFMessage"))
    else:
        topics += [("/mocap/pose", "geometry_msgs/msg/PoseWithCovarianceStamped"),
                   ("/wheel/odometry", "nav_msgs/msg/Odometry")]  # fmt: skip
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {t: writer.add_connection(t, ty, typestore=TYPESTORE) for t, ty in topics}

        def write(topic: str, stamp: int, msg: object) -> None:
            writer.write(conns[topic], stamp, TYPESTORE.serialize_cdr(msg, conns[topic].msgtype))

        mount = [bag_transform("base_link", "cam_link", link),
                 bag_transform("cam_link", "cam_optical", geometry.relative(link, seq.base_to_camera))]  # fmt: skip
        write("/tf_static", int(ns[0]), T.TFMessage(transforms=mount))
        for i, stamp in enumerate(int(v) for v in ns):
            write("/cam/camera_info", stamp, T.CameraInfo(
                header=bag_header(stamp, "cam_optical"), height=height, width=width,
                distortion_model="plumb_bob", d=np.array(d, dtype=np.float64),
                k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1.0]), r=np.eye(3).ravel(),
                p=np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1.0, 0]), binning_x=0, binning_y=0,
                roi=T.RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
            ))  # fmt: skip
            if image == "compressed":
                ok, png = cv2.imencode(".png", seq.images[i][..., ::-1])
                msg = T.CompressedImage(header=bag_header(stamp, "cam_optical"), format="rgb8; png compressed bgr8",
                                        data=png.ravel())  # fmt: skip
            else:
                grey = np.ascontiguousarray(seq.images[i][..., 0])
                msg = T.Image(header=bag_header(stamp, "cam_optical"), height=height, width=width,
                              encoding="mono8", is_bigendian=0, step=width, data=grey.ravel())  # fmt: skip
            write(image_topic, stamp, msg)
            if gt == "tf":
                transforms = [bag_transform("odom", "base_link", seq.odom_base[i])]
                if i % 2 == 0 or i == len(seq) - 1:
                    transforms.append(bag_transform("map", "odom", map_to_odom[i]))
                for tf in transforms:
                    tf.header.stamp = stamp_from_ns(stamp, T.Time)
                write("/tf", stamp, T.TFMessage(transforms=transforms))
            else:
                write("/mocap/pose", stamp, T.PoseWithCovarianceStamped(
                    header=bag_header(stamp, "world"),
                    pose=T.PoseWithCovariance(pose=bag_pose(base[i]), covariance=np.zeros(36)),
                ))  # fmt: skip
                write("/wheel/odometry", stamp, T.Odometry(
                    header=bag_header(stamp, "odom"), child_frame_id="base_link",
                    pose=T.PoseWithCovariance(pose=bag_pose(seq.odom_base[i]), covariance=np.zeros(36)),
                    twist=T.TwistWithCovariance(twist=T.Twist(linear=T.Vector3(x=0, y=0, z=0),
                                                              angular=T.Vector3(x=0, y=0, z=0)),
                                                covariance=np.zeros(36)),
                ))  # fmt: skip


def test_bag_ground_truth_and_odometry_from_a_tf_chain(seq, tmp_path: Path) -> None:
    """SLAM-like ground truth map -> odom -> base_link and wheel odometry odom -> base_link
    on /tf, PNG CompressedImage frames, the mount from a two-link /tf_static."""
    write_robot_bag(seq, tmp_path / "robot", storage="sqlite3", gt="tf")
    options = ReadOptions(
        image_topic="/cam/image_raw/compressed",
        gt_frames=("map", "base_link"),
        odom_frames=("odom", "base_link"),
    )
    back = read_sequence(tmp_path / "robot", options=options)
    # map -> odom, sampled every other frame, is interpolated; odom -> base_link is exact.
    np.testing.assert_allclose(back.odom_base, seq.odom_base, atol=1e-9)
    np.testing.assert_allclose(back.base_to_camera, seq.base_to_camera, atol=1e-9)
    np.testing.assert_allclose(back.gt_camera[::2], seq.gt_camera[::2], atol=1e-9)
    np.testing.assert_allclose(back.gt_camera[:, :3], seq.gt_camera[:, :3], atol=0.01)
    np.testing.assert_array_equal(np.asarray(back.images), seq.images)
    np.testing.assert_allclose(back.intrinsics, seq.intrinsics)


def test_bag_mocap_pose_of_the_base_with_mono8_frames_and_distortion(seq, tmp_path):
    d = (-0.2, 0.05, 0.0, 0.0, 0.0)
    write_robot_bag(seq, tmp_path / "robot", gt="pose", image="mono8", d=d)
    options = ReadOptions(
        gt_topic="/mocap/pose", gt_frame="base_link", odom_topic="/wheel/odometry"
    )
    back = read_sequence(tmp_path / "robot", options=options)
    np.testing.assert_allclose(back.gt_camera, seq.gt_camera, atol=1e-9)
    np.testing.assert_allclose(back.odom_base, seq.odom_base, atol=1e-9)
    frame = back.images[0]
    assert frame.shape == (SIZE[1], SIZE[0], 3)
    assert np.array_equal(frame[..., 0], frame[..., 2])  # mono8 as three equal channels
    # Undistorted to a pinhole camera that sees no black border: a longer focal length.
    k = np.array(
        [
            [seq.intrinsics[0], 0, seq.intrinsics[2]],
            [0, seq.intrinsics[1], seq.intrinsics[3]],
            [0, 0, 1],
        ]
    )
    new_k, _ = cv2.getOptimalNewCameraMatrix(k, np.array(d), SIZE, 0.0, SIZE)
    np.testing.assert_allclose(
        back.intrinsics, [new_k[0, 0], new_k[1, 1], new_k[0, 2], new_k[1, 2]]
    )
    assert back.intrinsics[0] != seq.intrinsics[0]
    # A ground truth of a frame /tf_static does not know (a motion-capture body): the
    # mount given as an option joins it to the camera, else the error says what to pass.
    mocap = dict(gt_topic="/mocap/pose", gt_frame="mocap_body", odom_topic="/wheel/odometry")
    mount = tuple(seq.base_to_camera)
    given = read_sequence(tmp_path / "robot", options=ReadOptions(**mocap, base_to_camera=mount))
    np.testing.assert_allclose(given.gt_camera, seq.gt_camera, atol=1e-9)
    with pytest.raises(
        DatasetError, match="'mocap_body', and no /tf_static chain .* pass --base-to-camera"
    ):
        read_sequence(tmp_path / "robot", options=ReadOptions(**mocap))


def test_find_runs_mixes_formats_in_one_folder(seq, tmp_path: Path) -> None:
    write_rosbag2(seq, tmp_path / "all" / "a_bag")
    write_tum(seq, tmp_path / "all" / "b_tum")
    seq.save(tmp_path / "all" / "c_render.npz")
    runs = find_runs(tmp_path / "all")
    assert [(p.name, f) for p, f in runs] == [
        ("a_bag", "rosbag2"),
        ("b_tum", "tum"),
        ("c_render.npz", "npz"),
    ]
    assert find_runs(tmp_path / "all" / "b_tum") == [(tmp_path / "all" / "b_tum", "tum")]
    # A forced format still finds the runs of a folder (and applies to each of them).
    assert [f for _, f in find_runs(tmp_path / "all", "tum")] == ["tum"] * 3
    with pytest.raises(DatasetError, match="holds no runs"):
        find_runs(tmp_path / "all" / "b_tum" / "rgb")


# --- interpolation --------------------------------------------------------------------------


def test_interpolation_slerps_and_refuses_gaps() -> None:
    stamps = np.array([0.0, 1.0, 2.0, 5.0])
    yaw = np.array([0.0, 0.4, 0.8, 2.0])
    poses = np.array(
        [[t, 2 * t, 0, *geometry.euler_to_quat(0, 0, a)] for t, a in zip(stamps, yaw, strict=True)]
    )
    track = Track(stamps, poses)
    out = track.interpolate(np.array([-0.1, 0.25, 1.0, 1.5, 3.0, 5.0, 5.1]), max_gap=1.5)
    np.testing.assert_allclose(
        out[1], [0.25, 0.5, 0, *geometry.euler_to_quat(0, 0, 0.1)], atol=1e-12
    )
    np.testing.assert_allclose(out[2], poses[1], atol=1e-12)
    np.testing.assert_allclose(
        out[3], [1.5, 3.0, 0, *geometry.euler_to_quat(0, 0, 0.6)], atol=1e-12
    )
    np.testing.assert_allclose(out[5], poses[3], atol=1e-12)  # on a sample: no neighbour needed
    assert np.isnan(out[[0, 4, 6]]).all()  # before, in the 3 s gap, after


# --- bad input ------------------------------------------------------------------------------


def _edit_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_bad_tum_input_names_the_file_and_line(seq, tmp_path: Path) -> None:
    write_tum(seq, tmp_path / "clean")
    rgb_header = 3  # rgb.txt starts with three comment lines

    run = tmp_path / "repeated"
    shutil.copytree(tmp_path / "clean", run)
    lines = (run / "rgb.txt").read_text().splitlines()
    _edit_line(run / "rgb.txt", rgb_header + 5, lines[rgb_header + 3])
    with pytest.raises(DatasetError, match=rf"rgb.txt, line {rgb_header + 5}: stamp .* repeats"):
        read_sequence(run)

    run = tmp_path / "unsorted"
    shutil.copytree(tmp_path / "clean", run)
    gt = (run / "groundtruth.txt").read_text().splitlines()
    first = next(i for i, line in enumerate(gt) if not line.startswith("#"))
    gt[first + 2], gt[first + 3] = gt[first + 3], gt[first + 2]
    (run / "groundtruth.txt").write_text("\n".join(gt) + "\n")
    with pytest.raises(
        DatasetError, match=rf"groundtruth.txt, line {first + 4}: .* goes back in time"
    ):
        read_sequence(run)

    run = tmp_path / "missing"
    shutil.copytree(tmp_path / "clean", run)
    victim = sorted((run / "rgb").iterdir())[4]
    victim.unlink()
    with pytest.raises(
        DatasetError, match=rf"rgb.txt, line {rgb_header + 5}: image .*{victim.name} does not exist"
    ):
        read_sequence(run)

    run = tmp_path / "resized"
    shutil.copytree(tmp_path / "clean", run)
    victim = sorted((run / "rgb").iterdir())[6]
    cv2.imwrite(str(victim), np.zeros((10, 12, 3), np.uint8))
    back = read_sequence(run)  # frames are decoded on use: the size is checked there
    with pytest.raises(DatasetError, match=rf"{victim.name} is 12x10, the run's first is 64x48"):
        np.asarray(back.images)

    (tmp_path / "nothing").mkdir()
    with pytest.raises(DatasetError, match="not a run"):
        read_sequence(tmp_path / "nothing")


def test_kitti_unequal_counts_are_named(seq, tmp_path: Path) -> None:
    folder = write_kitti(seq, tmp_path)
    sorted((folder / "image_2").iterdir())[-1].unlink()
    with pytest.raises(
        DatasetError, match=rf"image_2 holds {len(seq) - 1} images but .*times.txt lists {len(seq)}"
    ):
        read_sequence(folder)


def test_bad_bags_name_the_bag_and_topic(seq, tmp_path: Path) -> None:
    write_rosbag2(seq, tmp_path / "run")
    with pytest.raises(
        BagTopicError, match=r"no topic '/camera/color'; its topics are: .*/camera/image_raw"
    ):
        read_sequence(tmp_path / "run", options=ReadOptions(image_topic="/camera/color"))

    truncated = tmp_path / "truncated"
    shutil.copytree(tmp_path / "run", truncated)
    storage = next(truncated.glob("*.mcap"))
    storage.write_bytes(storage.read_bytes()[: storage.stat().st_size // 2])
    with pytest.raises(BagReadError, match=rf"bag {truncated} cannot be read"):
        read_sequence(truncated)

    with Writer(tmp_path / "stutter", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection("/image", "sensor_msgs/msg/Image", typestore=TYPESTORE)
        for i, (stamp, size) in enumerate([(10, 4), (20, 4), (20, 4), (30, 6)]):
            msg = T.Image(header=bag_header(stamp, "cam"), height=size, width=size, encoding="mono8",
                          is_bigendian=0, step=size, data=np.zeros(size * size, np.uint8))  # fmt: skip
            writer.write(conn, stamp + i, TYPESTORE.serialize_cdr(msg, conn.msgtype))
    from latent_memory_ros.bag import read_run

    with pytest.raises(
        BagReadError, match=r"topic /image, message 3: the frame is 6x6, the ones before 4x4"
    ):
        read_run(tmp_path / "stutter", "/image")
    with Writer(tmp_path / "repeat", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection("/image", "sensor_msgs/msg/Image", typestore=TYPESTORE)
        for i, stamp in enumerate([10, 20, 20]):
            msg = T.Image(header=bag_header(stamp, "cam"), height=4, width=4, encoding="mono8",
                          is_bigendian=0, step=4, data=np.zeros(16, np.uint8))  # fmt: skip
            writer.write(conn, stamp + i, TYPESTORE.serialize_cdr(msg, conn.msgtype))
    with pytest.raises(DatasetError, match=r"topic /image, message 2: stamp .* repeats"):
        read_run(tmp_path / "repeat", "/image")


def test_eval_scores_a_tum_run_with_the_shipped_model(seq, tmp_path: Path, capsys) -> None:
    """latent_memory_eval --data: a run of another format than a bag, through the real
    shipped model; the wheel odometry of the run is fed and scored as the baseline."""
    import json

    from latent_memory_ros.evaluation import main
    from latent_memory_ros.model_format import default_model_dir

    write_tum(seq, tmp_path / "run")
    out = tmp_path / "out"
    args = ["--data", str(tmp_path / "run"), "--model", str(default_model_dir())]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["format"] == "tum" and metrics["frames"] == metrics["frames_with_pose"] == 12
    assert metrics["odom_input"] is True and np.isfinite(metrics["ate_rmse_m"])
    assert np.isfinite(metrics["odom_ate_rmse_m"]) and metrics["frames_dropped"] == 0
    est = [line for line in (out / "est.tum").read_text().splitlines() if not line.startswith("#")]
    assert len(est) == 12 and (out / "trajectory.png").is_file()
    assert "ATE SE3 m" in capsys.readouterr().out

    write_tum(seq, tmp_path / "no_gt")
    (tmp_path / "no_gt" / "groundtruth.txt").unlink()
    assert main(["--data", str(tmp_path / "no_gt"), "--out", str(out), "--no-progress"]) == 2
    assert f"{tmp_path / 'no_gt' / 'groundtruth.txt'} does not exist" in capsys.readouterr().err
