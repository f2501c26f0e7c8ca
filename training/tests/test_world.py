"""The synthetic world: determinism, photo split, motion limits, revisits, odometry,
image/pose geometry, mirroring and the rosbag2 / TUM exports (tiny sizes, ~tens of s)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from latent_memory_ros import geometry
from latent_memory_training.data import photos, world
from latent_memory_training.data.generate import mirror, plan_sequence, render_sequence
from latent_memory_training.data.render import Renderer, intrinsics_for_size
from latent_memory_training.data.sequence import Sequence
from latent_memory_training.data.writers import stamps_ns, write_rosbag2, write_tum

TINY = (64, 48)


@pytest.fixture(scope="module")
def tiny_seq() -> Sequence:
    return render_sequence("test", 1, seed=3, frames=24, size=TINY)


@pytest.fixture(scope="module")
def plans() -> list:
    return [plan_sequence(split, i, 11, 900) for split in ("train", "test") for i in range(3)]


def _yaw(q: np.ndarray) -> np.ndarray:
    x_axis = geometry.quat_rotate(q, np.array([1.0, 0.0, 0.0]))
    return np.unwrap(np.arctan2(x_axis[..., 1], x_axis[..., 0]))


def test_intrinsics_keep_the_tum_field_of_view() -> None:
    np.testing.assert_allclose(intrinsics_for_size(640, 480), [525, 525, 319.5, 239.5])
    np.testing.assert_allclose(intrinsics_for_size(320, 240), [262.5, 262.5, 159.5, 119.5])
    f, _, cx, _ = intrinsics_for_size(64, 48)
    assert math.isclose(2 * math.atan(32 / f), 2 * math.atan(320 / 525))
    assert cx == 31.5


def test_same_seed_same_sequence_other_seed_differs(tiny_seq: Sequence) -> None:
    again = render_sequence("test", 1, seed=3, frames=24, size=TINY)
    np.testing.assert_array_equal(again.images, tiny_seq.images)
    np.testing.assert_array_equal(again.gt_camera, tiny_seq.gt_camera)
    np.testing.assert_array_equal(again.odom_base, tiny_seq.odom_base)
    other = render_sequence("test", 1, seed=4, frames=24, size=TINY)
    assert not np.allclose(other.gt_camera, tiny_seq.gt_camera)
    assert np.abs(other.images.astype(int) - tiny_seq.images).mean() > 5
    assert tiny_seq.images.shape == (24, 48, 64, 3) and tiny_seq.images.dtype == np.uint8
    assert tiny_seq.images.std() > 10  # textured, not blank


def test_lazy_frames_match_eager(tiny_seq: Sequence) -> None:
    lazy = render_sequence("test", 1, seed=3, frames=24, size=TINY, lazy=True)
    np.testing.assert_array_equal(lazy.images[5], tiny_seq.images[5])
    np.testing.assert_array_equal(np.asarray(lazy.images), tiny_seq.images)


def test_photo_split_is_fixed_and_disjoint() -> None:
    assert not set(photos.TRAIN_PHOTOS) & set(photos.HELDOUT_PHOTOS)
    assert len(photos.HELDOUT_PHOTOS) >= len(photos.ALL_PHOTOS) // 4
    assert photos.photos_for_split("test") == photos.HELDOUT_PHOTOS
    assert photos.photos_for_split("val") == photos.TRAIN_PHOTOS
    for name in ("logo", "horse", "text"):  # RGBA, boolean and wide grey photos
        img = photos.load_photo(name)
        assert img.shape == (photos.TEXTURE_SIZE, photos.TEXTURE_SIZE, 3) and img.dtype == np.uint8
        assert img.std() > 20


def test_scenes_use_their_splits_photos(plans: list) -> None:
    for p in plans:
        pool = photos.photos_for_split(p.meta["split"])
        assert set(p.meta["photos"]) <= set(pool)
        w, length, h = p.scene.size
        assert 4 <= w <= 12 and 4 <= length <= 12 and 2.4 <= h <= 3.5
        assert 2 <= len(p.scene.boxes) <= 8
        ext = p.scene.boxes[:, 1] - p.scene.boxes[:, 0]
        assert np.all((ext >= 0.3 - 1e-9) & (ext <= 1.5 + 1e-9))
        assert all(0.5 <= m.tile <= 2.0 for m in p.scene.room_materials)
    rooms = {tuple(np.round(p.scene.size, 6)) for p in plans}
    assert len(rooms) == len(plans)


def test_trajectories_are_safe_and_within_limits(plans: list) -> None:
    for p in plans:
        base = geometry.compose(p.gt_camera, geometry.inverse(p.base_to_camera))
        xy = base[:, :2]
        assert world.clearance_at(p.scene, xy).min() >= world.CLEARANCE
        assert world.clearance_at(p.scene, p.gt_camera[:, :2]).min() >= world.CAMERA_CLEARANCE
        assert np.all(np.abs(base[:, 2]) < 1e-9)  # on the floor
        speed = np.hypot(*np.diff(xy, axis=0).T) * world.FPS
        yaw_rate = np.diff(_yaw(base[:, 3:])) * world.FPS
        assert speed.max() <= 1.0 + 1e-6 and speed.mean() > 0.15
        assert np.abs(yaw_rate).max() <= math.radians(60.0) + 1e-3
        assert np.abs(np.diff(speed)).max() * world.FPS <= world.ACCEL_MAX + 1e-3
        assert 0.3 <= p.base_to_camera[2] <= 1.5
        assert abs(p.meta["mount_pitch_deg"]) <= 10.0
        # The camera looks roughly forward: its optical axis is the base x axis pitched.
        z_axis = geometry.quat_to_matrix(p.base_to_camera[3:])[:, 2]
        assert z_axis[0] > math.cos(math.radians(10.01)) and abs(z_axis[1]) < 1e-9
        # Roll/pitch jitter exists but stays small.
        tilt = geometry.quat_to_rotvec(geometry.relative(p.trajectory.planar_poses(), base)[:, 3:])
        assert 0.05 < np.degrees(np.abs(tilt).max()) < 2.0


def test_trajectories_revisit_earlier_places(plans: list) -> None:
    gap = int(10 * world.FPS)
    for p in plans:
        cam = p.gt_camera
        heading = _yaw(geometry.compose(cam, geometry.inverse(p.base_to_camera))[:, 3:])
        found = False
        for i in range(0, len(cam) - gap, 5):
            j = np.arange(i + gap, len(cam))
            near = np.hypot(*(cam[j, :2] - cam[i, :2]).T) < 0.5
            dh = np.abs((heading[j] - heading[i] + np.pi) % (2 * np.pi) - np.pi)
            if np.any(near & (dh < math.radians(30))):
                found = True
                break
        assert found, f"{p.meta['split']} {p.meta['index']}: no revisit"


def test_odometry_error_matches_recorded_scale_and_bias(plans: list) -> None:
    for p in plans:
        odom = p.odometry
        np.testing.assert_allclose(odom.poses[0], geometry.IDENTITY, atol=1e-12)
        true = world.planar_steps(p.trajectory.xy, p.trajectory.yaw)
        meas = geometry.relative(odom.poses[:-1], odom.poses[1:])
        dist_true = np.hypot(true[1:, 0], true[1:, 1]).sum()
        dist_meas = np.hypot(meas[:, 0], meas[:, 1]).sum()
        assert 0.01 <= abs(odom.scale - 1) <= 0.05
        assert dist_meas / dist_true == pytest.approx(odom.scale, abs=0.004)
        yaw_err = np.sum(_yaw(odom.poses[1:, 3:]) - _yaw(odom.poses[:-1, 3:]) - true[1:, 2])
        assert yaw_err == pytest.approx(odom.yaw_bias[1:].sum(), abs=0.03)
        assert 0.1e-3 <= np.abs(odom.yaw_bias).min() and np.abs(odom.yaw_bias).max() <= 1.2e-3
        # Balanced signs across a split: even indices drift one way, odd the other.
        assert np.sign(odom.yaw_bias.mean()) == (1 if p.meta["index"] % 2 == 0 else -1)
        # Odometry is planar: it never sees the roll/pitch jitter.
        assert np.abs(odom.poses[:, [2, 3, 4]]).max() < 1e-12


def _shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    ga = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float64)
    gb = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float64)
    h, w = ga.shape
    crop = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))
    win = cv2.createHanningWindow((w // 2, h // 2), cv2.CV_64F)
    (dx, dy), _ = cv2.phaseCorrelate(ga[crop], gb[crop], win)
    return dx, dy


def test_image_motion_agrees_with_ground_truth() -> None:
    plan = plan_sequence("val", 2, seed=5, frames=2)
    size = (160, 120)
    renderer = Renderer(plan.scene, size)
    f = intrinsics_for_size(*size)[0]
    pose = plan.gt_camera[0]
    img = renderer.render(pose)
    # Pin phaseCorrelate's sign convention with a known synthetic shift first.
    ref_dx, _ = _shift(img, np.roll(img, 3, axis=1))
    assert abs(abs(ref_dx) - 3) < 0.5
    sign = np.sign(ref_dx)
    angle = math.radians(4.0)
    # Turning left (about the optical -y axis, i.e. world up) moves the scene right.
    left = geometry.compose(
        pose, np.concatenate([[0, 0, 0], geometry.rotvec_to_quat(np.array([0, -angle, 0]))])
    )
    dx, dy = _shift(img, renderer.render(left))
    assert sign * dx == pytest.approx(f * math.tan(angle), rel=0.15)
    assert abs(dy) < 1.0
    # Tilting down (a negative turn about the optical +x axis) moves the scene up.
    down = geometry.compose(
        pose, np.concatenate([[0, 0, 0], geometry.rotvec_to_quat(np.array([-angle, 0, 0]))])
    )
    dx, dy = _shift(img, renderer.render(down))
    assert sign * dy == pytest.approx(-f * math.tan(angle), rel=0.15)
    assert abs(dx) < 1.0


def test_mirror_is_consistent(tiny_seq: Sequence) -> None:
    m = mirror(tiny_seq)
    np.testing.assert_array_equal(m.images, tiny_seq.images[:, :, ::-1])
    assert m.name.endswith("_mirror") and m.meta["mirrored"]
    np.testing.assert_allclose(m.yaw_bias, -tiny_seq.yaw_bias)
    back = mirror(m)
    np.testing.assert_allclose(back.gt_camera, tiny_seq.gt_camera, atol=1e-12)
    np.testing.assert_allclose(back.odom_base, tiny_seq.odom_base, atol=1e-12)
    np.testing.assert_allclose(back.base_to_camera, tiny_seq.base_to_camera, atol=1e-12)

    def odom_camera_motion(s: Sequence) -> np.ndarray:
        rel = geometry.relative(s.odom_base[:-1], s.odom_base[1:])
        mount = np.broadcast_to(s.base_to_camera, rel.shape)
        return geometry.compose(geometry.inverse(mount), geometry.compose(rel, mount))

    # The mirrored odometry, carried to the camera by the mirrored mount, is exactly the
    # mirrored camera motion of the original odometry...
    np.testing.assert_allclose(
        odom_camera_motion(m), geometry.mirror_pose(odom_camera_motion(tiny_seq)), atol=1e-9
    )


def test_mirrored_ground_truth_moves_as_mirrored_odometry_says() -> None:
    plan = plan_sequence("train", 0, 2, 300)
    seq = Sequence(
        name="plan",
        images=np.zeros((300, 2, 2, 3), np.uint8),
        stamps=plan.stamps,
        gt_camera=plan.gt_camera,
        odom_base=plan.odometry.poses,
        base_to_camera=plan.base_to_camera,
        intrinsics=intrinsics_for_size(2, 2),
        odom_scale=plan.odometry.scale,
        yaw_bias=plan.odometry.yaw_bias,
    )
    m = mirror(seq)
    turned = 0.0
    for k in range(0, 270, 30):
        yaws = []
        for s in (seq, m):
            gt_rel = geometry.relative(s.gt_camera[k], s.gt_camera[k + 30])
            od_rel = geometry.relative(
                geometry.compose(s.odom_base[k], s.base_to_camera),
                geometry.compose(s.odom_base[k + 30], s.base_to_camera),
            )
            np.testing.assert_allclose(
                gt_rel[:3], od_rel[:3], atol=0.02 + 0.06 * np.linalg.norm(gt_rel[:3])
            )
            # Yaw is a turn about the optical -y axis (world up); odometry is off by its bias.
            gt_yaw, od_yaw = (
                -geometry.quat_to_rotvec(gt_rel[3:])[1],
                -geometry.quat_to_rotvec(od_rel[3:])[1],
            )
            assert gt_yaw == pytest.approx(od_yaw, abs=0.035)
            yaws.append(gt_yaw)
        assert yaws[1] == pytest.approx(-yaws[0], abs=1e-9)
        turned += abs(yaws[0])
    assert turned > 0.3  # the check saw real turns


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_rosbag2_round_trip(tiny_seq: Sequence, tmp_path: Path, storage: str) -> None:
    from rosbags.highlevel import AnyReader
    from rosbags.interfaces import QosDurability

    out = write_rosbag2(tiny_seq, tmp_path / "bag", storage=storage)
    assert not (tmp_path / "bag.tmp").exists()
    with pytest.raises(FileExistsError):
        write_rosbag2(tiny_seq, tmp_path / "bag", storage=storage)
    counts: dict[str, int] = {}
    with AnyReader([out]) as reader:
        topics = {c.topic: c for c in reader.connections}
        assert set(topics) == {
            "/camera/image_raw",
            "/camera/camera_info",
            "/odom",
            "/ground_truth/pose",
            "/tf_static",
        }
        qos = topics["/tf_static"].ext.offered_qos_profiles
        assert qos and qos[0].durability == QosDurability.TRANSIENT_LOCAL
        stamps: dict[str, list[int]] = {}
        for conn, t, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            counts[conn.topic] = counts.get(conn.topic, 0) + 1
            if conn.topic == "/tf_static":
                tr = msg.transforms[0]
                assert (tr.header.frame_id, tr.child_frame_id) == (
                    "base_link",
                    "camera_optical_frame",
                )
                r = tr.transform.rotation
                np.testing.assert_allclose(
                    [
                        tr.transform.translation.x,
                        tr.transform.translation.y,
                        tr.transform.translation.z,
                        r.x,
                        r.y,
                        r.z,
                        r.w,
                    ],
                    tiny_seq.base_to_camera,
                )
                continue
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            assert stamp == t
            stamps.setdefault(conn.topic, []).append(stamp)
            i = len(stamps[conn.topic]) - 1
            if conn.topic == "/camera/image_raw" and i == 5:
                assert (msg.encoding, msg.width, msg.height, msg.step) == ("rgb8", 64, 48, 192)
                assert msg.header.frame_id == "camera_optical_frame"
                assert bytes(msg.data) == tiny_seq.images[5].tobytes()
            if conn.topic == "/ground_truth/pose" and i == 7:
                assert msg.header.frame_id == "world"
                p, q = msg.pose.position, msg.pose.orientation
                np.testing.assert_allclose(
                    [p.x, p.y, p.z, q.x, q.y, q.z, q.w], tiny_seq.gt_camera[7]
                )
            if conn.topic == "/odom" and i == 9:
                assert (msg.header.frame_id, msg.child_frame_id) == ("odom", "base_link")
                p, q = msg.pose.pose.position, msg.pose.pose.orientation
                np.testing.assert_allclose(
                    [p.x, p.y, p.z, q.x, q.y, q.z, q.w], tiny_seq.odom_base[9]
                )
                step = geometry.relative(tiny_seq.odom_base[8], tiny_seq.odom_base[9])
                assert msg.twist.twist.linear.x == pytest.approx(step[0] * 30.0, rel=1e-3, abs=1e-9)
            if conn.topic == "/camera/camera_info" and i == 0:
                np.testing.assert_allclose(
                    np.asarray(msg.k)[[0, 4, 2, 5]], tiny_seq.intrinsics[[0, 1, 2, 3]]
                )
                assert msg.distortion_model == "plumb_bob" and not np.any(msg.d)
    n = len(tiny_seq)
    assert counts == {
        "/tf_static": 1,
        "/camera/image_raw": n,
        "/camera/camera_info": n,
        "/odom": n,
        "/ground_truth/pose": n,
    }
    for topic_stamps in stamps.values():
        np.testing.assert_array_equal(topic_stamps, stamps_ns(tiny_seq))
    meta = (out / "metadata.yaml").read_text()
    assert "latent_memory" in meta and "odom_scale" in meta


def test_tum_export_parses(tiny_seq: Sequence, tmp_path: Path) -> None:
    out = write_tum(tiny_seq, tmp_path / "tum")
    rgb = [
        line.split()
        for line in (out / "rgb.txt").read_text().splitlines()
        if not line.startswith("#")
    ]
    assert len(rgb) == len(tiny_seq)
    gt = np.loadtxt(out / "groundtruth.txt", comments="#")
    odom = np.loadtxt(out / "odometry.txt", comments="#")
    assert gt.shape == odom.shape == (len(tiny_seq), 8)
    np.testing.assert_allclose(gt[:, 0], tiny_seq.stamps, atol=1e-6)
    np.testing.assert_allclose(gt[:, 1:], tiny_seq.gt_camera, atol=1e-8)
    np.testing.assert_allclose(odom[:, 1:], tiny_seq.odom_base, atol=1e-8)
    assert [float(r[0]) for r in rgb] == pytest.approx(list(gt[:, 0]), abs=1e-9)
    img = cv2.cvtColor(cv2.imread(str(out / rgb[4][1])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(img, tiny_seq.images[4])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["odom_scale"] == tiny_seq.odom_scale and meta["split"] == "test"


def test_npz_cache_round_trip(tiny_seq: Sequence, tmp_path: Path) -> None:
    tiny_seq.save(tmp_path / "s.npz")
    back = Sequence.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.images, tiny_seq.images)
    np.testing.assert_array_equal(back.yaw_bias, tiny_seq.yaw_bias)
    assert back.meta["room_size"] == tiny_seq.meta["room_size"]
