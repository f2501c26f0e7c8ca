"""geometry.py: the scipy-backed conversions against the numpy ones they pair with, and
NaN poses carried through the per-frame functions."""

from __future__ import annotations

import numpy as np

from latent_memory_ros import geometry, messages

RNG = np.random.default_rng(5)


def random_quats(n: int) -> np.ndarray:
    q = geometry.quat_normalize(RNG.normal(size=(n, 4)))
    return q * np.where(q[:, 3:] < 0, -1.0, 1.0)


def test_matrix_to_quat_inverts_quat_to_matrix_with_w_positive() -> None:
    q = random_quats(200)
    np.testing.assert_allclose(geometry.matrix_to_quat(geometry.quat_to_matrix(q)), q, atol=1e-12)
    one = geometry.matrix_to_quat(geometry.quat_to_matrix(q[0]))
    assert one.shape == (4,)
    grid = geometry.matrix_to_quat(geometry.quat_to_matrix(q[:6].reshape(2, 3, 4)))
    np.testing.assert_allclose(grid.reshape(6, 4), q[:6], atol=1e-12)
    pose = np.concatenate([[1.0, -2.0, 3.0], q[1]])
    np.testing.assert_allclose(geometry.from_matrix(geometry.to_matrix(pose)), pose, atol=1e-12)


def test_matrix_to_quat_gives_nan_for_a_non_finite_matrix() -> None:
    m = geometry.quat_to_matrix(random_quats(3))
    m[1, 0, 2] = np.nan
    q = geometry.matrix_to_quat(m)
    assert np.all(np.isnan(q[1])) and np.all(np.isfinite(q[[0, 2]]))


def test_euler_to_quat_is_yaw_then_pitch_then_roll() -> None:
    def about(axis: int, angle: float) -> np.ndarray:
        return geometry.rotvec_to_quat(np.eye(3)[axis] * angle)

    for roll, pitch, yaw in RNG.uniform(-3, 3, size=(50, 3)):
        expected = geometry.quat_multiply(
            geometry.quat_multiply(about(2, yaw), about(1, pitch)), about(0, roll)
        )
        got = geometry.euler_to_quat(roll, pitch, yaw)
        assert got.shape == (4,)
        assert min(np.abs(got - expected).max(), np.abs(got + expected).max()) < 1e-12
    yaw = np.linspace(-3, 3, 7)
    zero = np.zeros_like(yaw)
    batch = geometry.euler_to_quat(zero, zero, yaw)
    assert batch.shape == (4, 7)  # components first, as world.py reads it
    np.testing.assert_allclose(batch[2], np.sin(yaw / 2), atol=1e-12)
    np.testing.assert_allclose(batch[3], np.cos(yaw / 2), atol=1e-12)


def test_the_arrow_marker_quaternion_is_the_optical_frame_rotation() -> None:
    np.testing.assert_allclose(
        messages.Q_OPTICAL_ARROW, geometry.matrix_to_quat(geometry.R_BODY_OPTICAL.T), atol=1e-15
    )


def test_nan_poses_pass_through_the_per_frame_functions() -> None:
    nan = np.full(7, np.nan)
    good = np.concatenate([[1.0, 2.0, 3.0], random_quats(1)[0]])
    for out in (
        geometry.compose(nan, good),
        geometry.inverse(nan),
        geometry.relative(good, nan),
        geometry.quat_to_matrix(nan[3:]),
        geometry.quat_to_rotvec(nan[3:]),
    ):
        assert np.all(np.isnan(out))
