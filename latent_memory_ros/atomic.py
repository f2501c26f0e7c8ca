"""Files written whole or not at all: :func:`atomic_path` hands out a temporary path
beside the target and renames it over the target when the writing is done, so a reader
sees the old file or the new one, never half of one.

Every writer gets its own temporary (``.<name>.<random>.tmp``): two processes writing
the same file at once (the ranks of a distributed run preparing one shared cache) must
not write into each other's temporary; a fixed ``<name>.tmp`` did exactly that and left
a cache with a bad CRC. The file gets the mode a plain ``open`` would give it (0666 less
the umask), not mkstemp's 0600: a model exported by one user is read by the node running
as another."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "temporary_prefix"]


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set back at once (import time, one thread)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


def temporary_prefix(path: Path) -> str:
    """What the temporary files of writes to ``path`` start with (they lie beside it)."""
    return f".{Path(path).name}."


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a fresh temporary path in ``path``'s folder; when the block ends without an
    error the file written there is flushed to disk and renamed to ``path``; on an
    error it is deleted and ``path`` is left as it was. The folder must exist. A writer
    that appends a suffix to names it is given (``np.savez``) must be given an open file
    instead: ``with atomic_path(p) as tmp, open(tmp, "wb") as f: np.savez(f, ...)``."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, FILE_MODE)
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
