"""Whole sequences of the synthetic world: plan, render, mirror.

``render_sequence(split, index, seed, frames)`` is a pure function of its arguments: the
same call gives the same images and poses on any machine.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from latent_memory_ros import geometry

from . import world
from .camera import REFERENCE, CameraProfile, random_profile
from .photos import photos_for_split
from .render import Renderer
from .sequence import Sequence

START_STAMP_NS = 1_700_000_000 * 10**9
# Sequences of one split start 1000 s apart so that their stamps never overlap.
STAMP_SPACING_NS = 1000 * 10**9
WORLD_SPECS = {"reference": "world.md v1", "random": "world.md v2"}
CAMERAS = tuple(WORLD_SPECS)


@dataclass
class WorldPlan:
    """Everything about a sequence except its images."""

    scene: world.Scene
    trajectory: world.Trajectory
    base_to_camera: np.ndarray
    odometry: world.Odometry
    gt_camera: np.ndarray
    stamps: np.ndarray
    meta: dict
    camera: CameraProfile


def plan_sequence(
    split: str, index: int, seed: int, frames: int, cameras: str = "reference"
) -> WorldPlan:
    """Scene, trajectory, mount, odometry and ground truth of one sequence (no rendering).

    ``cameras``: ``reference`` is world.md v1 (one camera, 30 Hz, no artefacts);
    ``random`` draws a camera as real robots carry (world.md v2, :mod:`.camera`) and
    odometry whose drift ranges down to none."""
    if frames < 2:
        raise ValueError("a sequence needs at least 2 frames")
    if cameras not in WORLD_SPECS:
        raise ValueError(f"unknown cameras '{cameras}'; choose from {', '.join(CAMERAS)}")
    v2 = cameras == "random"
    camera = random_profile(world.sequence_rng(split, seed, index, "camera")) if v2 else REFERENCE
    scene = world.make_scene(
        world.sequence_rng(split, seed, index, "scene"), photos_for_split(split)
    )
    if camera.texture_scale != 1.0:
        scene = world.scale_textures(scene, camera.texture_scale)
    mount = world.make_mount(world.sequence_rng(split, seed, index, "mount"))
    traj = world.plan_trajectory(
        world.sequence_rng(split, seed, index, "drive"), scene, frames, float(mount[0]), camera.fps
    )
    # Alternate the bias sign with the index so every split is balanced (lessons.md:
    # a learned constant yaw offset must not be able to pass for accuracy).
    sign = 1.0 if index % 2 == 0 else -1.0
    odom = world.simulate_odometry(
        world.sequence_rng(split, seed, index, "odom"),
        traj,
        sign,
        camera.fps,
        world.YAW_BIAS_RANGE_V2 if v2 else world.YAW_BIAS_RANGE,
    )
    gt_camera = geometry.compose(traj.base_poses(), mount)
    start = START_STAMP_NS + int(index) * STAMP_SPACING_NS
    stamps_ns = start + np.round(np.arange(frames) * (1e9 / camera.fps)).astype(np.int64)
    optical_z = geometry.quat_to_matrix(mount[3:])[:, 2]  # viewing direction in the base frame
    pitch = math.degrees(math.atan2(-optical_z[2], optical_z[0]))
    meta = {
        "world_spec": WORLD_SPECS[cameras],
        "split": split,
        "index": int(index),
        "seed": int(seed),
        "frames": int(frames),
        "fps": camera.fps,
        "start_stamp_ns": int(start),
        **scene.to_meta(),
        "camera_height": round(float(mount[2]), 4),
        "mount_forward": round(float(mount[0]), 4),
        # Positive: the camera looks down (REP 103 pitch of the mount).
        "mount_pitch_deg": round(pitch, 3),
        "odom_scale": float(odom.scale),
        "yaw_bias_mean": float(odom.yaw_bias.mean()),
        "yaw_bias_units": "rad per frame, added to the odometry yaw step t-1 -> t",
        "path_length": float(np.sum(np.hypot(*np.diff(traj.xy, axis=0).T))),
        "mirrored": False,
    }
    if v2:
        meta["camera"] = camera.to_meta()
        meta["encoding"] = "mono8" if camera.mono else "rgb8"
    return WorldPlan(scene, traj, mount, odom, gt_camera, stamps_ns / 1e9, meta, camera)


class LazyFrames:
    """Array-like images rendered on access, for sequences too large to hold in memory.

    ``frames[i]`` renders frame ``i``; ``np.asarray(frames)`` renders all of them.
    Writers only index and iterate, so they stream a sequence frame by frame.
    """

    def __init__(
        self,
        renderer: Renderer,
        poses: np.ndarray,
        mirrored: bool = False,
        camera: CameraProfile = REFERENCE,
        blur_px: np.ndarray | None = None,
    ) -> None:
        """``camera`` turns each clean render into what that camera delivers;
        ``blur_px`` is each frame's image motion (pixels per frame period)."""
        self.renderer = renderer
        self.poses = poses
        self.mirrored = mirrored
        self.camera = camera
        self.blur_px = np.zeros(len(poses)) if blur_px is None else blur_px
        self.gains = camera.frame_gains(len(poses))
        self.dtype = np.dtype(np.uint8)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.poses), self.renderer.height, self.renderer.width, 3)

    @property
    def ndim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.poses)

    def __getitem__(self, i: int) -> np.ndarray:
        img = self.renderer.render(self.poses[i])
        img = self.camera.apply(img, i, float(self.gains[i]), float(self.blur_px[i]))
        return np.ascontiguousarray(img[:, ::-1]) if self.mirrored else img

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        out = np.empty(self.shape, np.uint8)
        for i in range(len(self)):
            out[i] = self[i]
        return out if dtype is None else out.astype(dtype)

    def flipped(self) -> LazyFrames:
        return LazyFrames(self.renderer, self.poses, not self.mirrored, self.camera, self.blur_px)


