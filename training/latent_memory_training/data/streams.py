"""What the trainer feeds: ``batch`` parallel episodes cut into windows (:class:`Streams`),
and whole runs as one batch for evaluation (:func:`observations`)."""

from __future__ import annotations

import numpy as np
import torch

from latent_memory_ros import cues as cue_defs
from latent_memory_ros import geometry
from latent_memory_ros.model_format import ODOM_MOTION, ODOM_NONE
from latent_memory_training.data.prepare import PreparedSequence
from latent_memory_training.models.config import IMAGE_MEAN, IMAGE_STD
from latent_memory_training.training.config import TrainConfig


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, T, H, W, 3]`` to the network's normalised ``[B, T, 3, H, W]``."""
    mean = torch.tensor(IMAGE_MEAN).view(1, 1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGE_STD).view(1, 1, 3, 1, 1) * 255.0
    return (images.permute(0, 1, 4, 2, 3).float() - mean) / std


class Streams:
    """``batch`` parallel episodes over random sequences, cut into windows.

    ``source`` is a fixed list of sequences or anything with a ``sequences()`` method
    returning the sequences to draw from now (:class:`~latent_memory_training.data.
    world_stream.RoomPool`: fresh rooms without end); a stream keeps its sequence until
    its episode ends, whatever the source does meanwhile."""

    def __init__(self, source, cfg: TrainConfig, rng: np.random.Generator) -> None:
        self.source, self.cfg, self.rng = source, cfg, rng
        self.runs: list[PreparedSequence | None] = [None] * cfg.batch
        self.pos = np.zeros(cfg.batch, dtype=int)
        self.end = np.zeros(cfg.batch, dtype=int)
        self.start = np.zeros(cfg.batch, dtype=int)
        self.odom_on = np.ones(cfg.batch, dtype=bool)
        self.mirrored = np.zeros(cfg.batch, dtype=bool)

    def _sequences(self) -> list[PreparedSequence]:
        return self.source.sequences() if hasattr(self.source, "sequences") else self.source

    def _episode_length(self, step: int, seqs: list[PreparedSequence]) -> int:
        cfg = self.cfg
        grow = min(1.0, step / max(cfg.curriculum_steps, 1))
        longest = max(len(s) for s in seqs)
        return int(cfg.min_episode + grow * (longest - cfg.min_episode))

    def next(self, step: int) -> tuple[dict, dict, np.ndarray]:
        cfg, w = self.cfg, self.cfg.window
        reset = self.pos + w > self.end
        if reset.any():
            seqs = self._sequences()
            wanted = self._episode_length(step, seqs)
        for b in np.flatnonzero(reset):
            run = seqs[self.rng.integers(len(seqs))]
            self.runs[b] = run
            n = len(run)
            length = min(n, max(w, wanted))
            self.start[b] = self.rng.integers(0, n - length + 1)
            self.pos[b] = self.start[b]
            self.end[b] = self.start[b] + length
            self.odom_on[b] = self.rng.random() >= cfg.odom_drop
            self.mirrored[b] = self.rng.random() < 0.5
        keys = ("images", "cues", "odom", "gt", "bias", "stamps")
        arr = {
            k: np.stack(
                [getattr(r, k)[p : p + w] for r, p in zip(self.runs, self.pos, strict=True)]
            )
            for k in keys
        }
        camera = np.stack([r.camera for r in self.runs]).astype(np.float32)
        mirror_in_place(arr, self.mirrored)
        camera[self.mirrored, 2] = 1.0 - camera[self.mirrored, 2]
        first = self.pos == self.start
        # An episode's first frame looks like a run's first frame to the runtime: no
        # previous frame for cues, no previous odometry pose.
        arr["cues"][first, 0] = 0.0
        arr["odom"][first, 0] = ODOM_NONE
        arr["odom"][~self.odom_on] = ODOM_NONE
        # Targets: poses in the frame of the episode's first camera.
        origin = np.stack([r.gt[s] for r, s in zip(self.runs, self.start, strict=True)])
        gt = _relative_np(origin[:, None], arr["gt"])
        gt[self.mirrored] = geometry.mirror_pose(gt[self.mirrored])
        dt = np.diff(arr["stamps"], axis=1, prepend=arr["stamps"][:, :1])
        dt[first, 0] = 0.0
        query = self._query(camera)
        self.pos += w
        obs = {
            "image": normalise(torch.from_numpy(arr["images"])),
            "odom": torch.from_numpy(arr["odom"]).float(),
            "dt": torch.from_numpy(dt[..., None]).float(),
            "cues": torch.from_numpy(arr["cues"]).float(),
            "camera": torch.from_numpy(camera)[:, None].expand(-1, w, -1),
        }
        targets = {
            "gt": torch.from_numpy(gt).float(),
            "bias": torch.from_numpy(arr["bias"]).float(),
            "odom_on": torch.from_numpy(self.odom_on.copy()),
            **query,
        }
        return obs, targets, reset

    def _query(self, camera: np.ndarray) -> dict[str, torch.Tensor]:
        """For each stream, an earlier frame of its episode (at least query_min_gap
        frames before the window's last frame) and where its camera is seen from the
        last frame's camera: the map-free query the memory should answer."""
        cfg = self.cfg
        last = self.pos + cfg.window - 1
        images, targets, valid = [], [], []
        for b, s in enumerate(self.runs):
            latest = last[b] - cfg.query_min_gap
            ok = latest >= self.start[b]
            q = int(self.rng.integers(self.start[b], latest + 1)) if ok else int(last[b])
            image = s.images[q]
            target = geometry.relative(s.gt[last[b]], s.gt[q])
            if self.mirrored[b]:
                image = image[:, ::-1]
                target = geometry.mirror_pose(target)
            images.append(image)
            targets.append(target)
            valid.append(ok)
        return {
            "query_image": normalise(torch.from_numpy(np.stack(images)[:, None]))[:, 0],
            "query_camera": torch.from_numpy(camera),
            "query_pose": torch.from_numpy(np.stack(targets)).float(),
            "query_valid": torch.from_numpy(np.array(valid)),
        }


