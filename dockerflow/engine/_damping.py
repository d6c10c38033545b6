"""Flap damping: a failing check is reported only once it keeps failing. A policy on results."""

from __future__ import annotations

import threading
import time

from .. import health
from ..health import Info
from ._check import Check
from ._report import CheckResult


class Damper:
    """Holds back a damped check's failures until ``failure_threshold`` consecutive failing
    runs or ``failure_grace`` seconds of failing, whichever comes first.

    A failure held back becomes an Info message (``dockerflow.health.I002``). Several heartbeats
    sharing one run count it once.

    :param fail_level: the level from which a result is a failure.
    """

    def __init__(self, fail_level: int) -> None:
        self.fail_level = fail_level
        self._lock = threading.Lock()
        # Per check: the failing streak's length, when it began and the last run counted in it.
        self._streaks: dict[Check, tuple[int, float, object]] = {}

    def apply(self, check: Check, result: CheckResult, run: object) -> CheckResult:
        """Return ``result``, or an Info message in its place while a failure is held back.

        :param run: what identifies the run that gave ``result`` (counted once per streak).
        """
        if not check.damped:
            return result
        now = time.monotonic()
        with self._lock:
            if not any(m.level >= self.fail_level for m in result.messages):
                self._streaks.pop(check, None)
                return result
            count, since, counted = self._streaks.get(check, (0, now, None))
            if counted is not run:
                count += 1
            self._streaks[check] = (count, since, run)
        failing_for = now - since
        due = (check.failure_threshold > 1 and count >= check.failure_threshold) or (
            check.failure_grace > 0 and failing_for >= check.failure_grace
        )
        if due:
            return result
        first = next(m for m in result.messages if m.level >= self.fail_level)
        held = Info(
            f"Failing for {count} run(s) over {failing_for:.1f}s, not reported yet: {first.msg}",
            id=health.INFO_FAILURE_DAMPED,
        )
        return CheckResult(check.name, (held,), result.duration)
