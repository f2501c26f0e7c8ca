"""Poses in time, as every reader of recorded runs gets them: :class:`Track`, its
nearest-in-time and interpolated lookups, and the stamp checks that name the bad record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

# Stamps this close (seconds) are one instant: text formats round them (TUM to 0.1 ms,
# KITTI's times.txt to 1 us), so an image stamp can differ from its pose's by that much.
SAME_INSTANT_S = 1e-6


class DatasetError(ValueError):
    """A recorded run that cannot be read as it is; the message names the file and line,
    or the bag and topic, and what is wrong there."""


class Track(NamedTuple):
    """Poses in time: ``stamps`` (N,) seconds and ``poses`` (N, 7) xyz_qxyzw."""

    stamps: np.ndarray
    poses: np.ndarray

    def at(self, stamps: np.ndarray, max_dt: float = np.inf) -> np.ndarray:
        """The nearest-in-time pose for each of ``stamps``: ``(len(stamps), 7)``; rows with
        no pose within ``max_dt`` seconds are NaN."""
        stamps = np.asarray(stamps, dtype=np.float64)
        out = np.full((len(stamps), 7), np.nan)
        if len(self.stamps) == 0:
            return out
        nearest = _nearest(self.stamps, stamps)
        ok = np.abs(self.stamps[nearest] - stamps) <= max_dt
        out[ok] = self.poses[nearest[ok]]
        return out

    def interpolate(self, stamps: np.ndarray, max_gap: float) -> np.ndarray:
        """The pose at each of ``stamps``: ``(len(stamps), 7)``, the position linear and
        the rotation SLERP (scipy) between the two samples around the stamp.

        Rows are NaN where a stamp lies outside the track, or between two samples more
        than ``max_gap`` seconds apart; a stamp on a sample (within
        :data:`SAME_INSTANT_S`) takes it as it is. The track's stamps must increase
        (:func:`check_increasing`).
        """
        stamps = np.asarray(stamps, dtype=np.float64)
        out = np.full((len(stamps), 7), np.nan)
        n = len(self.stamps)
        if n == 0 or len(stamps) == 0:
            return out
        if n >= 2:
            right = np.clip(np.searchsorted(self.stamps, stamps, side="right"), 1, n - 1)
            left = right - 1
            gap = self.stamps[right] - self.stamps[left]
            ok = (stamps >= self.stamps[0]) & (stamps <= self.stamps[-1]) & (gap <= max_gap)
            if ok.any():
                f = ((stamps[ok] - self.stamps[left[ok]]) / gap[ok])[:, None]
                out[ok, :3] = (1 - f) * self.poses[left[ok], :3] + f * self.poses[right[ok], :3]
                slerp = Slerp(self.stamps, Rotation.from_quat(self.poses[:, 3:]))
                out[ok, 3:] = slerp(stamps[ok]).as_quat()
        nearest = _nearest(self.stamps, stamps)
        on_sample = np.abs(self.stamps[nearest] - stamps) <= SAME_INSTANT_S
        out[on_sample] = self.poses[nearest[on_sample]]
        return out


def check_increasing(stamps: np.ndarray, where: Callable[[int], str]) -> None:
    """Raise :class:`DatasetError` at the first stamp that repeats or goes back in time;
    ``where(i)`` names record ``i`` (a file's line, a bag topic's message)."""
    stamps = np.asarray(stamps, dtype=np.float64)
    bad = np.flatnonzero(np.diff(stamps) <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        what = "repeats" if stamps[i] == stamps[i - 1] else "goes back in time from"
        raise DatasetError(
            f"{where(i)}: stamp {stamps[i]:.9f} {what} the one before ({stamps[i - 1]:.9f}); "
            "stamps must increase"
        )


def _nearest(sorted_stamps: np.ndarray, stamps: np.ndarray) -> np.ndarray:
    right = np.clip(np.searchsorted(sorted_stamps, stamps), 1, max(len(sorted_stamps) - 1, 1))
    left = right - 1
    if len(sorted_stamps) == 1:
        return np.zeros(len(stamps), dtype=int)
    closer_right = np.abs(sorted_stamps[right] - stamps) < np.abs(stamps - sorted_stamps[left])
    return np.where(closer_right, right, left)