def observations(
    seqs: list[PreparedSequence], t0: int, t1: int, use_odom: bool = True
) -> dict[str, torch.Tensor]:
    """Frames ``t0:t1`` of whole runs as one batch, as the runtime would see them from
    each run's first frame (with the wheel odometry, or without any)."""
    odom = np.stack([s.odom[t0:t1] for s in seqs])
    if not use_odom:
        odom = np.broadcast_to(np.asarray(ODOM_NONE, np.float32), odom.shape).copy()
    stamps = np.stack([s.stamps[max(t0 - 1, 0) : t1] for s in seqs])
    dt = np.diff(stamps, axis=1)
    if t0 == 0:
        dt = np.concatenate([np.zeros((len(seqs), 1)), dt], axis=1)
    camera = np.stack([s.camera for s in seqs]).astype(np.float32)
    return {
        "image": normalise(torch.from_numpy(np.stack([s.images[t0:t1] for s in seqs]))),
        "odom": torch.from_numpy(odom).float(),
        "dt": torch.from_numpy(dt[..., None]).float(),
        "cues": torch.from_numpy(np.stack([s.cues[t0:t1] for s in seqs])).float(),
        "camera": torch.from_numpy(camera)[:, None].expand(-1, t1 - t0, -1),
    }


def mirror_in_place(arr: dict[str, np.ndarray], rows: np.ndarray) -> None:
    """Left-right mirror the inputs of the chosen streams (targets are mirrored by the
    caller), so that no constant rotation offset can be learned (shared/docs/lessons.md).
    Images flip; in the optical frame a mirror is x -> -x, so positions negate x and
    rotation vectors keep x and negate y and z; the cues' rotations, heading and flow
    transform the same way."""
    if not rows.any():
        return
    arr["images"][rows] = arr["images"][rows, :, :, ::-1]
    arr["odom"][rows, :, ODOM_MOTION] = geometry.mirror_pose(arr["odom"][rows, :, ODOM_MOTION])
    arr["bias"][rows] *= (1.0, -1.0, -1.0)
    flip = np.ones(arr["cues"].shape[-1], dtype=np.float32)
    flip[list(cue_defs.CUE_MIRROR_NEGATED)] = -1.0
    arr["cues"][rows] *= flip


def _relative_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return geometry.relative(np.broadcast_to(a, b.shape), b)
