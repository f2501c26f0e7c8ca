"""Quaternion and pose arithmetic in torch, written with ops that export to ONNX.

Same conventions as ``latent_memory_ros.geometry``: poses are ``xyz_qxyzw``.
"""

from __future__ import annotations

import torch


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ax, ay, az, aw = a.unbind(-1)
    bx, by, bz, bw = b.unbind(-1)
    return torch.stack(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ],
        dim=-1,
    )


def quat_rotate(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    u, w = q[..., :3], q[..., 3:]
    t = 2.0 * torch.cross(u, v, dim=-1)
    return v + w * t + torch.cross(u, t, dim=-1)


def quat_conjugate(q: torch.Tensor) -> torch.Tensor:
    return torch.cat([-q[..., :3], q[..., 3:]], dim=-1)


def _norm(v: torch.Tensor) -> torch.Tensor:
    # Clamping under the root keeps values and gradients finite at zero; a clamp (Max)
    # survives ONNX graph optimisation where a tiny added epsilon did not.
    return torch.sqrt(torch.clamp((v * v).sum(-1, keepdim=True), min=1e-12))


def rotvec_to_quat(v: torch.Tensor) -> torch.Tensor:
    angle = _norm(v)
    half = 0.5 * angle
    return torch.cat([v * (torch.sin(half) / angle), torch.cos(half)], dim=-1)


def quat_to_rotvec(q: torch.Tensor) -> torch.Tensor:
    q = q * torch.where(q[..., 3:] < 0, -1.0, 1.0)
    s = _norm(q[..., :3])
    angle = 2.0 * torch.atan2(s, q[..., 3:])
    return q[..., :3] * (angle / s)


def compose(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    t = a[..., :3] + quat_rotate(a[..., 3:], b[..., :3])
    q = quat_multiply(a[..., 3:], b[..., 3:])
    return torch.cat([t, q / q.norm(dim=-1, keepdim=True)], dim=-1)


def inverse(a: torch.Tensor) -> torch.Tensor:
    qi = quat_conjugate(a[..., 3:])
    return torch.cat([-quat_rotate(qi, a[..., :3]), qi], dim=-1)


def relative(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return compose(inverse(a), b)


def motion_to_pose(rotvec: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    return torch.cat([trans, rotvec_to_quat(rotvec)], dim=-1)


def pose_errors(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Translation error (m) and rotation angle error (rad) between poses."""
    d = relative(target, pred)
    return _norm(d[..., :3])[..., 0], _norm(quat_to_rotvec(d[..., 3:]))[..., 0]
