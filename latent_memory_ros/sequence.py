"""One recorded run: what the renderer produces and what every reader returns.

The same record comes from the synthetic world, from a cached render (``.npz``) and
from a user's recordings (rosbag2, TUM RGB-D, EuRoC, KITTI: :mod:`latent_memory_ros.datasets`),
so training, evaluation and export never care where frames came from. It lives in the
ROS-free core so that both the node-side evaluation and the training package (which
imports it) can use the readers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latent_memory_ros.atomic import atomic_path


@dataclass
class Sequence:
    name: str
    images: np.ndarray  # (T, H, W, 3) uint8 rgb8, or an array-like that decodes on access
    stamps: np.ndarray  # (T,) float64 seconds
    gt_camera: np.ndarray  # (T, 7) camera optical frame in the world frame, xyz_qxyzw
    odom_base: np.ndarray  # (T, 7) wheel odometry: base frame in the odom frame; NaN rows: none
    base_to_camera: np.ndarray  # (7,) camera optical frame in the base frame (mount)
    intrinsics: np.ndarray  # (4,) fx, fy, cx, cy for this image size
    odom_scale: float = 1.0  # multiplicative scale error of the wheel odometry
    yaw_bias: np.ndarray | None = None  # (T,) odometry yaw drift, rad per frame
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the images."""
        return int(self.images.shape[2]), int(self.images.shape[1])

    def save(self, path: Path) -> None:
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                images=self.images,
                stamps=self.stamps,
                gt_camera=self.gt_camera,
                odom_base=self.odom_base,
                base_to_camera=self.base_to_camera,
                intrinsics=self.intrinsics,
                odom_scale=np.float64(self.odom_scale),
                yaw_bias=self.yaw_bias if self.yaw_bias is not None else np.zeros(len(self)),
                meta=np.array(json.dumps({"name": self.name, **self.meta})),
            )

    @classmethod
    def load(cls, path: Path) -> Sequence:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            return cls(
                name=meta.pop("name"),
                images=z["images"],
                stamps=z["stamps"],
                gt_camera=z["gt_camera"],
                odom_base=z["odom_base"],
                base_to_camera=z["base_to_camera"],
                intrinsics=z["intrinsics"],
                odom_scale=float(z["odom_scale"]),
                yaw_bias=z["yaw_bias"],
                meta=meta,
            )
