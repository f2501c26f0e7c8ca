"""Which frame the node runs next, and on which thread, without ROS.

:class:`FrameScheduler` is the node's latest-frame slot: callbacks only :meth:`submit`
frames and return, and one inference thread runs the most recent one. Frames that
arrive while a step runs replace each other (counted as dropped), so latency does not
grow when inference is slower than the camera; a lone frame may be held back a moment
for its odometry. :class:`FrameStats` keeps the counters and timings that /diagnostics
reports, :class:`StampGaps` tells frames lost before the node from the stamps, and
:class:`OdometryTiming` bounds how long a frame waits for odometry.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from latent_memory_ros.localizer import RESTART_EVENTS, EventKind

__all__ = [
    "NOT_FRAME_COUNTERS",
    "Counters",
    "Frame",
    "FrameScheduler",
    "FrameStats",
    "OdometryTiming",
    "StampGaps",
    "StatsSnapshot",
]

STEP_TIME_WINDOW = 1000  # steps whose times the percentiles cover
MISSED_ODOMETRY_WINDOW = 64  # recent frames that ran without odometry, for odometry_late
HOLD_SLACK_S = 1e-3  # a held frame wakes this long after its odometry deadline


@dataclass
class Frame:
    msg: Any
    stamp_ns: int
    arrived: float  # time.monotonic()
    held: bool = False  # seen by the worker and kept waiting for its odometry


@dataclass
class Counters:
    received: int = 0
    processed: int = 0
    dropped: int = 0  # replaced in the node's own slot by a newer frame
    missing: int = 0  # never reached the node: gaps in the stamps of those that did
    rejected: int = 0
    paused: int = 0
    without_odometry: int = 0  # processed without odometry while use_odom is on
    resets: int = 0
    jitter: int = 0
    odometry_late: int = 0  # samples that came after their frame had run without them
    odometry_rejected: int = 0  # refused: not finite, absurd, quaternion far from unit
    untrusted: int = 0  # processed with a camera the vision checks did not trust
    queries: int = 0  # answered
    queries_rejected: int = 0


# Counters that /diagnostics does not prefix with "frames_".
NOT_FRAME_COUNTERS = (
    "resets",
    "jitter",
    "odometry_late",
    "odometry_rejected",
    "queries",
    "queries_rejected",
)


class StampGaps:
    """Frames that never arrived, told by the stamps of those that did.

    The camera's period is a low percentile of the recent intervals between arriving
    stamps, so it holds while most frames are lost at random; an interval of n periods
    then hides n - 1 frames. Intervals beyond ``max_gap_ns`` (a pause, a time jump) and
    stamps that go back start over rather than count."""

    WINDOW = 1000  # intervals
    PERCENTILE = 10
    MIN_INTERVALS = 8
    REFRESH = 25  # intervals between re-estimates of the period

    def __init__(self) -> None:
        self._intervals: deque[int] = deque(maxlen=self.WINDOW)
        self._last_ns: int | None = None
        self._period_ns: float | None = None
        self._since_refresh = 0

    @property
    def period_s(self) -> float | None:
        return None if self._period_ns is None else self._period_ns * 1e-9

    def missing(self, stamp_ns: int, max_gap_ns: int) -> int:
        """How many frames are missing just before the one stamped ``stamp_ns``."""
        last = self._last_ns
        if last is not None and stamp_ns == last:
            return 0
        self._last_ns = stamp_ns
        if last is None:
            return 0
        interval = stamp_ns - last
        if interval < 0 or (max_gap_ns > 0 and interval > max_gap_ns):
            self._intervals.clear()
            self._period_ns, self._since_refresh = None, 0
            return 0
        self._intervals.append(interval)
        self._since_refresh += 1
        if len(self._intervals) >= self.MIN_INTERVALS and (
            self._period_ns is None or self._since_refresh >= self.REFRESH
        ):
            self._period_ns = float(np.percentile(self._intervals, self.PERCENTILE))
            self._since_refresh = 0
        if not self._period_ns:
            return 0
        # A quarter period of slack each way: a jittery interval of 1.7 periods is one
        # late frame, not a lost one.
        return max(0, int(interval / self._period_ns + 0.25) - 1)


class OdometryTiming:
    """When odometry samples arrive and how they are stamped, to bound how long a frame
    waits for one: the next sample comes about one period after the last. Safe to use
    from the odometry callback and the inference thread at once."""

    WINDOW = 32
    # A sample this close to a frame's stamp (as a fraction of the odometry period) is
    # a match: using it instead of interpolating moves the pose by that fraction of one
    # odometry step at most.
    NEAR_FRACTION = 0.1
    MARGIN_S = 0.005

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stamps: deque[int] = deque(maxlen=self.WINDOW)
        self._arrivals: deque[float] = deque(maxlen=self.WINDOW)

    def add(self, stamp_ns: int, arrived: float) -> None:
        with self._lock:
            self._stamps.append(stamp_ns)
            self._arrivals.append(arrived)

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._arrivals.clear()

    @staticmethod
    def _median_step(values: Iterable[float]) -> float | None:
        steps = np.diff(np.asarray(values, dtype=np.float64))
        steps = steps[steps > 0]
        return float(np.median(steps)) if len(steps) >= 3 else None

    def has_match(self, stamp_ns: int) -> bool:
        """A sample stamped at the frame's stamp, or within a tenth of a period of it."""
        with self._lock:
            stamps = list(self._stamps)
        if stamp_ns in stamps:
            return True
        period = self._median_step(stamps)
        if period is None:
            return False
        near = self.NEAR_FRACTION * period
        return any(abs(s - stamp_ns) <= near for s in stamps)

    def deadline(self, frame_arrived: float, tolerance_s: float) -> float:
        """The time (time.monotonic) after which waiting for odometry is pointless: the
        tolerance after the frame arrived, or two arrival periods after the last sample,
        whichever is earlier (so a stopped odometry costs no frame a wait)."""
        bound = frame_arrived + tolerance_s
        with self._lock:
            stamps, arrivals = list(self._stamps), list(self._arrivals)
        stamp_period = self._median_step(stamps)
        arrival_period = self._median_step(arrivals)
        if stamp_period is None or arrival_period is None:
            return bound
        # The next sample is stamped one period after the last, so it comes about one
        # period after the last came; odometry that arrives in bursts has the longer
        # arrival period.
        period = max(stamp_period * 1e-9, arrival_period)
        return min(bound, arrivals[-1] + 2 * period + self.MARGIN_S)


