"""A vectorised numpy ray caster for the synthetic rooms (no torch, no OpenGL).

Per pixel: intersect the camera ray with the room's six planes (from inside) and with
every box (slab test, only inside the box's projected screen rectangle), keep the
nearest hit, map it to metres on the hit face, and sample that face's tiled photo from
a mip pyramid with integer bilinear filtering. Shading (a per-face light factor and a
mild distance falloff) makes the geometry visible; a per-tile hash picks one of a few
recoloured variants of the photo and a brightness gain so that tiles do not repeat
exactly (a localiser must be able to tell places apart).

Camera model: pinhole, 640x480 with fx = fy = 525, cx = 319.5, cy = 239.5; any other
size keeps that horizontal field of view (focal scaled with the width, principal point
at the image centre), e.g. 320x240 gets 262.5 / 159.5 / 119.5.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

from latent_memory_ros import geometry

from .photos import TEXTURE_SIZE, surface_texture
from .world import Material, Scene

BASE_SIZE = (640, 480)
BASE_FOCAL = 525.0
N_LEVELS = 7  # mip levels 512 .. 8 texels
VARIANTS = 2  # recoloured variants of each face's photo, chosen per tile
_OFFSET = 65536.0  # keeps texel coordinates positive so int truncation is floor
_LOG2_S = int(math.log2(TEXTURE_SIZE))


def intrinsics_for_size(width: int, height: int) -> np.ndarray:
    """(fx, fy, cx, cy) for an image of ``width`` x ``height`` with the TUM field of view."""
    f = BASE_FOCAL * width / BASE_SIZE[0]
    return np.array([f, f, (width - 1) / 2.0, (height - 1) / 2.0])


@lru_cache(maxsize=16)
def _rays(
    width: int, height: int, intrinsics: tuple[float, float, float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera-frame ray coordinates for one camera (z = 1): x per column, y per row,
    and the per-pixel ray length."""
    fx, fy, cx, cy = intrinsics
    x = ((np.arange(width) - cx) / fx).astype(np.float32)
    y = ((np.arange(height) - cy) / fy).astype(np.float32)
    norm = np.sqrt(1.0 + x[None, :] ** 2 + y[:, None] ** 2).astype(np.float32).ravel()
    for a in (x, y, norm):
        a.setflags(write=False)
    return x, y, norm


def _texture_levels(photo: str, seed: int, variant: int) -> tuple[np.ndarray, ...]:
    """Mip pyramid of one recoloured photo, each level packed as RGBA uint32 texels."""
    img = surface_texture(photo, np.random.default_rng([seed, variant]))
    levels = []
    for _ in range(N_LEVELS):
        rgba = np.concatenate([img, np.zeros(img.shape[:2] + (1,), np.uint8)], axis=2)
        levels.append(np.ascontiguousarray(rgba).view(np.uint32).ravel())
        # The texture tiles, so a plain 2x2 average keeps the pyramid seamless.
        img = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return tuple(levels)


