"""Cameras like real ones (world.md v2): what a run's camera does to the rendered image.

A :class:`CameraProfile` is drawn once per sequence: field of view (the intrinsics it
records), frame rate, exposure and per-frame gain, lighting, motion blur, sensor noise,
vignetting, JPEG artefacts, grey (mono8) output and the texture scale of its room. The
renderer gives the clean image; :meth:`CameraProfile.apply` turns it into what that
camera would have delivered, deterministically from the sequence's seed and the frame
index. :data:`REFERENCE` is the v1 camera (TUM RGB-D geometry, 30 Hz, no artefacts).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from .render import BASE_FOCAL, BASE_SIZE

HFOV_RANGE_DEG = (45.0, 100.0)
FPS_CHOICES = (10.0, 15.0, 20.0, 30.0, 30.0, 60.0)  # 30 Hz twice: the most common rate


@dataclass(frozen=True)
class CameraProfile:
    hfov_deg: float = math.degrees(2 * math.atan(BASE_SIZE[0] / 2 / BASE_FOCAL))
    principal_offset: tuple[float, float] = (0.0, 0.0)  # of cx, cy, as a share of W, H
    fps: float = 30.0
    exposure: float = 1.0  # overall gain (lighting times exposure time times gain)
    gain_wander: float = 0.0  # relative std of the slow per-frame auto-exposure change
    blur: float = 0.0  # exposure time as a share of the frame period (motion blur)
    read_noise: float = 0.0  # std in 8-bit levels
    shot_noise: float = 0.0  # std per sqrt(level)
    vignetting: float = 0.0  # brightness loss at the image corners
    jpeg_quality: int = 0  # 0: no compression
    mono: bool = False
    texture_scale: float = 1.0  # multiplies the room's tile sizes
    seed: int = 0

    @property
    def clean(self) -> bool:
        """No artefacts: the image is the renderer's, untouched."""
        return (
            self.exposure == 1.0
            and self.gain_wander == 0.0
            and self.blur == 0.0
            and self.read_noise == 0.0
            and self.shot_noise == 0.0
            and self.vignetting == 0.0
            and self.jpeg_quality == 0
            and not self.mono
        )

    def intrinsics(self, width: int, height: int) -> np.ndarray:
        """(fx, fy, cx, cy) at ``width`` x ``height``: square pixels, the horizontal field
        of view of the profile."""
        f = (width / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)
        cx = (width - 1) / 2.0 + self.principal_offset[0] * width
        cy = (height - 1) / 2.0 + self.principal_offset[1] * height
        return np.array([f, f, cx, cy])

    def to_meta(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def frame_gains(self, frames: int) -> np.ndarray:
        """(T,) the per-frame exposure: a slow wander (seconds) around ``exposure``."""
        if self.gain_wander == 0.0:
            return np.full(frames, self.exposure)
        rng = np.random.default_rng([self.seed, 0xE7])
        sigma = max(self.fps * 2.0, 1.0)
        half = int(3 * sigma) + 1
        k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
        x = np.convolve(rng.normal(size=frames + 2 * half), k / k.sum(), mode="valid")
        x /= max(float(x.std()), 1e-12)
        return self.exposure * np.clip(1.0 + self.gain_wander * x, 0.5, 1.5)

    def apply(self, image: np.ndarray, index: int, gain: float, blur_px: float) -> np.ndarray:
        """What the camera delivers for the clean ``image`` (uint8 HxWx3) of frame
        ``index``: ``gain`` from :meth:`frame_gains`, ``blur_px`` the image motion during
        one frame period (pixels, horizontal: yaw dominates a ground robot's flow)."""
        if self.clean:
            return image
        img = image.astype(np.float32)
        length = self.blur * blur_px
        if length >= 1.5:
            k = int(round(length)) | 1  # odd: the kernel stays centred
            img = cv2.blur(img, (k, 1))
        h, w = img.shape[:2]
        if self.vignetting > 0.0:
            img *= _vignette(w, h, self.vignetting)[..., None]
        img *= gain
        if self.read_noise > 0.0 or self.shot_noise > 0.0:
            rng = np.random.default_rng([self.seed, int(index)])
            std = np.sqrt(self.read_noise**2 + self.shot_noise**2 * np.maximum(img, 0.0))
            img += rng.standard_normal(img.shape, dtype=np.float32) * std
        out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        if self.mono:
            out = np.repeat(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
        if self.jpeg_quality > 0:
            ok, buf = cv2.imencode(
                ".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality]
            )
            out = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
        return out


REFERENCE = CameraProfile()


def random_profile(rng: np.random.Generator) -> CameraProfile:
    """A camera as real robots carry them (world.md v2); every effect is sometimes off."""

    def sometimes(p: float, low: float, high: float) -> float:
        return float(rng.uniform(low, high)) if rng.random() < p else 0.0

    return CameraProfile(
        hfov_deg=float(rng.uniform(*HFOV_RANGE_DEG)),
        principal_offset=(float(rng.normal(0, 0.01)), float(rng.normal(0, 0.01))),
        fps=float(rng.choice(FPS_CHOICES)),
        exposure=float(np.exp(rng.uniform(math.log(0.55), math.log(1.6)))),
        gain_wander=sometimes(0.5, 0.02, 0.12),
        blur=sometimes(0.6, 0.1, 0.8),
        read_noise=sometimes(0.8, 0.5, 4.0),
        shot_noise=sometimes(0.6, 0.1, 0.6),
        vignetting=sometimes(0.6, 0.1, 0.5),
        jpeg_quality=int(rng.integers(40, 96)) if rng.random() < 0.4 else 0,
        mono=bool(rng.random() < 0.25),
        texture_scale=float(np.exp(rng.uniform(math.log(0.6), math.log(1.6)))),
        seed=int(rng.integers(2**31)),
    )


_VIGNETTES: dict[tuple[int, int, float], np.ndarray] = {}


def _vignette(w: int, h: int, strength: float) -> np.ndarray:
    key = (w, h, strength)
    if key not in _VIGNETTES:
        x = (np.arange(w) - (w - 1) / 2) / (w / 2)
        y = (np.arange(h) - (h - 1) / 2) / (w / 2)
        r2 = (x[None, :] ** 2 + y[:, None] ** 2) / (1 + (h / w) ** 2)
        _VIGNETTES.clear()  # one camera at a time per process: keep one
        _VIGNETTES[key] = (1.0 - strength * r2).astype(np.float32)
    return _VIGNETTES[key]
