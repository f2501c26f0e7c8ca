"""The node's frame scheduling without ROS: latest-frame slot, inference thread, drops,
pause, frames held for odometry; counters; lost frames from stamps; odometry timing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from latent_memory_ros.localizer import EventKind
from latent_memory_ros.scheduling import (
    Frame,
    FrameScheduler,
    FrameStats,
    OdometryTiming,
    StampGaps,
)

TIMEOUT_S = 5.0


def until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)


class Worker:
    """A scheduler whose run() records frames and can be made to block."""

    def __init__(self) -> None:
        self.ran: list[int] = []
        self.threads: set[str] = set()
        self.failures: list[str] = []
        self.dropped = 0
        self.gate = threading.Event()
        self.gate.set()
        self.running = threading.Event()  # set while run() is inside a frame
        self.hold: dict[int, float] = {}  # stamp -> deadline (time.monotonic)
        self.raise_on: set[int] = set()
        self.scheduler = FrameScheduler(self._run, self._hold, self._drop, self._fail)

    def _run(self, frame: Frame) -> None:
        self.threads.add(threading.current_thread().name)
        self.running.set()
        self.gate.wait(TIMEOUT_S)
        self.running.clear()
        if frame.stamp_ns in self.raise_on:
            raise RuntimeError(f"bug at {frame.stamp_ns}")
        self.ran.append(frame.stamp_ns)

    def _hold(self, frame: Frame) -> float | None:
        return self.hold.get(frame.stamp_ns)

    def _drop(self, n: int) -> None:
        self.dropped += n

    def _fail(self, frame: Frame, trace: str) -> None:
        self.failures.append(trace)

    def submit(self, stamp: int) -> None:
        self.scheduler.submit(Frame(msg=None, stamp_ns=stamp, arrived=time.monotonic()))


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker()
    w.scheduler.start()
    yield w
    w.gate.set()
    w.scheduler.stop()


def test_frames_run_in_order_on_the_inference_thread(worker: Worker) -> None:
    for stamp in (1, 2, 3):
        worker.submit(stamp)
        until(lambda s=stamp: s in worker.ran, f"frame {stamp}")
    assert worker.ran == [1, 2, 3]
    assert worker.threads == {"inference"}
    assert worker.dropped == 0


def test_frames_arriving_during_a_step_replace_each_other(worker: Worker) -> None:
    worker.gate.clear()
    worker.submit(1)
    until(worker.running.is_set, "the first step")
    for stamp in (2, 3, 4):
        worker.submit(stamp)
    worker.gate.set()
    until(lambda: 4 in worker.ran, "the newest frame")
    assert worker.ran == [1, 4]
    assert worker.dropped == 2


def test_pausing_drops_the_waiting_frames_and_resuming_runs_new_ones(worker: Worker) -> None:
    worker.gate.clear()
    worker.submit(1)
    until(worker.running.is_set, "the first step")
    worker.submit(2)
    worker.scheduler.set_enabled(False)
    assert not worker.scheduler.enabled
    assert worker.dropped == 1
    worker.gate.set()
    until(lambda: worker.ran == [1], "the step in progress")
    worker.scheduler.set_enabled(True)
    worker.submit(3)
    until(lambda: 3 in worker.ran, "a frame after resuming")
    assert worker.ran == [1, 3]


def test_clear_counts_the_waiting_frames_as_dropped(worker: Worker) -> None:
    worker.gate.clear()
    worker.submit(1)
    until(worker.running.is_set, "the first step")
    worker.submit(2)
    worker.submit(3)
    worker.scheduler.clear()
    assert worker.dropped == 2
    worker.gate.set()
    until(lambda: worker.ran == [1], "the step in progress")
    time.sleep(0.05)
    assert worker.ran == [1]


def test_a_lone_frame_is_held_until_its_deadline(worker: Worker) -> None:
    hold_s = 0.15
    submitted = time.monotonic()
    worker.hold[1] = submitted + hold_s
    worker.submit(1)
    until(lambda: worker.ran == [1], "the held frame")
    assert time.monotonic() - submitted >= hold_s


def test_a_held_frame_runs_as_soon_as_what_it_waits_for_comes(worker: Worker) -> None:
    worker.hold[1] = time.monotonic() + 30.0
    worker.submit(1)
    time.sleep(0.05)
    assert worker.ran == []
    del worker.hold[1]  # its odometry came
    worker.scheduler.wake()
    until(lambda: worker.ran == [1], "the frame after the wake-up")


def test_a_held_frame_runs_before_a_newer_one_and_is_not_dropped(worker: Worker) -> None:
    worker.hold[1] = time.monotonic() + 30.0
    worker.submit(1)
    time.sleep(0.05)
    worker.submit(2)  # no longer alone: the held frame goes first, then the newer one
    until(lambda: worker.ran == [1, 2], "both frames")
    assert worker.dropped == 0


def test_an_exception_in_a_step_is_reported_and_the_thread_goes_on(worker: Worker) -> None:
    worker.raise_on.add(1)
    worker.submit(1)
    until(lambda: worker.failures, "the failure report")
    assert "RuntimeError: bug at 1" in worker.failures[0]
    worker.submit(2)
    until(lambda: worker.ran == [2], "the next frame")


def test_stop_ends_the_thread_and_forgets_waiting_frames() -> None:
    w = Worker()
    w.scheduler.start()
    assert w.scheduler.running
    w.gate.clear()
    w.submit(1)
    until(w.running.is_set, "the first step")
    w.submit(2)
    stopper = threading.Thread(target=w.scheduler.stop)
    stopper.start()
    w.gate.set()
    stopper.join(TIMEOUT_S)
    assert not stopper.is_alive() and not w.scheduler.running
    assert w.ran == [1]
    w.scheduler.start()  # a lifecycle node activates again
    w.submit(3)
    until(lambda: w.ran == [1, 3], "a frame after restarting")
    w.scheduler.stop()


def test_frame_stats_count_events_and_late_odometry() -> None:
    stats = FrameStats()
    for stamp in range(0, 10 * 100, 100):
        stats.received(stamp, max_gap_ns=10_000)
    stats.received(1300, max_gap_ns=10_000)  # 1000 and 1100 and 1200 never came
    frame = Frame(msg=None, stamp_ns=1300, arrived=1.0)
    events = [EventKind.GAP, EventKind.JITTER, EventKind.NO_ODOMETRY, EventKind.LOST_RESET]
    stats.processed(frame, 5.0, events, untrusted=True)
    stats.published(0.5)
    assert stats.odometry_arrived(1250, tolerance_ns=100) is None  # before the frame
    assert stats.odometry_arrived(1350, tolerance_ns=100) == (1300, 1.0)
    assert stats.odometry_arrived(1360, tolerance_ns=100) is None  # counted once
    snapshot = stats.snapshot()
    counters = snapshot.counters
    assert counters["received"] == 11 and counters["missing"] == 3
    assert counters["processed"] == 1 and counters["resets"] == 2 and counters["jitter"] == 1
    assert counters["without_odometry"] == 1 and counters["odometry_late"] == 1
    assert counters["untrusted"] == 1
    assert snapshot.step_ms == [5.0] and snapshot.publish_ms == [0.5]
    assert snapshot.camera_period_s == pytest.approx(100e-9)


def test_stamp_gaps_count_lost_frames_and_start_over_after_a_jump() -> None:
    gaps = StampGaps()
    period = 33_000_000
    stamps = [k * period for k in range(20)]
    assert sum(gaps.missing(s, max_gap_ns=10**9) for s in stamps) == 0
    assert gaps.missing(stamps[-1] + 4 * period, max_gap_ns=10**9) == 3
    # A jittery interval of 1.7 periods is one late frame, not a lost one.
    assert gaps.missing(stamps[-1] + int(5.7 * period), max_gap_ns=10**9) == 0
    assert gaps.missing(stamps[-1] + 10 * period, max_gap_ns=10**9) == 3
    assert gaps.missing(0, max_gap_ns=10**9) == 0  # back in time: starts over
    assert gaps.period_s is None


def test_odometry_timing_matches_near_stamps_and_bounds_the_wait() -> None:
    timing = OdometryTiming()
    assert not timing.has_match(0)
    assert timing.deadline(10.0, 0.1) == 10.1  # nothing known: the tolerance
    period_ns = 10_000_000
    for k in range(5):
        timing.add(k * period_ns, 5.0 + k * 0.01)
    assert timing.has_match(4 * period_ns)
    assert timing.has_match(4 * period_ns + period_ns // 20)  # within a tenth of a period
    assert not timing.has_match(4 * period_ns + period_ns // 2)
    # The next sample comes about one period after the last: wait two, plus a margin.
    assert timing.deadline(5.04, 0.1) == pytest.approx(5.04 + 0.02 + OdometryTiming.MARGIN_S)
    timing.clear()
    assert not timing.has_match(0)
