"""Scenes, robot trajectories and wheel odometry of the synthetic world (world.md, v1).

Conventions
-----------
- World frame: the room spans ``[0, W] x [0, L] x [0, H]`` (metres), z up, floor at z = 0.
- Base frame: REP 103 (x forward, y left, z up) on the floor under the robot. The ground
  truth base pose carries a small smoothed roll/pitch jitter that wheel odometry does
  not see.
- Camera: the optical frame (x right, y down, z forward), mounted on the base at
  ``base_to_camera`` = T_base_camera (forward offset, height, mount pitch).
- Odometry frame: planar; ``odom_base[0]`` is the identity. Each odometry step is the
  true planar base motion with its translation scaled by ``odom_scale`` and its yaw
  increment offset by ``yaw_bias[t]`` (rad per frame) plus small white noise.

Everything is deterministic from ``(seed, split, index)`` through :func:`sequence_rng`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
from skimage.graph import MCP_Geometric

from latent_memory_ros import geometry

FPS = 30.0
DT = 1.0 / FPS
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}

ROOM_XY_RANGE = (4.0, 12.0)
ROOM_HEIGHT_RANGE = (2.4, 3.5)
TILE_RANGE = (0.5, 2.0)
BOX_COUNT_RANGE = (2, 8)
BOX_SIZE_RANGE = (0.3, 1.5)
CAMERA_HEIGHT_RANGE = (0.3, 1.5)
MOUNT_PITCH_MAX = math.radians(10.0)
MOUNT_FORWARD_RANGE = (0.0, 0.15)
JITTER_STD = math.radians(0.3)
SPEED_RANGE = (0.2, 1.0)
YAW_RATE_MAX = math.radians(60.0)
ACCEL_MAX = 0.6  # m/s^2
YAW_ACCEL_MAX = 2.5  # rad/s^2
# The base centre keeps at least CLEARANCE (m, horizontal) from every wall and box and
# the camera at least CAMERA_CLEARANCE; paths are planned with the larger PLAN_MARGIN so
# that the controller's corner cutting never eats the guaranteed clearance.
CLEARANCE = 0.3
CAMERA_CLEARANCE = 0.2
PLAN_MARGIN = 0.6
GRID = 0.1  # planning grid resolution, metres
ODOM_SCALE_ERROR_RANGE = (0.01, 0.05)
YAW_BIAS_RANGE = (0.2e-3, 0.8e-3)  # rad per frame at 30 Hz
# v2 also draws odometry that hardly drifts: a fusion must learn to leave good odometry
# alone (shared/docs/lessons.md, "A third look").
YAW_BIAS_RANGE_V2 = (0.0, 0.8e-3)


def sequence_rng(split: str, seed: int, index: int, stream: str = "") -> np.random.Generator:
    """The random stream of one part (``stream``) of one sequence.

    Scene, mount, trajectory and odometry draw from separate streams so that changing
    how one of them is made does not reshuffle the others.
    """
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_CODES)}")
    tag = int.from_bytes(stream.encode()[:8].ljust(8, b"\0"), "little")
    return np.random.default_rng([int(seed), SPLIT_CODES[split], int(index), 0x5EED, tag])


@dataclass(frozen=True)
class Material:
    """A photo tiled over a face: one tile spans ``tile`` metres."""

    photo: str
    tile: float
    offset: tuple[float, float]  # tile phase, metres
    seed: int  # recolouring/variant seed for photos.surface_texture


@dataclass
class Scene:
    """An axis-aligned room with axis-aligned boxes standing on its floor.

    Faces are numbered ``2 * axis + side`` (side 1 is the plane at the larger
    coordinate); the room's 6 faces come first, then 6 per box.
    """

    size: np.ndarray  # (3,) W, L, H
    boxes: np.ndarray  # (B, 2, 3) min and max corners
    room_materials: tuple[Material, ...]  # 6
    box_materials: tuple[Material, ...]  # 6 per box
    light: np.ndarray = field(default_factory=lambda: np.array([0.3, 0.5, 0.8]))

    def to_meta(self) -> dict:
        return {
            "room_size": [round(float(v), 4) for v in self.size],
            "boxes": np.round(self.boxes, 4).tolist(),
            "photos": sorted({m.photo for m in self.room_materials + self.box_materials}),
        }


def clearance_at(scene: Scene, xy: np.ndarray) -> np.ndarray:
    """Horizontal distance (m) from points ``(..., 2)`` to the nearest wall or box footprint.

    Zero or negative inside a box footprint or outside the room.
    """
    xy = np.asarray(xy, dtype=np.float64)
    x, y = xy[..., 0], xy[..., 1]
    d = np.minimum(np.minimum(x, scene.size[0] - x), np.minimum(y, scene.size[1] - y))
    for b in scene.boxes:
        dx = np.maximum(np.maximum(b[0, 0] - x, x - b[1, 0]), 0.0)
        dy = np.maximum(np.maximum(b[0, 1] - y, y - b[1, 1]), 0.0)
        inside = (dx == 0) & (dy == 0)
        d = np.minimum(d, np.where(inside, -1.0, np.hypot(dx, dy)))
    return d


def _grid_centres(size: np.ndarray) -> np.ndarray:
    nx, ny = int(size[0] / GRID), int(size[1] / GRID)
    gx = (np.arange(nx) + 0.5) * size[0] / nx
    gy = (np.arange(ny) + 0.5) * size[1] / ny
    return np.stack(np.meshgrid(gx, gy, indexing="ij"), axis=-1)  # (nx, ny, 2)


def _free_component(scene: Scene, centres: np.ndarray, margin: float) -> np.ndarray:
    """Mask of the largest connected region where the clearance is at least ``margin``."""
    free = (clearance_at(scene, centres) >= margin).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(free, connectivity=8)
    if n <= 1:
        return np.zeros_like(free, dtype=bool)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == best


def _material(rng: np.random.Generator, photos: tuple[str, ...]) -> Material:
    return Material(
        photo=str(photos[rng.integers(len(photos))]),
        tile=float(rng.uniform(*TILE_RANGE)),
        offset=(float(rng.uniform(0, 2)), float(rng.uniform(0, 2))),
        seed=int(rng.integers(2**31)),
    )


def scale_textures(scene: Scene, scale: float) -> Scene:
    """The same room with every photo tile ``scale`` times larger."""

    def scaled(ms: tuple[Material, ...]) -> tuple[Material, ...]:
        return tuple(replace(m, tile=m.tile * scale) for m in ms)

    return replace(
        scene,
        room_materials=scaled(scene.room_materials),
        box_materials=scaled(scene.box_materials),
    )


def make_scene(rng: np.random.Generator, photos: tuple[str, ...]) -> Scene:
    """A random room with 2-8 boxes whose free floor stays connected."""
    size = np.array(
        [rng.uniform(*ROOM_XY_RANGE), rng.uniform(*ROOM_XY_RANGE), rng.uniform(*ROOM_HEIGHT_RANGE)]
    )
    empty = Scene(size=size, boxes=np.zeros((0, 2, 3)), room_materials=(), box_materials=())
    centres = _grid_centres(size)
    free_area = _free_component(empty, centres, PLAN_MARGIN).sum()
    target = int(rng.integers(BOX_COUNT_RANGE[0], BOX_COUNT_RANGE[1] + 1))
    boxes: list[np.ndarray] = []
    for _attempt in range(200):
        if len(boxes) >= target:
            break
        ext = rng.uniform(*BOX_SIZE_RANGE, size=3)
        lo = np.array([rng.uniform(0, size[0] - ext[0]), rng.uniform(0, size[1] - ext[1]), 0.0])
        # Furniture often stands against a wall; snapping some boxes there also keeps
        # the middle of small rooms drivable.
        if rng.random() < 0.4:
            axis = int(rng.integers(2))
            lo[axis] = 0.0 if rng.random() < 0.5 else size[axis] - ext[axis]
        box = np.stack([lo, lo + ext])
        if any(
            np.all(box[0, :2] < b[1, :2] + 0.1) and np.all(b[0, :2] < box[1, :2] + 0.1)
            for b in boxes
        ):
            continue
        trial = Scene(size=size, boxes=np.array(boxes + [box]), room_materials=(), box_materials=())
        # Reject boxes that wall off part of the room or eat too much of it, so the
        # robot can still drive loops.
        if _free_component(trial, centres, PLAN_MARGIN).sum() < 0.6 * free_area:
            continue
        boxes.append(box)
    room_materials = tuple(_material(rng, photos) for _ in range(6))
    box_materials: list[Material] = []
    for _ in boxes:
        m = _material(rng, photos)
        # One photo and colouring per box, with a fresh tile phase on each face.
        box_materials += [
            Material(m.photo, m.tile, (float(rng.uniform(0, 2)), float(rng.uniform(0, 2))), m.seed)
            for _ in range(6)
        ]
    light = rng.normal(size=3)
    light[2] = abs(light[2]) + 1.0  # light comes from above
    return Scene(
        size=size,
        boxes=np.array(boxes).reshape(-1, 2, 3),
        room_materials=room_materials,
        box_materials=tuple(box_materials),
        light=light / np.linalg.norm(light),
    )


@dataclass
class Trajectory:
    """Planar ground-robot motion at 30 Hz plus the unmodelled roll/pitch jitter."""

    xy: np.ndarray  # (T, 2) base position in the world, m
    yaw: np.ndarray  # (T,) rad, unwrapped
    v: np.ndarray  # (T,) forward speed, m/s
    w: np.ndarray  # (T,) yaw rate, rad/s
    roll: np.ndarray  # (T,) rad
    pitch: np.ndarray  # (T,) rad

    def __len__(self) -> int:
        return len(self.yaw)

    def planar_poses(self) -> np.ndarray:
        """(T, 7) base poses in the world without the jitter (what odometry models)."""
        zero = np.zeros_like(self.yaw)
        q = np.asarray(geometry.euler_to_quat(zero, zero, self.yaw)).T
        return np.concatenate([self.xy, zero[:, None], q], axis=1)

    def base_poses(self) -> np.ndarray:
        """(T, 7) true base poses in the world, jitter included."""
        q = np.asarray(geometry.euler_to_quat(self.roll, self.pitch, self.yaw)).T
        return np.concatenate([self.xy, np.zeros((len(self), 1)), q], axis=1)


def make_mount(rng: np.random.Generator) -> np.ndarray:
    """T_base_camera: camera optical frame in the base frame (forward, height, pitch)."""
    height = rng.uniform(*CAMERA_HEIGHT_RANGE)
    pitch = rng.uniform(-MOUNT_PITCH_MAX, MOUNT_PITCH_MAX)  # REP 103: positive looks down
    forward = rng.uniform(*MOUNT_FORWARD_RANGE)
    c, s = math.cos(pitch), math.sin(pitch)
    r_pitch = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    q = geometry.matrix_to_quat(r_pitch @ geometry.R_BODY_OPTICAL)
    return np.concatenate([[forward, 0.0, height], q])


def _smooth_noise(rng: np.random.Generator, n: int, sigma_frames: float) -> np.ndarray:
    """Unit-variance Gaussian-smoothed white noise of length ``n``."""
    half = int(3 * sigma_frames) + 1
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma_frames) ** 2)
    x = np.convolve(rng.normal(size=n + 2 * half), k / k.sum(), mode="valid")
    return x / max(float(x.std()), 1e-12)


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def _anchor_loop(
    rng: np.random.Generator,
    centres: np.ndarray,
    free: np.ndarray,
    clearance: np.ndarray,
    expected_length: float,
) -> list[tuple[int, int]]:
    """3-6 grid cells on a rough ellipse through the free space, in driving order.

    The loop is sized so the robot laps it at least about twice in the expected path
    length: repeated laps are what make every sequence revisit its earlier places.
    """
    cells = np.argwhere(free)
    pos = centres[free]
    room_clear = clearance[free]
    k = int(rng.integers(3, 7))
    target = float(np.clip(expected_length / 2.2, 2 * math.pi * 0.6, 60.0))
    extent = centres[-1, -1] + centres[0, 0]  # room size (W, L)
    radius = min(target / (2 * math.pi), 0.3 * float(extent.sum()) / 2)
    # Centre the loop where there is room around it, so that snapping its corners to
    # drivable cells does not flatten it into a back-and-forth shuttle.
    need = min(PLAN_MARGIN + 0.7 * radius, 0.8 * float(room_clear.max()))
    centre_pool = pos[room_clear >= need]
    best: list[tuple[int, int]] = []
    best_area = -1.0
    for _attempt in range(20):
        centre = centre_pool[rng.integers(len(centre_pool))]
        stretch = rng.uniform(0.6, 1.6)
        angles = np.linspace(0, 2 * math.pi, k, endpoint=False) + rng.uniform(0, 2 * math.pi)
        angles += rng.uniform(-0.3, 0.3, k) * 2 * math.pi / k
        radii = radius * rng.uniform(0.7, 1.3, k)
        wanted = centre + np.stack(
            [radii * stretch * np.cos(angles), radii / stretch * np.sin(angles)], 1
        )
        # Snap to the nearest drivable cell; in small or cluttered rooms the loop shrinks.
        picked: list[tuple[int, int]] = []
        for p in wanted:
            c = tuple(int(v) for v in cells[np.argmin(np.sum((pos - p) ** 2, axis=1))])
            if c not in picked:
                picked.append(c)
        poly = centres[tuple(np.array(picked).T)]
        area = 0.5 * abs(
            float(
                np.sum(poly[:, 0] * np.roll(poly[:, 1], -1) - np.roll(poly[:, 0], -1) * poly[:, 1])
            )
        )
        if area > best_area:
            best, best_area = picked, area
        if len(picked) >= 3 and area >= 0.5 * radius**2:
            break
    if len(best) < 2:
        far = np.argmax(np.sum((pos - centres[best[0]]) ** 2, axis=1))
        best.append(tuple(int(v) for v in cells[far]))
    if rng.random() < 0.5:
        best.reverse()
    return best


def _route(
    rng: np.random.Generator, scene: Scene, length_needed: float, expected_length: float
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth path through the free space that laps a loop of anchors.

    Returns points ``(N, 2)`` spaced 5 cm apart and a cruise speed per point.
    """
    centres = _grid_centres(scene.size)
    free = _free_component(scene, centres, PLAN_MARGIN)
    clearance = clearance_at(scene, centres)
    # Cheap near obstacles, infinite inside the margin: paths keep to open floor.
    cost = np.where(free, 1.0 + np.exp(-(clearance - PLAN_MARGIN) / 0.25), np.inf)
    anchors = _anchor_loop(rng, centres, free, clearance, expected_length)
    planners: dict[tuple[int, int], MCP_Geometric] = {}

    def leg(a: tuple[int, int], b: tuple[int, int]) -> np.ndarray:
        if a not in planners:
            mcp = MCP_Geometric(cost)
            mcp.find_costs([a])
            planners[a] = mcp
        return centres[tuple(np.array(planners[a].traceback(b)).T)]

    points: list[np.ndarray] = []
    speeds: list[np.ndarray] = []
    total = 0.0
    i = 0
    step = 1
    current = anchors[0]
    legs = 0
    while total < length_needed:
        # The first two laps are plain, so even a short sequence revisits its start in
        # the same direction; returns, reversals and excursions come after.
        r = rng.random() if legs >= 2 * len(anchors) else 1.0
        legs += 1
        if r < 0.08:
            # An excursion to a new place; the loop resumes from there.
            cells = np.argwhere(free)
            target = tuple(int(v) for v in cells[rng.integers(len(cells))])
        else:
            if r < 0.2 and len(anchors) > 2:
                i = int(rng.integers(len(anchors)))  # return to some earlier place
            else:
                if r < 0.28:
                    step = -step  # turn round and lap the other way
                i = (i + step) % len(anchors)
            target = anchors[i]
        if target == current:
            continue
        seg = leg(current, target)
        current = target
        if points:
            seg = seg[1:]
        if len(seg) == 0:
            continue
        points.append(seg)
        speeds.append(np.full(len(seg), rng.uniform(*SPEED_RANGE)))
        total += float(np.sum(np.hypot(*np.diff(seg, axis=0).T))) if len(seg) > 1 else 0.0
    path = np.concatenate(points)
    speed = np.concatenate(speeds)
    # Resample at 5 cm and smooth over ~1.5 m so corners become drivable curves.
    seglen = np.hypot(*np.diff(path, axis=0).T)
    keep = np.concatenate([[True], seglen > 1e-9])
    path, speed = path[keep], speed[keep]
    s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(path, axis=0).T))])
    s_new = np.arange(0.0, s[-1], 0.05)
    path = np.stack([np.interp(s_new, s, path[:, 0]), np.interp(s_new, s, path[:, 1])], axis=1)
    speed = speed[np.clip(np.searchsorted(s, s_new), 0, len(speed) - 1)]
    k = np.hanning(31)
    k /= k.sum()
    padded = np.pad(path, ((15, 15), (0, 0)), mode="edge")
    path = np.stack([np.convolve(padded[:, j], k, mode="valid") for j in range(2)], axis=1)
    return path, speed


