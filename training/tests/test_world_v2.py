"""world.md v2: cameras like real ones, odometry that may not drift, fresh rooms without
end (the trainer's rotating pool), and a network that reads the camera's intrinsics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latent_memory_ros import cues
from latent_memory_training.data.camera import HFOV_RANGE_DEG, REFERENCE, random_profile
from latent_memory_training.data.generate import plan_sequence, render_sequence
from latent_memory_training.data.world import YAW_BIAS_RANGE_V2
from latent_memory_training.data.world_stream import RoomPool
from latent_memory_training.export.onnx_export import reference_camera
from latent_memory_training.models.config import ModelConfig
from latent_memory_training.models.student import LocalisationModel
from latent_memory_training.training.config import WorldConfig

TINY = (64, 48)


@pytest.fixture(scope="module")
def profiles() -> list:
    return [random_profile(np.random.default_rng(i)) for i in range(200)]


def test_random_cameras_cover_the_v2_ranges(profiles) -> None:
    hfov = np.array([p.hfov_deg for p in profiles])
    assert HFOV_RANGE_DEG[0] <= hfov.min() < 50 and 95 < hfov.max() <= HFOV_RANGE_DEG[1]
    assert {p.fps for p in profiles} == {10.0, 15.0, 20.0, 30.0, 60.0}
    share = {
        k: np.mean([bool(getattr(p, k)) for p in profiles])
        for k in ("mono", "jpeg_quality", "blur", "vignetting", "read_noise")
    }
    # Every effect is sometimes on and sometimes off.
    assert all(0.1 < v < 0.95 for v in share.values()), share
    assert REFERENCE.clean and not any(p.clean for p in profiles[:20] if p.read_noise > 0)


def test_a_random_camera_sequence_records_its_camera() -> None:
    seq = render_sequence("train", 2, seed=5, frames=12, size=TINY, cameras="random")
    cam = seq.meta["camera"]
    fx = seq.intrinsics[0]
    # The recorded intrinsics are the profile's field of view at the rendered size.
    assert math.degrees(2 * math.atan(TINY[0] / 2 / fx)) == pytest.approx(cam["hfov_deg"])
    np.testing.assert_allclose(np.diff(seq.stamps), 1.0 / cam["fps"], atol=1e-6)
    assert seq.meta["world_spec"] == "world.md v2" and seq.meta["fps"] == cam["fps"]
    again = render_sequence("train", 2, seed=5, frames=12, size=TINY, cameras="random")
    np.testing.assert_array_equal(seq.images, again.images)  # noise and JPEG included


def test_mono_and_artefacts_change_the_image_not_the_geometry() -> None:
    plan = plan_sequence("train", 0, 1, 4, cameras="random")
    clean = REFERENCE.intrinsics(*TINY)
    np.testing.assert_allclose(clean[0], 525 * TINY[0] / 640, rtol=1e-9)
    img = np.full((48, 64, 3), 120, np.uint8)
    img[:, :32] = (200, 50, 20)
    mono = plan.camera.__class__(mono=True, read_noise=2.0, seed=3)
    out = mono.apply(img, 0, 1.0, 0.0)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert not np.array_equal(out, mono.apply(img, 1, 1.0, 0.0))  # noise differs per frame
    blurred = plan.camera.__class__(blur=1.0).apply(img, 0, 1.0, 9.0)
    assert blurred[:, 30:34].std() < img[:, 30:34].std()  # the edge is smeared


def test_v2_odometry_sometimes_hardly_drifts_and_drifts_per_second() -> None:
    assert YAW_BIAS_RANGE_V2[0] == 0.0
    per_second = []
    for i in range(6):
        plan = plan_sequence("train", i, 2, 60, cameras="random")
        per_second.append(abs(plan.meta["yaw_bias_mean"]) * plan.camera.fps)
    # The drift per second stays within the 30 Hz range whatever the frame rate.
    assert max(per_second) <= YAW_BIAS_RANGE_V2[1] * 30 * 1.5


def test_room_pool_is_a_function_of_seed_and_step() -> None:
    world = WorldConfig(frames=16, pool=3, warm=2, room_every=2)
    kwargs = dict(seed=4, net_size=(32, 24), world=world, render_size=TINY)
    a = RoomPool(**kwargs)
    try:
        assert [s.name for s in a.sequences()] == ["train_000", "train_001"]
        a.advance(4)  # newest = warm - 1 + 4 // 2 = 3; the pool keeps the newest 3
        names = [s.name for s in a.sequences()]
        assert names == ["train_001", "train_002", "train_003"] and a.rooms_seen == 4
        assert np.isfinite(a.waited_s)
    finally:
        a.close()
    resumed = RoomPool(**kwargs, step=4)  # what --resume builds
    try:
        assert [s.name for s in resumed.sequences()] == names
        np.testing.assert_array_equal(resumed.sequences()[-1].images, a.sequences()[-1].images)
    finally:
        resumed.close()


def test_the_network_reads_the_camera() -> None:
    """The same pixels seen through another field of view are another observation."""
    torch.manual_seed(0)
    model = LocalisationModel(ModelConfig()).eval()
    image = torch.randn(1, 3, 96, 128)
    wide = torch.tensor(
        cues.normalised_intrinsics(np.array([200.0, 200.0, 319.5, 239.5]), 640, 480)
    )
    with torch.no_grad():
        a = model.encoder(image, reference_camera())
        b = model.encoder(image, wide[None].float())
    assert not torch.allclose(a, b)
    # Normalised intrinsics do not depend on the image size.
    k = np.array([525.0, 525.0, 319.5, 239.5])
    np.testing.assert_allclose(
        cues.normalised_intrinsics(k, 640, 480),
        cues.normalised_intrinsics(cues.scale_intrinsics(k, 0.2), 128, 96),
    )
