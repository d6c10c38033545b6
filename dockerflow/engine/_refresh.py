"""Background refresh: a check with an ``interval`` runs on its own schedule, and heartbeats serve
its latest result at once. A policy around the scheduler, which runs every refresh."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
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
    """A background-refreshed check's latest result, the run that gave it and when it came."""

    result: CheckResult
    run: object
    stored_at: float


#: Starts (or joins) a run of a check and returns it with whether it was already stuck.
StartRun = Callable[[Check], "tuple[Run, bool]"]
#: ``await finish(run, stuck)`` waits (on the loop thread) for a run and returns its result.
FinishRun = Callable[[Run, bool], Awaitable[CheckResult]]


class Refresher:
    """Runs each background-refreshed check every ``interval`` seconds while heartbeats ask for it.

    A refresh task ends once no heartbeat asked for its check for ``max(10 * interval, 60)``
    seconds (a check re-registered or removed), or when :meth:`reset` is called (after fork too).

    :param bridge: the loop thread the refresh tasks run on.
    :param start: starts a run of a check (the scheduler's single path).
    :param finish: ``await finish(run, stuck)`` waits for a run and returns its result.
    """

    def __init__(
        self,
        bridge: LoopThread,
        start: StartRun,
        finish: FinishRun,
    ) -> None:
        self.bridge = bridge
        self._start = start
        self._finish = finish
        self.reset()
        after_fork_in_child(self, Refresher.reset)

    def reset(self) -> None:
        """Forget every latest result; running refresh tasks end at their next round."""
        self._lock = threading.Lock()
        self._generation = object()
        self._latest: dict[Check, Latest] = {}
        self._wanted: dict[Check, float] = {}
        # Checks with a refresh task, and the run to wait for before there is a latest result.
        self._tasks: dict[Check, tuple[Run, bool]] = {}

    def want(self, check: Check) -> Latest | tuple[Run, bool]:
        """Return the latest result of ``check``, or, before there is one, the first run to
        wait for. Starts the check's refresh task (with that run) when it has none."""
        self._wanted[check] = time.monotonic()
        with self._lock:
            first = self._tasks.get(check)
            if first is None:
                first = self._tasks[check] = self._start(check)
                self.bridge.submit(self._refresh, check, first, self._generation)
        latest = self._latest.get(check)
        return latest if latest is not None else first

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

    async def _refresh(self, check: Check, first: tuple[Run, bool], generation: object) -> None:
        assert check.interval is not None
        unwanted_after = max(10 * check.interval, 60.0)
        started = first
        try:
            while self._generation is generation:
                run, stuck = started
                result = await self._finish(run, stuck)
                if self._generation is not generation:
                    return
                self._latest[check] = Latest(result, run, time.monotonic())
                await anyio.sleep(check.interval)
                if time.monotonic() - self._wanted.get(check, 0.0) > unwanted_after:
                    self._latest.pop(check, None)
                    return
                started = self._start(check)
        finally:
            # Also when the loop stops: the next heartbeat starts a new task.
            if self._generation is generation:
                self._tasks.pop(check, None)
