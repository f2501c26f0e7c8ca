"""From a recorded :class:`Sequence` to the arrays the trainer feeds, cached on disk.

The expensive parts (the network-size images, the two-view cues at 320x240) are computed
once per sequence and stored next to the cache as ``<name>.<width>x<height>.prep.npz``.
Everything the runtime does to a live frame is done here the same way: area resize,
cues from :mod:`latent_memory_ros.cues`, odometry turned into camera motion by
:class:`latent_memory_ros.runtime.CameraMotionFromOdometry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from latent_memory_ros import cues, geometry
from latent_memory_ros.runtime import CameraMotionFromOdometry
from latent_memory_training.data.sequence import Sequence

# Half-width (frames) of the centred average that turns the per-frame rotation
# difference between odometry and ground truth into the drift the bias state should track.
BIAS_SMOOTHING = 45
# Part of the cache file's name: bump it when what prepare() stores changes.
PREP_VERSION = "v2"


@dataclass
class PreparedSequence:
    name: str
    images: np.ndarray  # (T, h, w, 3) uint8 at the network's input size
    cues: np.ndarray  # (T, CUE_DIM) float32
    odom: np.ndarray  # (T, 8) float32 camera motion since the previous frame + valid flag
    gt: np.ndarray  # (T, 7) float64 camera pose in the first camera's frame
    bias: np.ndarray  # (T, 3) float32 odometry rotation drift per frame, camera frame
    stamps: np.ndarray  # (T,) float64
    camera: np.ndarray  # (4,) normalised intrinsics (cues.normalised_intrinsics)

    def __len__(self) -> int:
        return len(self.images)

    def save(self, path: Path) -> None:
        tmp = Path(path).with_suffix(".tmp.npz")
        np.savez(tmp, name=np.array(self.name), **{k: getattr(self, k) for k in _ARRAYS})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> PreparedSequence:
        with np.load(path) as z:
            return cls(name=str(z["name"]), **{k: z[k] for k in _ARRAYS})


_ARRAYS = ("images", "cues", "odom", "gt", "bias", "stamps", "camera")


def odometry_motions(seq: Sequence) -> np.ndarray:
    """(T, 8) camera motions from the wheel odometry; frame 0 has none (valid = 0)."""
    to_camera = CameraMotionFromOdometry(seq.base_to_camera)
    out = np.zeros((len(seq), 8), dtype=np.float32)
    out[0, 6] = 1.0
    to_camera.update(seq.odom_base[0])
    for t in range(1, len(seq)):
        out[t, :7] = to_camera.update(seq.odom_base[t])
        out[t, 7] = 1.0
    return out


def prepare(seq: Sequence, width: int, height: int) -> PreparedSequence:
    images = np.stack(
        [cv2.resize(im, (width, height), interpolation=cv2.INTER_AREA) for im in seq.images]
    )
    odom = odometry_motions(seq)
    gt = geometry.relative(seq.gt_camera[:1], seq.gt_camera)
    gt_motion = geometry.relative(gt[:-1], gt[1:])
    diff = geometry.quat_to_rotvec(odom[1:, 3:7]) - geometry.quat_to_rotvec(gt_motion[:, 3:])
    kernel = np.ones(2 * BIAS_SMOOTHING + 1)
    counts = np.convolve(np.ones(len(diff)), kernel, mode="same")
    smooth = np.stack([np.convolve(diff[:, i], kernel, mode="same") / counts for i in range(3)], 1)
    bias = np.concatenate([np.zeros((1, 3)), smooth]).astype(np.float32)
    return PreparedSequence(
        name=seq.name,
        images=images,
        cues=cues.sequence_cues(seq.images, seq.intrinsics),
        odom=odom,
        gt=gt,
        bias=bias,
        stamps=np.asarray(seq.stamps, dtype=np.float64),
        camera=cues.normalised_intrinsics(seq.intrinsics, *seq.size),
    )


def _prepare_cached(job: tuple[Path, int, int]) -> Path:
    path, width, height = job
    cached = path.with_name(f"{path.stem}.{width}x{height}.{PREP_VERSION}.prep.npz")
    if not (cached.is_file() and cached.stat().st_mtime >= path.stat().st_mtime):
        prepare(Sequence.load(path), width, height).save(cached)
    return cached


def load_prepared(
    paths: list[Path], width: int, height: int, jobs: int = 1
) -> list[PreparedSequence]:
    """Prepared sequences for cached renders (``.npz``), preparing and caching on first use."""
    work = [(Path(p), width, height) for p in paths]
    if jobs > 1:
        with get_context("spawn").Pool(jobs) as pool:
            cached = pool.map(_prepare_cached, work)
    else:
        cached = [_prepare_cached(job) for job in work]
    return [PreparedSequence.load(c) for c in cached]


def find_sequences(directory: Path) -> list[Path]:
    """Cached renders in a folder (``*.npz`` written by ``render --format npz``)."""
    return sorted(
        p for p in Path(directory).glob("*.npz") if not p.name.endswith((".prep.npz", ".tmp.npz"))
    )
