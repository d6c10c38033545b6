"""Serving a recent report again: a policy around the scheduler, off unless a TTL is set."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable

from .. import health
from ._fork import after_fork_in_child
from ._report import Report

# Distinct check subsets whose report is kept; beyond this the cache starts over.
MAX_ENTRIES = 64


class ReportCache:
    """Keeps each report for ``ttl`` seconds (``failed_ttl`` when a check in it is failing:
    a non-critical check, or a failure held back by flap damping, counts).

    :param ttl: seconds a passing report is served again; 0 keeps none.
    :param failed_ttl: seconds a failing report is served again; 0 keeps none.
    :param fail_level: the level from which a report is failing.
    """

    def __init__(self, ttl: float, failed_ttl: float, fail_level: int) -> None:
        self.ttl = ttl
        self.failed_ttl = failed_ttl
        self.fail_level = fail_level
        self.clear()
        # A lock held by another thread at fork time would block the child for ever.
        after_fork_in_child(self, ReportCache.clear)

    @property
    def enabled(self) -> bool:
        """Whether any report is ever kept."""
        return self.ttl > 0 or self.failed_ttl > 0

    def get(self, key: Hashable) -> Report | None:
        """Return the report kept for ``key`` if it has not expired, else ``None``."""
        entry = self._reports.get(key)
        if entry is not None and entry[1] > time.monotonic():
            return entry[0]
        return None

    def put(self, key: Hashable, report: Report) -> None:
        """Keep ``report`` for ``key`` for the TTL its level calls for."""
        if self.ttl <= 0 and self.failed_ttl <= 0:
            return  # caching is off (the default): nothing to work out
        ttl = self.failed_ttl if self._failing(report) else self.ttl
        if ttl <= 0:
            return
        with self._lock:
            if len(self._reports) >= MAX_ENTRIES:
                self._reports.clear()
            self._reports[key] = (report, time.monotonic() + ttl)

    def _failing(self, report: Report) -> bool:
        # Failing checks that do not fail the heartbeat count too: a non-critical one, and a
        # failure held back by flap damping (its next runs are what report it).
        return bool(report.failing(self.fail_level)) or any(
            health.INFO_FAILURE_DAMPED in detail.messages for detail in report.results.values()
        )

    def clear(self) -> None:
        """Forget every report."""
        self._lock = threading.Lock()
        self._reports: dict[Hashable, tuple[Report, float]] = {}
