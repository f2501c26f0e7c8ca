"""Training without end: fresh rooms from the generator for as long as a training runs.

Worker processes render and prepare sequences ``0, 1, 2, ...`` of the ``train`` split
(world.md v2 cameras by default) while the trainer trains; the trainer draws its
episodes from a rotating pool of the newest ``pool`` rooms, and a new room enters every
``room_every`` steps. What the trainer sees at step ``s`` is therefore a function of the
seed and ``s`` alone (deterministic, and resumable: a resumed run refills the pool it
had), whatever the speed of the workers; when they fall behind, the trainer waits and
the pool counts the seconds (``waited_s``), which is how a run tells whether rendering
keeps up.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context

from latent_memory_training.data.generate import render_sequence
from latent_memory_training.data.prepare import PreparedSequence, prepare
from latent_memory_training.training.config import WorldConfig


def prepared_room(
    split: str,
    index: int,
    seed: int,
    frames: int,
    render_size: tuple[int, int],
    net_size: tuple[int, int],
    cameras: str,
) -> PreparedSequence:
    """One room of the generator, rendered and prepared as a cached render would be."""
    seq = render_sequence(split, index, seed, frames, render_size, cameras=cameras)
    return prepare(seq, *net_size)


class RoomPool:
    """The rooms to draw from now (:meth:`sequences`); :meth:`advance` once per step."""

    def __init__(
        self,
        seed: int,
        net_size: tuple[int, int],
        world: WorldConfig,
        render_size: tuple[int, int] = (320, 240),
        step: int = 0,
    ) -> None:
        """``world`` says how many frames a room has, how many rooms the pool holds and
        warms up with, how often a new one enters, how many workers render and with
        which cameras; ``step`` is the step the trainer starts at (a resumed run's)."""
        pool, warm, room_every, workers = world.pool, world.warm, world.room_every, world.workers
        if pool < 1 or warm < 1 or room_every < 1 or workers < 1:
            raise ValueError("pool, warm, room_every and workers must be at least 1")
        self.args = (seed, world.frames, tuple(render_size), tuple(net_size), world.cameras)
        self.pool, self.warm, self.room_every = pool, min(warm, pool), room_every
        self.waited_s = 0.0
        self._rooms: deque[PreparedSequence] = deque(maxlen=pool)
        self._pending: deque[tuple[int, Future]] = deque()
        self._executor = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
        self._ahead = workers + 1  # rooms being rendered beyond the one needed next
        newest = self.newest_at(step)
        self._next = max(0, newest - pool + 1)  # next room index to ask the workers for
        self._have = self._next  # next room index to enter the pool
        self._fill(newest)
        self.warmup_s, self.waited_s = self.waited_s, 0.0

    def newest_at(self, step: int) -> int:
        """Index of the newest room in the pool at ``step``."""
        return self.warm - 1 + step // self.room_every

    @property
    def rooms_seen(self) -> int:
        return self._have

    def sequences(self) -> list[PreparedSequence]:
        return list(self._rooms)

    def advance(self, step: int) -> None:
        """Bring the pool to what it holds at ``step`` (waiting for the workers if they
        are behind) and keep them busy with the rooms that come next."""
        self._fill(self.newest_at(step))

    def _submit_until(self, index: int) -> None:
        while self._next <= index:
            job = self._executor.submit(prepared_room, "train", self._next, *self.args)
            self._pending.append((self._next, job))
            self._next += 1

    def _fill(self, newest: int) -> None:
        self._submit_until(newest + self._ahead)
        while self._have <= newest:
            index, job = self._pending.popleft()
            start = time.perf_counter()
            room = job.result()
            self.waited_s += time.perf_counter() - start
            if index != self._have:  # the queue is in index order by construction
                raise RuntimeError(f"room {index} arrived where room {self._have} was due")
            self._rooms.append(room)
            self._have += 1

    def close(self) -> None:
        """Stop the workers now, the room they are rendering included (shutdown alone
        lets a worker finish its room: minutes of a core after the trainer is gone)."""
        workers = list((self._executor._processes or {}).values())  # no public handle
        self._executor.shutdown(wait=False, cancel_futures=True)
        for process in workers:
            process.terminate()
