"""TUM RGB-D trajectory files (``stamp tx ty tz qx qy qz qw`` per line), written in one place."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tum_lines(stamps: np.ndarray, poses: np.ndarray) -> list[str]:
    """One line per finite pose; full float precision so evo reads back what was computed."""
    poses = np.asarray(poses, dtype=np.float64)
    finite = np.all(np.isfinite(poses), axis=1)
    return [
        f"{stamp:.9f} " + " ".join(f"{v:.17g}" for v in pose)
        for stamp, pose in zip(np.asarray(stamps)[finite], poses[finite], strict=True)
    ]


def write_trajectory(path: Path, stamps: np.ndarray, poses: np.ndarray, header: str = "") -> None:
    """Write a TUM trajectory; ``header`` lines (each starting with '#') come first."""
    Path(path).write_text(header + "".join(line + "\n" for line in tum_lines(stamps, poses)))
