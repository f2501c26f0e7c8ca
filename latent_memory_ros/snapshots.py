"""Memory snapshots on disk: one .npz of arrays and a JSON ``meta`` naming the format
and the model (its step.onnx sha256), written atomically (a temporary file in the same
directory, fsynced, then renamed over the old one) and refused when read for another
model. :class:`~latent_memory_ros.localizer.Localizer` says what goes in."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from latent_memory_ros.atomic import atomic_path, temporary_prefix

__all__ = [
    "SNAPSHOT_FORMAT",
    "SnapshotError",
    "read_snapshot",
    "remove_stale_temporaries",
    "write_snapshot",
]

SNAPSHOT_FORMAT = "latent-memory-snapshot/1"


class SnapshotError(RuntimeError):
    """A memory snapshot that cannot be written or used; the message says why."""


def remove_stale_temporaries(path: Path | str) -> list[Path]:
    """Delete the temporary files of saves to ``path`` that were killed between writing
    and renaming them; returns the ones deleted. A save in progress in another process
    (two nodes sharing one snapshot_path) then fails with an error; it never leaves a
    broken snapshot, since only the rename publishes one."""
    path = Path(path).expanduser()
    removed = []
    for stale in path.parent.glob(temporary_prefix(path) + "*"):
        try:
            stale.unlink()
        except OSError:  # gone already, or not ours to delete: the next save tries again
            continue
        removed.append(stale)
    return removed


def write_snapshot(path: Path | str, meta: dict, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` and ``meta`` (with the format) to ``path`` atomically; returns
    the path written. Temporary files of earlier saves that were killed are deleted
    first."""
    path = Path(path).expanduser()
    meta = {"format": SNAPSHOT_FORMAT, **meta}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    except OSError as err:
        raise SnapshotError(f"cannot write the snapshot {path}: {err}") from err
    return path


def read_snapshot(
    path: Path | str, model_name: str, model_sha256: str
) -> tuple[dict, dict[str, np.ndarray]]:
    """The (meta, arrays) of a snapshot of this format written for the model whose
    step.onnx has ``model_sha256``; SnapshotError names what is wrong."""
    path = Path(path).expanduser()
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise SnapshotError(f"cannot read the snapshot {path}: {err}") from err
    if meta.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"{path}: format {meta.get('format')!r}, expected {SNAPSHOT_FORMAT!r}")
    if meta.get("model_sha256") != model_sha256:
        raise SnapshotError(
            f"{path} was written by model '{meta.get('model')}' (step.onnx sha256 "
            f"{str(meta.get('model_sha256'))[:12]}…); this node runs "
            f"'{model_name}' (sha256 {model_sha256[:12]}…): refused"
        )
    return meta, arrays
