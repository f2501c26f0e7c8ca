"""Rigid-body helpers on numpy arrays, shared by the runtime, the evaluation and training.

Poses are ``xyz_qxyzw`` arrays of shape ``(..., 7)``: translation in metres, then a unit
quaternion (x, y, z, w). ``T_a_b`` reads "pose of frame b expressed in frame a".
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
    """Rotation matrices (..., 3, 3) to quaternions (..., 4) with w >= 0."""
    m = np.asarray(m, dtype=np.float64)
    t = np.stack(
        [
            1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
            1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
            1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2],
            1 + m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2],
        ],
        axis=-1,
    )
    # Shepperd's method: build the quaternion from its largest component for stability.
    k = np.argmax(t, axis=-1)
    q = np.empty(m.shape[:-2] + (4,))
    s = np.sqrt(np.take_along_axis(t, k[..., None], -1)[..., 0]) * 2.0
    r = {
        0: lambda: (
            s / 4,
            (m[..., 0, 1] + m[..., 1, 0]) / s,
            (m[..., 0, 2] + m[..., 2, 0]) / s,
            (m[..., 2, 1] - m[..., 1, 2]) / s,
        ),
        1: lambda: (
            (m[..., 0, 1] + m[..., 1, 0]) / s,
            s / 4,
            (m[..., 1, 2] + m[..., 2, 1]) / s,
            (m[..., 0, 2] - m[..., 2, 0]) / s,
        ),
        2: lambda: (
            (m[..., 0, 2] + m[..., 2, 0]) / s,
            (m[..., 1, 2] + m[..., 2, 1]) / s,
            s / 4,
            (m[..., 1, 0] - m[..., 0, 1]) / s,
        ),
        3: lambda: (
            (m[..., 2, 1] - m[..., 1, 2]) / s,
            (m[..., 0, 2] - m[..., 2, 0]) / s,
            (m[..., 1, 0] - m[..., 0, 1]) / s,
            s / 4,
        ),
    }
    for case, build in r.items():
        sel = k == case
        if np.any(sel):
            q[sel] = np.stack(build(), axis=-1)[sel]
    return q * np.where(q[..., 3:] < 0, -1.0, 1.0)


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
    """Intrinsic z-y-x (yaw, then pitch, then roll) angles to a quaternion."""
    cr, sr = np.cos(roll / 2), np.sin(roll / 2)
    cp, sp = np.cos(pitch / 2), np.sin(pitch / 2)
    cy, sy = np.cos(yaw / 2), np.sin(yaw / 2)
    return np.array(
        [
            sr * cp * cy - cr * sp * sy,
            cr * sp * cy + sr * cp * sy,
            cr * cp * sy - sr * sp * cy,
            cr * cp * cy + sr * sp * sy,
        ]
    )


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
