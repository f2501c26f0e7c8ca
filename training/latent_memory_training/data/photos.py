"""Real photographs used as wall, floor, ceiling and box textures.

The photos are scikit-image's bundled images, which install with the wheel and load
offline. The split into train and held-out photos is fixed here, once: held-out
scenes (the test split) must never show a photo that training saw (world.md).
Near-duplicates stay on the same side of the split (``cat`` and ``chelsea`` are the
same picture; the two stereo views of the motorcycle are almost the same picture).
"""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np

# Every texture is square and a power of two so the renderer can wrap tiled
# coordinates with a bit mask and build a mip pyramid by halving.
TEXTURE_SIZE = 512

TRAIN_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "chelsea",
    "grass",
    "horse",
    "moon",
    "page",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
    "clock",
    "cell",
    "stereo_motorcycle_left",
    "stereo_motorcycle_right",
)
HELDOUT_PHOTOS: tuple[str, ...] = (
    "coffee",
    "coins",
    "gravel",
    "rocket",
    "text",
    "retina",
    "logo",
    "microaneurysms",
)
ALL_PHOTOS: tuple[str, ...] = TRAIN_PHOTOS + HELDOUT_PHOTOS

# Which photo pool each data split draws from. Validation reuses the training photos
# (in different rooms) so that it measures generalisation to new scenes, while the
# test split measures generalisation to unseen photos as well.
SPLIT_PHOTOS: dict[str, tuple[str, ...]] = {
    "train": TRAIN_PHOTOS,
    "val": TRAIN_PHOTOS,
    "test": HELDOUT_PHOTOS,
}


def photos_for_split(split: str) -> tuple[str, ...]:
    """The photo names a scene of ``split`` ('train', 'val' or 'test') may use."""
    try:
        return SPLIT_PHOTOS[split]
    except KeyError:
        raise ValueError(
            f"unknown split {split!r}; expected one of {sorted(SPLIT_PHOTOS)}"
        ) from None


def _load_raw(name: str) -> np.ndarray:
    from skimage import data  # imported lazily: loading skimage.data costs ~0.5 s

    if name.startswith("stereo_motorcycle_"):
        left, right, _ = data.stereo_motorcycle()
        return left if name.endswith("left") else right
    if name not in ALL_PHOTOS:
        raise ValueError(f"unknown photo {name!r}")
    return getattr(data, name)()


def _to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])  # logo is RGBA: drop alpha


def _stretch_contrast(img: np.ndarray) -> np.ndarray:
    # Some photos (microaneurysms, brick) use a narrow grey range; stretching them makes
    # every surface carry trackable texture instead of a nearly flat colour.
    f = img.astype(np.float32)
    lo, hi = np.percentile(f, [1.0, 99.0])
    if hi - lo < 1.0:
        return img
    return np.clip((f - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def _make_square(img: np.ndarray) -> np.ndarray:
    # Repeat a long thin photo (text, page) along its short side rather than cropping
    # most of it away or stretching it, then centre-crop to a square.
    h, w = img.shape[:2]
    if w >= 1.4 * h:
        img = np.concatenate([img] * int(np.ceil(w / h)), axis=0)
    elif h >= 1.4 * w:
        img = np.concatenate([img] * int(np.ceil(h / w)), axis=1)
    h, w = img.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return img[y0 : y0 + s, x0 : x0 + s]


@cache
def load_photo(name: str) -> np.ndarray:
    """A photo as a read-only ``(TEXTURE_SIZE, TEXTURE_SIZE, 3)`` uint8 RGB array (cached)."""
    img = _make_square(_stretch_contrast(_to_rgb_uint8(_load_raw(name))))
    s = img.shape[0]
    interp = cv2.INTER_AREA if s > TEXTURE_SIZE else cv2.INTER_CUBIC
    img = cv2.resize(img, (TEXTURE_SIZE, TEXTURE_SIZE), interpolation=interp)
    img.setflags(write=False)
    return img


def surface_texture(name: str, rng: np.random.Generator) -> np.ndarray:
    """A randomly recoloured copy of a photo for one surface (or one tile variant).

    Random rotation/flip, contrast, colour tint, brightness and partial desaturation make
    surfaces that share a photo look different, which a localiser needs to tell walls
    apart. Returns ``(TEXTURE_SIZE, TEXTURE_SIZE, 3)`` uint8.
    """
    img = load_photo(name)
    img = np.rot90(img, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    f = img.astype(np.float32)
    mean = f.mean(axis=(0, 1), keepdims=True)
    grey = f.mean(axis=2, keepdims=True)
    sat = rng.uniform(0.3, 1.0)
    f = grey + sat * (f - grey)
    contrast = rng.uniform(0.6, 1.2)
    tint = rng.uniform(0.7, 1.3, size=3).astype(np.float32)
    tint /= tint.mean()
    brightness = rng.uniform(0.75, 1.15)
    f = ((f - mean.mean()) * contrast + mean.mean()) * tint * brightness
    return np.clip(f, 0, 255).astype(np.uint8)