def render_sequence(
    split: str,
    index: int,
    seed: int,
    frames: int,
    size: tuple[int, int] = (320, 240),
    lazy: bool = False,
    cameras: str = "reference",
) -> Sequence:
    """One sequence of the synthetic world, rendered at ``size`` = (width, height), with
    the ``cameras`` of :func:`plan_sequence`.

    With ``lazy=True`` the images are a :class:`LazyFrames` rendered on access (for
    streaming writers); otherwise a ``(T, H, W, 3)`` uint8 array.
    """
    plan = plan_sequence(split, index, seed, frames, cameras)
    intrinsics = plan.camera.intrinsics(*size)
    renderer = Renderer(plan.scene, size, intrinsics)
    # Image motion in one frame period, from the yaw rate (a ground robot's flow is
    # mostly its turning).
    blur_px = np.abs(plan.trajectory.w) / plan.camera.fps * intrinsics[0]
    images: np.ndarray | LazyFrames = LazyFrames(
        renderer, plan.gt_camera, camera=plan.camera, blur_px=blur_px
    )
    if not lazy:
        images = np.asarray(images)
    return Sequence(
        name=f"{split}_{index:03d}",
        images=images,  # type: ignore[arg-type]
        stamps=plan.stamps,
        gt_camera=plan.gt_camera,
        odom_base=plan.odometry.poses,
        base_to_camera=plan.base_to_camera,
        intrinsics=intrinsics,
        odom_scale=plan.odometry.scale,
        yaw_bias=plan.odometry.yaw_bias,
        meta={**plan.meta, "size": [int(size[0]), int(size[1])]},
    )


def render_split(
    split: str,
    sequences: int,
    seed: int,
    frames: int,
    size: tuple[int, int] = (320, 240),
    lazy: bool = False,
    with_mirrored: bool = False,
    cameras: str = "reference",
) -> Iterator[Sequence]:
    """Sequences ``0 .. sequences-1`` of a split (each followed by its mirror if asked)."""
    for index in range(sequences):
        seq = render_sequence(split, index, seed, frames, size, lazy, cameras)
        yield seq
        if with_mirrored:
            yield mirror(seq)


# Reflections: the image flip is x -> -x in the optical frame; in REP 103 base and
# odom frames the same left-right flip is y -> -y.
_FLIP_OPTICAL = np.diag([-1.0, 1.0, 1.0])
_FLIP_BASE = np.diag([1.0, -1.0, 1.0])


def mirror_planar(p: np.ndarray) -> np.ndarray:
    """Mirror base/odom-frame poses left-right: y -> -y, yaw -> -yaw, roll -> -roll."""
    p = np.array(p, dtype=np.float64)
    p[..., 1] *= -1.0
    p[..., 3] *= -1.0
    p[..., 5] *= -1.0
    return p


def mirror_mount(base_to_camera: np.ndarray) -> np.ndarray:
    """The mount seen from the mirrored base and mirrored camera: S_base * T * S_optical."""
    m = geometry.to_matrix(base_to_camera)
    r = _FLIP_BASE @ m[:3, :3] @ _FLIP_OPTICAL
    t = _FLIP_BASE @ m[:3, 3]
    return np.concatenate([t, geometry.matrix_to_quat(r)])


def mirror(seq: Sequence) -> Sequence:
    """The left-right mirrored copy of a sequence.

    Images are flipped; the ground truth becomes the mirrored camera in a mirrored world
    (world x -> -x, :func:`geometry.mirror_pose`); odometry and mount are mirrored in
    their REP 103 frames (y -> -y), so the odometry's yaw bias changes sign.
    """
    images = seq.images
    if isinstance(images, LazyFrames):
        images = images.flipped()
    else:
        images = np.ascontiguousarray(images[:, :, ::-1])
    w = seq.size[0]
    k = np.array(seq.intrinsics, dtype=np.float64)
    k[2] = (w - 1) - k[2]
    meta = dict(seq.meta)
    meta["mirrored"] = not bool(meta.get("mirrored", False))
    if "yaw_bias_mean" in meta:
        meta["yaw_bias_mean"] = -float(meta["yaw_bias_mean"])
    if "boxes" in meta:
        meta["boxes"] = [
            [[-b[1][0], b[0][1], b[0][2]], [-b[0][0], b[1][1], b[1][2]]] for b in meta["boxes"]
        ]
    name = seq.name[: -len("_mirror")] if seq.name.endswith("_mirror") else seq.name + "_mirror"
    return Sequence(
        name=name,
        images=images,
        stamps=seq.stamps.copy(),
        gt_camera=geometry.mirror_pose(seq.gt_camera),
        odom_base=mirror_planar(seq.odom_base),
        base_to_camera=mirror_mount(seq.base_to_camera),
        intrinsics=k,
        odom_scale=seq.odom_scale,
        yaw_bias=None if seq.yaw_bias is None else -np.asarray(seq.yaw_bias),
        meta=meta,
    )