@dataclass
class StatsSnapshot:
    """A consistent copy of :class:`FrameStats` for one /diagnostics message."""

    counters: dict[str, int]
    step_ms: list[float]
    publish_ms: list[float]
    camera_period_s: float | None


class FrameStats:
    """The counters and timings /diagnostics reports; every method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters = Counters()
        self._step_ms: deque[float] = deque(maxlen=STEP_TIME_WINDOW)
        # A frame's outputs: building and publishing its messages.
        self._publish_ms: deque[float] = deque(maxlen=STEP_TIME_WINDOW)
        self._stamp_gaps = StampGaps()
        # (stamp_ns, arrived) of recent frames that ran without odometry: a sample that
        # comes for one later is counted (odometry_late) and said how late.
        self._missed_odometry: deque[tuple[int, float]] = deque(maxlen=MISSED_ODOMETRY_WINDOW)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.counters, name, getattr(self.counters, name) + n)

    def received(self, stamp_ns: int, max_gap_ns: int) -> None:
        """A camera frame reached the node; the stamps tell how many did not."""
        with self._lock:
            self.counters.received += 1
            self.counters.missing += self._stamp_gaps.missing(stamp_ns, max_gap_ns)

    def processed(
        self, frame: Frame, step_ms: float, events: Iterable[EventKind], untrusted: bool
    ) -> None:
        """A frame ran through the localizer with these events (and a camera the vision
        checks did not trust, when ``untrusted``)."""
        with self._lock:
            self.counters.processed += 1
            self.counters.untrusted += int(untrusted)
            self._step_ms.append(step_ms)
            for kind in events:
                if kind in RESTART_EVENTS:
                    self.counters.resets += 1
                elif kind is EventKind.JITTER:
                    self.counters.jitter += 1
                elif kind is EventKind.NO_ODOMETRY:
                    self.counters.without_odometry += 1
                    self._missed_odometry.append((frame.stamp_ns, frame.arrived))

    def published(self, publish_ms: float) -> None:
        with self._lock:
            self._publish_ms.append(publish_ms)

    def odometry_arrived(self, stamp_ns: int, tolerance_ns: int) -> tuple[int, float] | None:
        """The (stamp_ns, arrived) of the frame that ran without this odometry sample, if
        one did (counted as odometry_late): the latest stamped at or before it, within
        ``tolerance_ns``."""
        late = None
        with self._lock:
            for missed in self._missed_odometry:
                if 0 <= stamp_ns - missed[0] <= tolerance_ns and (late is None or missed > late):
                    late = missed
            if late is not None:
                self._missed_odometry.remove(late)
                self.counters.odometry_late += 1
        return late

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(
                counters=dict(vars(self.counters)),
                step_ms=list(self._step_ms),
                publish_ms=list(self._publish_ms),
                camera_period_s=self._stamp_gaps.period_s,
            )


class FrameScheduler:
    """The latest-frame slot and the inference thread that empties it.

    ``run(frame)`` is called on that thread, one frame at a time; an exception from it
    is handed to ``failed(frame, traceback_text)`` and the thread goes on.
    ``hold_until(frame)`` is asked about a lone waiting frame: the time.monotonic()
    until which it waits (for its odometry), or None to run it now. ``dropped(n)``
    counts frames that leave the slot without running: replaced by a newer one,
    cleared, or there when processing is paused.

    A plain thread rather than an executor callback, so a frame that arrives as a step
    ends is never missed (an executor drops a wake-up whose callback group is busy) and
    no timer has to poll for held frames."""

    def __init__(
        self,
        run: Callable[[Frame], None],
        hold_until: Callable[[Frame], float | None],
        dropped: Callable[[int], None],
        failed: Callable[[Frame, str], None],
    ) -> None:
        self._run, self._hold_until = run, hold_until
        self._dropped, self._failed = dropped, failed
        self._frames = threading.Condition(threading.Lock())  # wakes the inference thread
        self._pending: deque[Frame] = deque()
        self._worker: threading.Thread | None = None
        self._stopping = False
        self._enabled = True

    @property
    def enabled(self) -> bool:
        """False while paused: callers keep new frames out and the slot stays empty."""
        return self._enabled

    @property
    def running(self) -> bool:
        return self._worker is not None

    def start(self) -> None:
        self._stopping = False
        self._worker = threading.Thread(target=self._work, name="inference", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Forget waiting frames and end the thread once the step in progress is done."""
        with self._frames:
            self._pending.clear()
            self._stopping = True
            self._frames.notify()
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    def submit(self, frame: Frame) -> None:
        with self._frames:
            self._pending.append(frame)
            self._frames.notify()

    def wake(self) -> None:
        """Something a held frame waits for (odometry) has come."""
        with self._frames:
            if self._pending:
                self._frames.notify()

    def clear(self) -> None:
        """Drop the waiting frames (counted as dropped)."""
        with self._frames:
            self._drop_all()

    def set_enabled(self, enabled: bool) -> None:
        """Pause (the waiting frames are dropped) or resume."""
        with self._frames:
            self._enabled = enabled
            if not enabled:
                self._drop_all()

    def _drop_all(self) -> None:
        if self._pending:
            self._dropped(len(self._pending))
            self._pending.clear()

    def _next_frame(self) -> tuple[Frame | None, float | None]:
        """With ``_frames`` held: the frame to run now, if any: the oldest one if it was
        held for odometry, else the newest (the ones before it are dropped: they came
        while a step was running). Otherwise how long to wait: until the held frame's
        deadline, or (None) until something arrives."""
        while len(self._pending) > 1 and not self._pending[0].held:
            self._pending.popleft()
            self._dropped(1)
        if not self._pending:
            return None, None
        frame = self._pending[0]
        if len(self._pending) == 1:
            deadline = self._hold_until(frame)
            now = time.monotonic()
            if deadline is not None and now < deadline:
                frame.held = True
                return None, deadline - now + HOLD_SLACK_S
        return self._pending.popleft(), None

    def _work(self) -> None:
        while True:
            with self._frames:
                while not self._stopping:
                    frame, wait = self._next_frame()
                    if frame is not None:
                        break
                    self._frames.wait(timeout=wait)
                else:
                    return
            try:
                self._run(frame)
            except Exception:  # a bug must not stop the node: say so loudly, go on
                self._failed(frame, traceback.format_exc())
