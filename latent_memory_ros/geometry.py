"""Rigid-body helpers on numpy arrays, shared by the runtime, the evaluation and training.

Poses are ``xyz_qxyzw`` arrays of shape ``(..., 7)``: translation in metres, then a unit
quaternion (x, y, z, w). ``T_a_b`` reads "pose of frame b expressed in frame a".

What runs once per frame in the node (quaternion product, rotation of vectors, to a
matrix, to and from a rotation vector; :func:`compose`, :func:`inverse`,
:func:`relative`, :func:`interpolate` on them) is plain numpy; the rest
(:func:`matrix_to_quat`, :func:`euler_to_quat`) is scipy.spatial.transform, imported
when first used, so the node does not load scipy. Per call on one pose, side by side
on this 2-core machine under load (docs/benchmarks.md, "Node restructuring (issue 13)"),
scipy / numpy: quat_multiply 2.4-2.9, rotvec_to_quat 1.3-2.3, quat_to_rotvec 0.9-1.0,
quat_to_matrix 0.4-0.5, quat_rotate 0.5-0.6. The last two are faster in scipy but stay
numpy: scipy raises on a NaN or zero quaternion where numpy carries the NaN through, and
the node, the evaluation and the TF chains rely on NaN poses passing (``Track``'s
unknown stamps, an untrained model's output).
"""

from __future__ import annotations

import numpy as np

IDENTITY = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])

# Rotation from a REP 103 body frame (x forward, y left, z up) to the camera optical
# frame (x right, y down, z forward): columns are the optical axes in body coordinates.
R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def quat_normalize(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax, ay, az, aw = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bx, by, bz, bw = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ],
        axis=-1,
    )


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return np.concatenate([-q[..., :3], q[..., 3:]], axis=-1)


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors ``v`` (..., 3) by unit quaternions ``q`` (..., 4)."""
    q = np.asarray(q, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    u, w = q[..., :3], q[..., 3:]
    t = 2.0 * np.cross(u, v)
    return v + w * t + np.cross(u, t)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = np.moveaxis(quat_normalize(q), -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=-2,
    )


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) to quaternions (..., 4) with w >= 0; a matrix with a
    non-finite entry gives NaN."""
    from scipy.spatial.transform import Rotation

    m = np.asarray(m, dtype=np.float64)
    q = np.full(m.shape[:-2] + (4,), np.nan)
    finite = np.all(np.isfinite(m), axis=(-2, -1))
    if np.any(finite):
        q[finite] = Rotation.from_matrix(m[finite]).as_quat(canonical=True)
    return q


def rotvec_to_quat(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    angle = np.linalg.norm(v, axis=-1, keepdims=True)
    half = 0.5 * angle
    # sin(x/2)/x -> 1/2 as x -> 0
    scale = np.where(angle > 1e-12, np.sin(half) / np.maximum(angle, 1e-12), 0.5)
    return np.concatenate([v * scale, np.cos(half)], axis=-1)


def quat_to_rotvec(q: np.ndarray) -> np.ndarray:
    q = quat_normalize(q)
    q = q * np.where(q[..., 3:] < 0, -1.0, 1.0)
    s = np.linalg.norm(q[..., :3], axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s, q[..., 3:])
    scale = np.where(s > 1e-12, angle / np.maximum(s, 1e-12), 2.0)
    return q[..., :3] * scale


def euler_to_quat(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Intrinsic z-y-x (yaw, then pitch, then roll) angles to a quaternion; for arrays of
    angles, the components come first: ``(4, ...)``."""
    from scipy.spatial.transform import Rotation

    angles = np.stack(np.broadcast_arrays(yaw, pitch, roll), axis=-1).astype(np.float64)
    q = Rotation.from_euler("ZYX", angles.reshape(-1, 3)).as_quat()
    return np.moveaxis(q.reshape(angles.shape[:-1] + (4,)), -1, 0)


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``T_a_c = T_a_b * T_b_c`` for poses ``a = T_a_b`` and ``b = T_b_c``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    t = a[..., :3] + quat_rotate(a[..., 3:], b[..., :3])
    return np.concatenate([t, quat_normalize(quat_multiply(a[..., 3:], b[..., 3:]))], axis=-1)


def inverse(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    qi = quat_conjugate(a[..., 3:])
    return np.concatenate([-quat_rotate(qi, a[..., :3]), qi], axis=-1)


def relative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``T_a_b`` from two poses in a common frame: ``inverse(a) * b``."""
    return compose(inverse(a), b)


def interpolate(a: np.ndarray, b: np.ndarray, fraction: float) -> np.ndarray:
    """The pose ``fraction`` of the way from ``a`` to ``b`` (constant twist between them)."""
    step = relative(a, b)
    partial = np.concatenate(
        [step[:3] * fraction, rotvec_to_quat(quat_to_rotvec(step[3:]) * fraction)]
    )
    return compose(a, partial)


def to_matrix(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    m = np.zeros(p.shape[:-1] + (4, 4))
    m[..., :3, :3] = quat_to_matrix(p[..., 3:])
    m[..., :3, 3] = p[..., :3]
    m[..., 3, 3] = 1.0
    return m


def from_matrix(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.concatenate([m[..., :3, 3], matrix_to_quat(m[..., :3, :3])], axis=-1)


def integrate(steps: np.ndarray, start: np.ndarray = IDENTITY) -> np.ndarray:
    """Chain relative motions ``(T, 7)`` into poses; pose 0 is ``start`` composed with step 0."""
    out = np.empty((len(steps), 7))
    pose = np.asarray(start, dtype=np.float64)
    for i, step in enumerate(steps):
        pose = compose(pose, step)
        out[i] = pose
    return out


def mirror_pose(p: np.ndarray) -> np.ndarray:
    """Mirror a camera-optical pose left-right (x -> -x): what flipping the image does."""
    p = np.asarray(p, dtype=np.float64)
    # Reflection S = diag(-1, 1, 1): t -> S t, R -> S R S, which for a quaternion
    # negates the y and z components of the vector part.
    return np.concatenate(
        [-p[..., 0:1], p[..., 1:3], p[..., 3:4], -p[..., 4:6], p[..., 6:7]], axis=-1
    )