def _speed_profile(path: np.ndarray, speed: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """Allowed speed along the path: cruise speed, capped so that following the path's
    curvature needs at most 80 % of the yaw-rate limit, and lowered ahead of slow spots
    so that braking at ``ACCEL_MAX`` reaches them in time."""
    n = len(path)
    k = 3  # curvature over +-15 cm of path
    kappa = np.zeros(n)
    if n > 2 * k:
        kappa[k:-k] = np.abs(heading[2 * k :] - heading[: -2 * k]) / (2 * k * 0.05)
    kappa = np.maximum.reduce([np.roll(kappa, j) for j in range(-4, 5)])
    limit = np.minimum(speed, 0.8 * YAW_RATE_MAX / np.maximum(kappa, 1e-3))
    limit = np.maximum(limit, 0.05)
    brake = 0.8 * ACCEL_MAX
    for i in range(n - 2, -1, -1):
        limit[i] = min(limit[i], math.sqrt(limit[i + 1] ** 2 + 2 * brake * 0.05))
    return limit


def _drive(
    path: np.ndarray, speed: np.ndarray, frames: int, speed_scale: float, dt: float = DT
) -> tuple[np.ndarray, ...]:
    """Follow the path with a pure-pursuit-like controller under speed/acceleration limits."""
    heading = np.unwrap(np.arctan2(*np.diff(path, axis=0).T[::-1]))
    heading = np.concatenate([heading, heading[-1:]])
    limit = _speed_profile(path, speed * speed_scale, heading)
    n = len(path)
    x, y = float(path[0, 0]), float(path[0, 1])
    yaw = float(heading[0])
    v = w = 0.0
    idx = 0
    out = np.empty((frames, 5))
    w_lim = 0.95 * YAW_RATE_MAX
    for t in range(frames):
        out[t] = (x, y, yaw, v, w)
        hi = min(n, idx + 40)
        d2 = (path[idx:hi, 0] - x) ** 2 + (path[idx:hi, 1] - y) ** 2
        idx += int(np.argmin(d2))
        look = min(n - 1, idx + int((0.3 + 0.4 * v) / 0.05))
        alpha = _wrap(math.atan2(path[look, 1] - y, path[look, 0] - x) - yaw)
        # Slow down while the heading error is large (e.g. turning round at a cusp).
        v_des = float(limit[idx]) * max(0.0, math.cos(min(abs(alpha), math.pi / 2))) ** 2
        v_des = min(max(v_des, 0.03), SPEED_RANGE[1])
        w_des = max(-w_lim, min(w_lim, 3.0 * alpha))
        v += max(-ACCEL_MAX * dt, min(ACCEL_MAX * dt, v_des - v))
        w += max(-YAW_ACCEL_MAX * dt, min(YAW_ACCEL_MAX * dt, w_des - w))
        mid = yaw + 0.5 * w * dt
        x += v * math.cos(mid) * dt
        y += v * math.sin(mid) * dt
        yaw += w * dt
    return out[:, 0], out[:, 1], out[:, 2], out[:, 3], out[:, 4]


def plan_trajectory(
    rng: np.random.Generator,
    scene: Scene,
    frames: int,
    mount_forward: float = 0.0,
    fps: float = FPS,
) -> Trajectory:
    """A smooth, collision-free, revisiting drive of ``frames`` frames at ``fps``
    through ``scene``."""
    dt = 1.0 / fps
    for attempt in range(6):
        path, speed = _route(rng, scene, frames * dt * SPEED_RANGE[1] + 5.0, frames * dt * 0.4)
        x, y, yaw, v, w = _drive(path, speed, frames, 1.0 - 0.12 * attempt, dt)
        xy = np.stack([x, y], axis=1)
        cam = xy + mount_forward * np.stack([np.cos(yaw), np.sin(yaw)], axis=1)
        if (
            clearance_at(scene, xy).min() >= CLEARANCE
            and clearance_at(scene, cam).min() >= CAMERA_CLEARANCE
        ):
            break
    else:
        raise RuntimeError("could not plan a collision-free trajectory")
    roll = JITTER_STD * _smooth_noise(rng, frames, 4.0)
    pitch = JITTER_STD * _smooth_noise(rng, frames, 4.0)
    return Trajectory(xy=xy, yaw=yaw, v=v, w=w, roll=roll, pitch=pitch)


@dataclass
class Odometry:
    poses: np.ndarray  # (T, 7) base in the odom frame; poses[0] is the identity
    scale: float  # translation scale factor (odometry / truth)
    yaw_bias: np.ndarray  # (T,) rad per frame added to step t-1 -> t (entry 0 copies entry 1)


def planar_steps(xy: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """(T, 3) body-frame planar motion (dx, dy, dyaw) from frame t-1 to t; row 0 is zero."""
    d = np.diff(xy, axis=0)
    c, s = np.cos(yaw[:-1]), np.sin(yaw[:-1])
    steps = np.zeros((len(yaw), 3))
    steps[1:, 0] = c * d[:, 0] + s * d[:, 1]
    steps[1:, 1] = -s * d[:, 0] + c * d[:, 1]
    steps[1:, 2] = np.diff(yaw)
    return steps


def integrate_planar(steps: np.ndarray) -> np.ndarray:
    """(T, 7) poses from body-frame planar steps; pose 0 is the identity."""
    th = np.cumsum(steps[:, 2])
    th_prev = np.concatenate([[0.0], th[:-1]])
    c, s = np.cos(th_prev), np.sin(th_prev)
    x = np.cumsum(c * steps[:, 0] - s * steps[:, 1])
    y = np.cumsum(s * steps[:, 0] + c * steps[:, 1])
    zero = np.zeros_like(th)
    q = np.asarray(geometry.euler_to_quat(zero, zero, th)).T
    return np.concatenate([np.stack([x, y, zero], axis=1), q], axis=1)


def simulate_odometry(
    rng: np.random.Generator,
    traj: Trajectory,
    bias_sign: float,
    fps: float = FPS,
    bias_range: tuple[float, float] = YAW_BIAS_RANGE,
) -> Odometry:
    """Wheel odometry: scaled translation, slowly drifting yaw bias, small white noise.
    ``bias_range`` is the bias level in rad per frame at 30 Hz (the same drift per
    second at any ``fps``)."""
    n = len(traj)
    steps = planar_steps(traj.xy, traj.yaw)
    scale = 1.0 + float(rng.choice([-1.0, 1.0]) * rng.uniform(*ODOM_SCALE_ERROR_RANGE))
    # The bias wanders slowly (~20 s correlation, +-15 %) around a per-sequence level
    # whose sign the caller balances across a split.
    level = float(np.sign(bias_sign)) * rng.uniform(*bias_range) * FPS / fps
    wander = np.clip(1.0 + 0.15 * _smooth_noise(rng, n, 200.0 * fps / FPS), 0.5, 1.5)
    bias = level * wander
    noisy = steps.copy()
    dist = np.hypot(steps[:, 0], steps[:, 1])
    noisy[:, :2] *= scale
    noisy[:, :2] += rng.normal(size=(n, 2)) * (2e-4 + 0.01 * dist)[:, None]
    noisy[:, 2] += bias + rng.normal(size=n) * (1e-4 + 0.01 * np.abs(steps[:, 2]))
    noisy[0] = 0.0
    bias[0] = bias[1] if n > 1 else bias[0]
    return Odometry(poses=integrate_planar(noisy), scale=scale, yaw_bias=bias)
