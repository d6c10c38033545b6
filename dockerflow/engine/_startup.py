"""The startup grace: while an app starts, a check that has not passed yet counts as a warning.

A policy applied to a finished report, like the non-critical cap: the checks run and are
logged as usual, and only the levels the report gives them change. The grace is bounded twice:
it ends when its seconds have passed since it began, or as soon as every check has passed once,
whichever comes first, and once over it never comes back.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable

from ..health import INFO_FAILURE_DAMPED, WARNING
from ._check import MAX_SECONDS
from ._exceptions import ConfigurationError
from ._fork import after_fork_in_child
from ._report import Report

logger = logging.getLogger("dockerflow.engine")


class StartupGrace:
    """The startup grace of one app.

    Until ``seconds`` have passed since it was made, or every check has passed once, a check
    that fails (reports ``fail_level`` or above) and has not passed since the grace began is
    reported at :data:`~dockerflow.health.WARNING` level with
    :attr:`~dockerflow.engine.CheckDetail.starting` set; its
    :attr:`~dockerflow.engine.CheckDetail.raw_level` keeps the level it really reported. A
    check that has passed once is reported as it is from then on, even while other checks are
    still starting; a check registered after the grace is over never starts. A failure held
    back by flap damping (``I002``) is not a pass.

    Safe to use from several threads at once.

    :param seconds: the length of the grace; ``0`` makes it over from the start.
    :param clock: the monotonic clock the grace is measured on.
    :raises ConfigurationError: if ``seconds`` is negative, not finite or not a number.
    """

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not 0 <= seconds <= MAX_SECONDS
        ):
            raise ConfigurationError(
                f"the startup grace must be a number of seconds from 0 to {MAX_SECONDS:g}, "
                f"got {seconds!r}"
            )
        #: The length of the grace, in seconds.
        self.seconds = float(seconds)
        self._clock = clock
        self._began = clock()
        self._over = self.seconds == 0
        self._passed: set[str] = set()
        self._new_lock()
        # A lock held by another thread at fork time would block the child for ever.
        after_fork_in_child(self, StartupGrace._new_lock)
        # The last report given and the one made from it, while nothing changed in between: a
        # report the engine serves again from its cache gets the same excused report back, so
        # that what counts reports by identity (metrics, health+json times) still can.
        self._memo: tuple[Report, int, Report] | None = None
        self._generation = 0

    def _new_lock(self) -> None:
        self._lock = threading.Lock()

    @property
    def over(self) -> bool:
        """Whether the grace is over (its seconds passed, or every check passed once)."""
        if not self._over and self._clock() - self._began >= self.seconds:
            with self._lock:
                self._end(f"after {self.seconds:g}s")
        return self._over

    def _end(self, why: str) -> None:
        # Called with the lock held.
        if not self._over:
            self._over = True
            self._generation += 1
            self._memo = None
            logger.info("Startup grace over %s: failing checks fail the heartbeat", why)

    def apply(self, report: Report, fail_level: int, every_check: Iterable[str]) -> Report:
        """Return ``report`` with the failures of the checks still starting excused.

        :param report: the report the engine made (of every check, or of a subset).
        :param fail_level: the level from which a check fails.
        :param every_check: the names of every check the app has now, run in this report or
            not: when all of them have passed once, the grace is over.
        :returns: ``report`` itself when no check is excused, else a new report whose excused
            checks are at :data:`~dockerflow.health.WARNING` level and ``starting``.
        """
        if self.over:
            return report
        with self._lock:
            passed = {
                name
                for name, detail in report.results.items()
                if detail.raw_level < fail_level and INFO_FAILURE_DAMPED not in detail.messages
            }
            if not passed <= self._passed:
                self._passed |= passed
                self._generation += 1
            if self._passed.issuperset(every_check):
                self._end("once every check has passed")
                return report
            memo = self._memo
            if memo is not None and memo[0] is report and memo[1] == self._generation:
                return memo[2]
            excused = {
                name: dataclasses.replace(detail, level=min(detail.level, WARNING), starting=True)
                for name, detail in report.results.items()
                if detail.raw_level >= fail_level and name not in self._passed
            }
            if not excused:
                return report
            results = {name: excused.get(name, detail) for name, detail in report.results.items()}
            graced = Report(max(d.level for d in results.values()), results)
            self._memo = (report, self._generation, graced)
            return graced
