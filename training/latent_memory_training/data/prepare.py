"""From a recorded :class:`Sequence` to the arrays the trainer feeds, cached on disk.

The expensive parts (the network-size images, the two-view cues at 320x240) are computed
once per sequence and stored next to a cached render as
``<name>.<width>x<height>.<version>.prep.npz``; a user's run (a rosbag2, TUM RGB-D, EuRoC
or KITTI folder, read by :mod:`latent_memory_ros.datasets`) is cached in a folder of its
own (``cache_dir``), under a name that also carries how it was read.
Everything the runtime does to a live frame is done here the same way: area resize,
cues from :mod:`latent_memory_ros.cues`, odometry turned into camera motion by
:class:`latent_memory_ros.runtime.CameraMotionFromOdometry`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from latent_memory_ros import cues, geometry
from latent_memory_ros.atomic import atomic_path
from latent_memory_ros.datasets import ReadOptions, find_runs, read_sequence
from latent_memory_ros.model_format import ODOM_NONE, ODOM_ROTATION, ODOM_VALID
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
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, name=np.array(self.name), **{k: getattr(self, k) for k in _ARRAYS})

    @classmethod
    def load(cls, path: Path) -> PreparedSequence:
        with np.load(path) as z:
            return cls(name=str(z["name"]), **{k: z[k] for k in _ARRAYS})


_ARRAYS = ("images", "cues", "odom", "gt", "bias", "stamps", "camera")


def odometry_motions(seq: Sequence) -> np.ndarray:
    """(T, 8) camera motions from the wheel odometry; frame 0 has none (valid = 0), nor
    has a frame whose odometry, or the previous frame's, is missing (NaN rows: a run
    without wheel odometry has none at all)."""
    to_camera = CameraMotionFromOdometry(seq.base_to_camera)
    out = np.tile(np.asarray(ODOM_NONE, dtype=np.float32), (len(seq), 1))
    known = np.all(np.isfinite(seq.odom_base), axis=1)
    for t in range(len(seq)):
        if not known[t]:
            to_camera.reset()
            continue
        motion = to_camera.update(seq.odom_base[t])
        if motion is not None:
            out[t, :7] = motion
            out[t, 7] = 1.0
    return out


def prepare(seq: Sequence, width: int, height: int) -> PreparedSequence:
    images = np.stack(
        [cv2.resize(im, (width, height), interpolation=cv2.INTER_AREA) for im in seq.images]
    )
    odom = odometry_motions(seq)
    gt = geometry.relative(seq.gt_camera[:1], seq.gt_camera)
    gt_motion = geometry.relative(gt[:-1], gt[1:])
    diff = geometry.quat_to_rotvec(odom[1:, ODOM_ROTATION]) - geometry.quat_to_rotvec(
        gt_motion[:, 3:]
    )
    diff[odom[1:, ODOM_VALID] == 0] = 0.0  # no odometry, no drift to track
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


@dataclass(frozen=True)
class RunSource:
    """One run to train on: where it is, its format (:data:`latent_memory_ros.datasets.
    FORMATS`) and how to read it."""

    path: Path
    fmt: str = "npz"
    options: ReadOptions = field(default_factory=ReadOptions)

    @property
    def key(self) -> str:
        """The run and the way it is read, as a short digest (part of its cache name)."""
        text = json.dumps([str(self.path.resolve()), self.fmt, asdict(self.options)], default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:10]

    def modified(self) -> float:
        """Newest modification time of the run and what lies directly in it."""
        times = [self.path.stat().st_mtime]
        if self.path.is_dir():
            times += [p.stat().st_mtime for p in self.path.iterdir()]
        return max(times)


def find_sources(
    paths: list[Path], fmt: str | None = None, options: ReadOptions | None = None
) -> list[RunSource]:
    """The runs of ``paths`` (each a run or a folder of runs, formats mixed), in order."""
    options = options or ReadOptions()
    return [RunSource(run, found, options) for path in paths for run, found in find_runs(path, fmt)]


def _prepare_cached(job: tuple[RunSource, int, int, Path | None]) -> Path:
    """Prepare one run unless its cache is newer; the cache is written whole or not at
    all (``PreparedSequence.save`` renames a finished temporary), so a run that fails
    half-way leaves nothing behind."""
    source, width, height, cache_dir = job
    path = source.path
    suffix = f"{width}x{height}.{PREP_VERSION}.prep.npz"
    if source.fmt == "npz":
        cached = path.with_name(f"{path.stem}.{suffix}")
    else:
        folder = cache_dir if cache_dir is not None else path.parent
        folder.mkdir(parents=True, exist_ok=True)
        cached = folder / f"{path.name}.{source.key}.{suffix}"
    if not (cached.is_file() and cached.stat().st_mtime >= source.modified()):
        seq = read_sequence(path, source.fmt, source.options)
        if seq.meta.get("frames_dropped"):
            print(
                f"{path}: {seq.meta['frames_dropped']} of {seq.meta['frames_read']} frames "
                f"lie outside the ground truth (gaps over {seq.meta['max_gap_s']} s): dropped",
                flush=True,
            )
        prepare(seq, width, height).save(cached)
    return cached


def load_prepared(
    paths: list[Path] | list[RunSource],
    width: int,
    height: int,
    jobs: int = 1,
    cache_dir: Path | None = None,
) -> list[PreparedSequence]:
    """Prepared sequences for cached renders (``.npz`` paths) or any runs
    (:class:`RunSource`), preparing and caching on first use: renders next to
    themselves, other runs in ``cache_dir`` (default: beside the run)."""
    sources = [p if isinstance(p, RunSource) else RunSource(Path(p)) for p in paths]
    work = [(s, width, height, cache_dir) for s in sources]
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
