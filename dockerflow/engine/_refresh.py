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
from ._bridge import LoopStoppingError, LoopThread
from ._check import Check
from ._fork import after_fork_in_child
from ._report import CheckResult
from ._runs import Host, Run


@dataclass(frozen=True)
class Latest:
    """A background-refreshed check's latest raw result, the key of the run that gave it (for
    flap damping) and when it came."""

    result: CheckResult
    key: Hashable
    stored_at: float


#: Starts (or joins) a run of a check on a host (``None``: the loop thread) through the
#: scheduler; the run is ``None`` if it could not start, with the stuck runs that kept it.
StartRun = Callable[[Check, "Host | None"], "tuple[Run | None, list[Run]]"]
#: ``await settle(check, run, stuck, started)`` waits for a run and returns its raw result and
#: key.
SettleRun = Callable[
    [Check, "Run | None", "list[Run]", float], Awaitable["tuple[CheckResult, Hashable]"]
]
#: A refreshed check and where it runs: ``None`` for the loop thread, else an async caller's
#: host (an async check refreshed for async callers runs on their loop, with their clients).
Where = tuple[Check, "Host | None"]


class Refresher:
    """Runs each background-refreshed check every ``interval`` seconds while heartbeats ask for it.

    A check asked for by sync callers is refreshed on the loop thread; an async check asked for
    by async callers is refreshed on each caller's loop (its clients belong to that loop), and
    its refresh ends with that loop. A refresh task ends once no heartbeat asked for its check
    for ``max(10 * interval, 60)`` seconds (a check re-registered or removed), or when
    :meth:`reset` is called (after fork too).

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
        self._latest: dict[Where, Latest] = {}
        self._wanted: dict[Where, float] = {}
        # Checks with a refresh task.
        self._tasks: set[Where] = set()
        # The run each refresh task waits for now.
        self._pending: dict[Where, Run | None] = {}

    def latest(self, check: Check, host: Host | None = None) -> Latest | None:
        """Return the latest result of ``check``, or ``None`` before its first refresh ended.

        Starts the check's refresh task when it has none.

        :param host: the async caller's host to refresh an async check on; ``None`` for the
            loop thread. Called on that host's loop.
        """
        where = (check, host)
        self._wanted[where] = time.monotonic()
        if where not in self._tasks:
            with self._lock:
                if host is not None:
                    self._forget_closed()
                claimed = where not in self._tasks
                self._tasks.add(where)
            if claimed:
                # Outside the lock: submit may start the loop thread, which waits under gevent,
                # where this lock may be a real one (made at the fork, before gevent's patch).
                try:
                    if host is None:
                        self.bridge.submit(self._refresh, where, self._generation)
                    else:
                        generation = self._generation
                        host.spawn(lambda: self._refresh(where, generation))
                except RuntimeError:
                    # No loop (it could not start, or it is shutting down): heartbeats run
                    # the check themselves meanwhile, and the next one tries again.
                    with self._lock:
                        self._tasks.discard(where)
                    return None
        return self._latest.get(where)

    def _forget_closed(self) -> None:
        # Refreshes on loops closed without cancelling their tasks never end by themselves.
        for where in [w for w in self._tasks if w[1] is not None and w[1].closed]:
            self._tasks.discard(where)
            for table in (self._latest, self._wanted, self._pending):
                table.pop(where, None)

    def pending(self, check: Check, host: Host | None = None) -> Run | None:
        """Return the run the check's refresh task started last, or ``None`` before it started
        one (or when it could not start one)."""
        return self._pending.get((check, host))

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

    async def _refresh(self, where: Where, generation: object) -> None:
        check, host = where
        assert check.interval is not None
        unwanted_after = max(10 * check.interval, 60.0)
        try:
            while self._generation is generation:
                started = time.monotonic()
                run, stuck = self._start(check, host)
                if run is not None and isinstance(run.error, LoopStoppingError):
                    return  # the engine is closing: no result to keep, no loop to start
                self._pending[where] = run
                result, key = await self._settle(check, run, stuck, started)
                if self._generation is not generation:
                    return
                self._latest[where] = Latest(result, key, time.monotonic())
                await anyio.sleep(check.interval)
                if time.monotonic() - self._wanted.get(where, 0.0) > unwanted_after:
                    self._latest.pop(where, None)
                    return
        finally:
            # Also when the loop stops: the next heartbeat starts a new task.
            if self._generation is generation:
                self._tasks.discard(where)
                self._pending.pop(where, None)
                if host is not None:
                    self._latest.pop(where, None)