class Renderer:
    """Renders one scene at one image size; construct once per sequence, then call."""

    def __init__(
        self,
        scene: Scene,
        size: tuple[int, int] = (320, 240),
        intrinsics: np.ndarray | None = None,
    ) -> None:
        """``intrinsics`` (fx, fy, cx, cy) at ``size``; default: the TUM field of view."""
        self.scene = scene
        self.width, self.height = int(size[0]), int(size[1])
        if self.width < 2 or self.height < 2:
            raise ValueError(f"image size {size} too small")
        if intrinsics is None:
            intrinsics = intrinsics_for_size(self.width, self.height)
        self.intrinsics = np.asarray(intrinsics, dtype=np.float64)
        self._build_tables()

    # ------------------------------------------------------------------ setup
    def _build_tables(self) -> None:
        scene = self.scene
        materials: list[Material] = list(scene.room_materials) + list(scene.box_materials)
        n_faces = len(materials)
        focal = float(self.intrinsics[0])
        axis = np.empty(n_faces, np.int8)
        usc = np.empty(n_faces, np.float32)
        vsc = np.empty(n_faces, np.float32)
        uoff = np.empty(n_faces, np.float32)
        voff = np.empty(n_faces, np.float32)
        foot2 = np.empty(n_faces, np.float32)
        shade = np.empty(n_faces, np.float32)
        var_base = np.empty(n_faces, np.int32)
        textures: dict[tuple[str, int, int], int] = {}
        levels: list[np.ndarray] = []
        for f, m in enumerate(materials):
            is_room = f < 6
            a, side = (f % 6) // 2, f % 2
            axis[f] = a
            texels_per_m = TEXTURE_SIZE / m.tile
            # Orient u so the photo reads left-to-right for a viewer facing the surface
            # (room faces are seen from inside, box faces from outside), and v downwards.
            inward = (1.0 if side == 0 else -1.0) * (1.0 if is_room else -1.0)
            u_sign = {0: inward, 1: -inward, 2: 1.0}[a]
            usc[f] = u_sign * texels_per_m
            vsc[f] = texels_per_m if a == 2 else -texels_per_m
            uoff[f] = m.offset[0] * texels_per_m + _OFFSET
            voff[f] = m.offset[1] * texels_per_m + _OFFSET
            foot2[f] = (texels_per_m / focal) ** 2
            normal = np.zeros(3)
            normal[a] = inward
            shade[f] = np.clip(0.72 + 0.28 * float(normal @ scene.light), 0.45, 1.0)
            for k in range(VARIANTS):
                key = (m.photo, m.seed, k)
                if key not in textures:
                    textures[key] = len(textures)
                    levels.extend(_texture_levels(*key))
            var_base[f] = textures[(m.photo, m.seed, 0)]
        sizes = np.array([len(lv) for lv in levels], np.int64)
        self._atlas = np.concatenate(levels)
        self._tbase = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
        self._axis, self._usc, self._vsc = axis, usc, vsc
        self._uoff, self._voff, self._foot2 = uoff, voff, foot2
        self._shade, self._var_base = shade, var_base
        lv = np.arange(N_LEVELS)
        self._lvl_scale = (2.0**-lv).astype(np.float32)
        self._lvl_shift = (_LOG2_S - lv).astype(np.int32)
        self._lvl_mask = ((TEXTURE_SIZE >> lv) - 1).astype(np.int32)
        # Per-tile brightness gains (x256) indexed by a tile hash.
        g = np.random.default_rng([int(scene.size[0] * 1e6), 7]).uniform(0.85, 1.15, 256)
        self._tile_gain = g.astype(np.float32)
        self._boxes = scene.boxes.astype(np.float64)

    # ----------------------------------------------------------------- render
    def render(self, camera_pose: np.ndarray) -> np.ndarray:
        """Image ``(H, W, 3)`` uint8 RGB seen from ``camera_pose`` (optical frame in world, xyz_qxyzw)."""
        w, h = self.width, self.height
        xs, ys, norm = _rays(w, h, tuple(float(v) for v in self.intrinsics))
        rot = geometry.quat_to_matrix(np.asarray(camera_pose[3:], np.float64))
        o = np.asarray(camera_pose[:3], np.float64)
        r = rot.astype(np.float32)
        # World ray directions: the camera-frame ray is (x[col], y[row], 1), so each world
        # component is a column term plus a row term (one broadcast add per component).
        d = [((r[i, 0] * xs)[None, :] + (r[i, 1] * ys + r[i, 2])[:, None]) for i in range(3)]
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            inv = [np.float32(1.0) / di for di in d]
            t, face = self._room_hits(o, d, inv)
            for b in range(len(self._boxes)):
                self._box_hits(b, o, rot, d, inv, t, face)
            return self._shade_pixels(o, d, t.ravel(), face.ravel(), norm).reshape(h, w, 3)

    def _room_hits(
        self, o: np.ndarray, d: list[np.ndarray], inv: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        size = self.scene.size
        # From inside, the exit distance along each axis is the positive one of the two planes.
        ts = [
            np.maximum(np.float32(-o[i]) * inv[i], np.float32(size[i] - o[i]) * inv[i])
            for i in range(3)
        ]
        txy = np.minimum(ts[0], ts[1])
        t = np.minimum(txy, ts[2])
        fxy = np.where(ts[0] <= ts[1], (d[0] > 0).astype(np.int16), (d[1] > 0).astype(np.int16) + 2)
        face = np.where(ts[2] <= txy, (d[2] > 0).astype(np.int16) + 4, fxy).astype(np.int16)
        return t, face

    def _box_region(self, b: int, o: np.ndarray, rot: np.ndarray) -> tuple[slice, slice] | None:
        """Screen rectangle that can contain box ``b`` (None when it is behind the camera)."""
        box = self._boxes[b]
        corners = np.array(
            [[box[i, 0], box[j, 1], box[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
        )
        pc = (corners - o) @ rot  # camera-frame corners
        z = pc[:, 2]
        if np.all(z <= 1e-3):
            return None
        if np.any(z <= 1e-3):
            return slice(0, self.height), slice(0, self.width)
        fx, fy, cx, cy = self.intrinsics
        u = fx * pc[:, 0] / z + cx
        v = fy * pc[:, 1] / z + cy
        x0, x1 = max(0, int(np.floor(u.min())) - 1), min(self.width, int(np.ceil(u.max())) + 2)
        y0, y1 = max(0, int(np.floor(v.min())) - 1), min(self.height, int(np.ceil(v.max())) + 2)
        if x0 >= x1 or y0 >= y1:
            return None
        return slice(y0, y1), slice(x0, x1)

    def _box_hits(
        self,
        b: int,
        o: np.ndarray,
        rot: np.ndarray,
        d: list[np.ndarray],
        inv: list[np.ndarray],
        t: np.ndarray,
        face: np.ndarray,
    ) -> None:
        region = self._box_region(b, o, rot)
        if region is None:
            return
        box = self._boxes[b]
        near, far = [], []
        for i in range(3):
            iv = inv[i][region]
            t0 = np.float32(box[0, i] - o[i]) * iv
            t1 = np.float32(box[1, i] - o[i]) * iv
            near.append(np.minimum(t0, t1))
            far.append(np.maximum(t0, t1))
        tn = np.maximum(np.maximum(near[0], near[1]), near[2])
        tf = np.minimum(np.minimum(far[0], far[1]), far[2])
        t_reg = t[region]
        hit = (tn <= tf) & (tn > 0) & (tn < t_reg)
        if not hit.any():
            return
        n0, n1, tnh = near[0][hit], near[1][hit], tn[hit]
        ax = np.where(n0 == tnh, 0, np.where(n1 == tnh, 1, 2)).astype(np.int16)
        dsel = np.where(
            ax == 0, d[0][region][hit], np.where(ax == 1, d[1][region][hit], d[2][region][hit])
        )
        # A ray travelling towards +axis enters through the box's lower plane (side 0).
        side = (dsel < 0).astype(np.int16)
        t_reg[hit] = tnh
        face[region][hit] = 6 + 6 * b + 2 * ax + side

    def _shade_pixels(
        self, o: np.ndarray, d: list[np.ndarray], t: np.ndarray, face: np.ndarray, norm: np.ndarray
    ) -> np.ndarray:
        dx, dy, dz = (di.ravel() for di in d)
        px = np.float32(o[0]) + t * dx
        py = np.float32(o[1]) + t * dy
        pz = np.float32(o[2]) + t * dz
        ax = self._axis[face]
        a0, a2 = ax == 0, ax == 2
        tu = np.where(a0, py, px) * self._usc[face] + self._uoff[face]
        tv = np.where(a2, py, pz) * self._vsc[face] + self._voff[face]
        # Mip level from the pixel footprint on the surface: the geometric mean of its two
        # axes, dist/f and dist/(f cos), in texels.
        dn = np.abs(np.where(a0, dx, np.where(ax == 1, dy, dz)))
        dist = t * norm
        foot2 = dist * dist * self._foot2[face] * norm / np.maximum(dn, np.float32(1e-6))
        level = np.log2(np.maximum(foot2, np.float32(1e-12)))
        level = np.clip(
            (np.float32(0.5) * level + np.float32(0.35)).astype(np.int32), 0, N_LEVELS - 1
        )
        scale = self._lvl_scale[level]
        x = tu * scale - np.float32(0.5)
        y = tv * scale - np.float32(0.5)
        x0f, y0f = np.floor(x), np.floor(y)
        wx = ((x - x0f) * np.float32(16) + np.float32(0.5)).astype(np.uint16)
        wy = ((y - y0f) * np.float32(16) + np.float32(0.5)).astype(np.uint16)
        x0, y0 = x0f.astype(np.int32), y0f.astype(np.int32)
        shift = self._lvl_shift[level]
        mask = self._lvl_mask[level]
        # Tile hash: picks the photo variant and a brightness gain for this tile.
        hsh = (
            ((x0 >> shift) * np.int32(73856093))
            ^ ((y0 >> shift) * np.int32(19349663))
            ^ (face.astype(np.int32) * np.int32(83492791))
        )
        hsh ^= hsh >> 13
        tid = self._var_base[face] + (hsh & (VARIANTS - 1))
        base = self._tbase[tid * N_LEVELS + level]
        ix0 = x0 & mask
        ix1 = (x0 + 1) & mask
        row0 = base + ((y0 & mask) << shift)
        row1 = base + (((y0 + 1) & mask) << shift)
        atlas = self._atlas
        n = len(t)

        def texel(idx: np.ndarray) -> np.ndarray:
            return atlas[idx].view(np.uint8).reshape(n, 4).astype(np.uint16)

        wx1, wy1 = wx[:, None], wy[:, None]
        wx0, wy0 = 16 - wx1, 16 - wy1
        acc = texel(row0 + ix0) * (wx0 * wy0)
        acc += texel(row0 + ix1) * (wx1 * wy0)
        acc += texel(row1 + ix0) * (wx0 * wy1)
        acc += texel(row1 + ix1) * (wx1 * wy1)
        acc >>= 8
        gain = (
            self._shade[face]
            * self._tile_gain[(hsh >> 3) & 255]
            / (np.float32(1.0) + np.float32(0.035) * dist)
        )
        # Capped at 256 so 255 * g still fits in uint16.
        g = np.minimum(gain * np.float32(256.0), np.float32(256.0)).astype(np.uint16)
        acc *= g[:, None]
        acc >>= 8
        return acc[:, :3].astype(np.uint8)
