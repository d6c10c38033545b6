"""Flap damping: a failing check is reported only once it keeps failing. A policy on results."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from .. import health
from ..health import Info
from ._check import Check
from ._fork import after_fork_in_child
from ._report import CheckResult

# Failing runs remembered per streak, so that heartbeats sharing a run count it once.
_REMEMBERED = 16


@dataclass
class _Streak:
    #: Failures counted: one per failing run, and one more per timeout a stuck run overruns.
    count: int
    since: float
    counted: deque[Hashable] = field(default_factory=lambda: deque(maxlen=_REMEMBERED))
    #: Distinct runs among them, for the message (a stuck run is one run, however long).
    runs: int = 0
    last_run: object = None


class Damper:
    """Holds back a damped check's failures until ``failure_threshold`` consecutive failing
    runs or ``failure_delay`` seconds of failing, whichever comes first.

    A failure held back becomes an Info message (``dockerflow.health.I002``). Each failing run
    counts once, however many heartbeats share it: results come with a key naming the run they
    are of (see :func:`~._results.run_key`).

    :param fail_level: the level from which a result is a failure.
    """

    def __init__(self, fail_level: int) -> None:
        self.fail_level = fail_level
        self.clear()
        # A lock held by another thread at fork time would block the child for ever.
        after_fork_in_child(self, Damper.clear)

    def clear(self) -> None:
        """Forget every streak."""
        self._lock = threading.Lock()
        self._streaks: dict[Check, _Streak] = {}

    def apply(self, check: Check, result: CheckResult, key: Hashable) -> CheckResult:
        """Return ``result``, or an Info message in its place while a failure is held back.

        :param result: the check's raw result (never one this damper made).
        :param key: identifies the run (or the stretch of a run) that gave ``result``; a key
            already counted in the streak is not counted again.
        """
        if not check.damped:
            return result
        now = time.monotonic()
        with self._lock:
            if not any(m.level >= self.fail_level for m in result.messages):
                self._streaks.pop(check, None)
                return result
            streak = self._streaks.get(check)
            if streak is None:
                streak = self._streaks[check] = _Streak(0, now)
            if key not in streak.counted:
                streak.counted.append(key)
                streak.count += 1
                run = key[0] if isinstance(key, tuple) and key else key
                if run is not streak.last_run:
                    streak.last_run = run
                    streak.runs += 1
            count, since, runs = streak.count, streak.since, streak.runs
        failing_for = now - since
        due = (check.failure_threshold > 1 and count >= check.failure_threshold) or (
            check.failure_delay > 0 and failing_for >= check.failure_delay
        )
        if due:
            return result
        first = next(m for m in result.messages if m.level >= self.fail_level)
        held = Info(
            f"Failing for {runs} run(s) over {failing_for:.1f}s, not reported yet: {first.msg}",
            id=health.INFO_FAILURE_DAMPED,
        )
        return CheckResult(result.name, (held,), result.duration, data=result.data)
