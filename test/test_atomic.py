"""Files written whole or not at all, also by two writers of one file at once."""

from __future__ import annotations

import multiprocessing
import stat

import numpy as np
import pytest

from latent_memory_ros.atomic import atomic_path
from latent_memory_ros.snapshots import remove_stale_temporaries


def test_two_writers_of_one_file_at_once_each_publish_a_whole_file(tmp_path):
    target = tmp_path / "cache.npz"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second  # a fixed "<name>.tmp" made both write into one file
        first.write_bytes(b"first")
        second.write_bytes(b"second")
    assert target.read_bytes() == b"first"  # the outer block ends last
    assert list(tmp_path.iterdir()) == [target]


def test_the_file_gets_the_mode_open_would_give_not_mkstemps_private_one(tmp_path):
    target = tmp_path / "step.onnx"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"x")
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="half-way"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("half-way")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_a_temporary_left_by_a_killed_writer_is_one_the_snapshot_cleanup_finds(tmp_path):
    target = tmp_path / "memory.npz"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"x")
        assert remove_stale_temporaries(target) == [tmp]
        tmp.write_bytes(b"y")  # the writer goes on; its rename still publishes
    assert target.read_bytes() == b"y"


def _save_many(args):
    path, value = args
    for _ in range(20):
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, images=np.full((64, 64, 3), value, np.uint8))


def test_processes_saving_one_npz_together_never_leave_a_broken_one(tmp_path):
    """What the ranks of a distributed fit do with a shared preparation cache."""
    target = tmp_path / "run.prep.npz"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_save_many, [(target, 1), (target, 2)])
    with np.load(target) as z:
        images = z["images"]
    assert images.shape == (64, 64, 3) and len(np.unique(images)) == 1
    assert list(tmp_path.iterdir()) == [target]
