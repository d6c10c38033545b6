"""Background refresh: a check with an ``interval`` runs on its own schedule, and heartbeats serve
its latest result at once. A policy around the scheduler, which runs every refresh.

The refresher stores each run's raw result with the key of the run it is of; heartbeats apply
flap damping to it like to any result, so a run is counted once however often it is served.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

import anyio

from .. import health
from ..health import Error
from ._bridge import LoopThread
from ._check import Check
from ._fork import after_fork_in_child
from ._report import CheckResult
from ._scheduler import Run


@dataclass(frozen=True)
class Latest:
    """A background-refreshed check's latest raw result, the key of the run that gave it (for
    flap damping) and when it came."""

    result: CheckResult
    key: Hashable
    stored_at: float


#: Starts (or joins) a run of a check through the scheduler; ``None`` if it could not start.
StartRun = Callable[[Check], "Run | None"]
#: ``await settle(check, run, started)`` waits for a run and returns its raw result and key.
SettleRun = Callable[[Check, "Run | None", float], Awaitable["tuple[CheckResult, Hashable]"]]


class Refresher:
    """Runs each background-refreshed check every ``interval`` seconds while heartbeats ask for it.

    A refresh task ends once no heartbeat asked for its check for ``max(10 * interval, 60)``
    seconds (a check re-registered or removed), or when :meth:`reset` is called (after fork too).

    :param bridge: the loop thread the refresh tasks run on.
    :param start: starts a run of a check, through the scheduler.
    :param settle: waits for a run and returns its raw result and run key.
    """

    def __init__(self, bridge: LoopThread, start: StartRun, settle: SettleRun) -> None:
        self.bridge = bridge
        self._start = start
        self._settle = settle
        self.reset()
        after_fork_in_child(self, Refresher.reset)

    def reset(self) -> None:
        """Forget every latest result; running refresh tasks end at their next round."""
        self._lock = threading.Lock()
        self._generation = object()
        self._latest: dict[Check, Latest] = {}
        self._wanted: dict[Check, float] = {}
        # Checks with a refresh task.
        self._tasks: set[Check] = set()
        # The run each refresh task waits for now.
        self._pending: dict[Check, Run | None] = {}

    def latest(self, check: Check) -> Latest | None:
        """Return the latest result of ``check``, or ``None`` before its first refresh ended.

        Starts the check's refresh task when it has none.
        """
        self._wanted[check] = time.monotonic()
        if check not in self._tasks:
            with self._lock:
                if check not in self._tasks:
                    self._tasks.add(check)
                    try:
                        self.bridge.submit(self._refresh, check, self._generation)
                    except RuntimeError:
                        # No loop thread (it could not start): heartbeats run the check
                        # themselves meanwhile, and the next one tries again.
                        self._tasks.discard(check)
                        return None
        return self._latest.get(check)

    def pending(self, check: Check) -> Run | None:
        """Return the run the check's refresh task started last, or ``None`` before it started
        one (or when it could not start one)."""
        return self._pending.get(check)

    def stale(self, check: Check, latest: Latest, timeout: float) -> CheckResult | None:
        """Return an ``E014`` result if ``latest`` is older than the check's ``max_age``."""
        assert check.interval is not None
        age = time.monotonic() - latest.stored_at
        max_age = check.max_age if check.max_age is not None else 2 * check.interval + timeout
        if age <= max_age:
            return None
        message = Error(
            f"Latest result is {age:.1f}s old, more than the allowed {max_age:g}s",
            id=health.ERROR_CHECK_RESULT_STALE,
        )
        return CheckResult(check.name, (message,), latest.result.duration)

    async def _refresh(self, check: Check, generation: object) -> None:
        assert check.interval is not None
        unwanted_after = max(10 * check.interval, 60.0)
        try:
            while self._generation is generation:
                started = time.monotonic()
                run = self._pending[check] = self._start(check)
                result, key = await self._settle(check, run, started)
                if self._generation is not generation:
                    return
                self._latest[check] = Latest(result, key, time.monotonic())
                await anyio.sleep(check.interval)
                if time.monotonic() - self._wanted.get(check, 0.0) > unwanted_after:
                    self._latest.pop(check, None)
                    return
        finally:
            # Also when the loop stops: the next heartbeat starts a new task.
            if self._generation is generation:
                self._tasks.discard(check)
                self._pending.pop(check, None)
