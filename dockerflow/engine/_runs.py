"""The runs of checks in progress in this process: one registry under one lock.

A :class:`Run` is one execution of one check. Every run in progress is in the process's
:data:`RUNS`, whichever engine, app or event loop started it: heartbeats find there the run they
share, the bound on stuck runs is counted there, and the stuck-threads gauge is read from there.
A run leaves the registry when it ends, or when the event loop it runs on is found closed.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import anyio
import anyio.lowlevel

from ._bridge import call_soon
from ._check import Check
from ._fork import after_fork_in_child

T = TypeVar("T")

#: Seconds a heartbeat waits for an async run past the run's timeout, for the run's own
#: cancellation to end it (it is cancelled at its timeout); past it the heartbeat answers
#: without the run.
CANCEL_WAIT = 0.1
#: Most runs of one check function past their timeout (stuck) in progress at a time in the
#: process, whichever engines and loops started them; for a sync check, the threads it may hold.
MAX_STUCK_RUNS = 2
#: What :meth:`RunRegistry.runs_of` returns for a function with no run in progress (shared).
_NO_RUNS: list[Run] = []


class Host(Protocol):
    """Where async runs execute: a task group on one event loop, owned by a scheduler."""

    def spawn(self, func: Callable[[], Any]) -> None:
        """Start ``func()`` as a task of the host, without waiting for it."""

    @property
    def closed(self) -> bool:
        """Whether the host's event loop has closed (its runs can never end)."""


class Run:
    """One execution of one check, shared by every heartbeat that asks while it is in progress.

    When it ends, whatever its outcome, ``ended`` is set and its waiters are woken: ``value``,
    ``error``, ``timed_out`` (its timeout fired), ``abandoned`` (its loop shut down under it) or
    ``start_error`` (it could not be started) were set before.

    :param owner: what started it; only runs of one owner are shared (an app's runs execute in
        that app's context).
    """

    __slots__ = (
        "_event",
        "_joined",
        "_waiters",
        "abandoned",
        "blocked_for",
        "check",
        "deadline",
        "ended",
        "error",
        "finished",
        "host",
        "owner",
        "result",
        "start_error",
        "started",
        "step_started",
        "timed_out",
        "timeout",
        "value",
        "warned",
    )

    def __init__(self, check: Check, timeout: float, host: Host | None, owner: object) -> None:
        self.check = check
        self.timeout = timeout
        #: The host an async run executes on; ``None`` for a sync run (a worker thread).
        self.host = host
        self.owner = owner
        self.started = time.monotonic()
        #: The ``time.monotonic()`` value by which every heartbeat sharing the run answers:
        #: its start plus its timeout (plus :data:`CANCEL_WAIT` for an async run).
        self.deadline = self.started + timeout + (CANCEL_WAIT if check.is_async else 0.0)
        self.finished = 0.0
        self.ended = False
        # Made by the first thread that waits for this run alone (most runs are waited for by
        # a heartbeat's one :class:`Waiter`, and need none); under RUNS.lock.
        self._event: threading.Event | None = None
        # The waiters of sync heartbeats counting on this run; under RUNS.lock.
        self._joined: list[Waiter] | None = None
        # Callbacks of async waiters, each removed again by its waiter: a waiter's loop must not
        # be kept alive by a run that outlives it. Made by the first; under RUNS.lock.
        self._waiters: list[Callable[[], object]] | None = None
        self.value: Any = None
        self.error: BaseException | None = None
        self.timed_out = False
        self.abandoned = False
        self.start_error = False
        #: Longest time the check ran without awaiting (async runs), in seconds.
        self.blocked_for = 0.0
        #: When the step of the coroutine running now began; ``None`` between steps.
        self.step_started: float | None = None
        #: Whether blocking the loop was logged for this run (once per run).
        self.warned = False
        #: What the engine made of the outcome, kept so that it is made once per run.
        self.result: Any = None

    @property
    def done(self) -> bool:
        """Whether the run has ended."""
        return self.ended

    @property
    def duration(self) -> float:
        """Seconds from the start to the end of the run (to now while it is in progress)."""
        end = self.finished if self.ended else time.monotonic()
        return end - self.started

    def stuck(self, now: float) -> bool:
        """Whether the run is in progress past its timeout at ``now``."""
        return not self.ended and now - self.started >= self.timeout

    def wait(self, deadline: float) -> None:
        """Block the calling thread until the run has ended or ``deadline`` has passed."""
        if self.ended:
            return
        event = self._event
        if event is None:
            with RUNS.lock:
                if self.ended:
                    return
                if self._event is None:
                    self._event = threading.Event()
                event = self._event
        event.wait(max(0.0, deadline - time.monotonic()))

    async def wait_async(self, deadline: float) -> None:
        """Wait until the run has ended or ``deadline`` has passed, holding no thread."""
        if self.ended or deadline <= time.monotonic():
            return
        token = anyio.lowlevel.current_token()
        ended = anyio.Event()

        def wake() -> None:
            # Called in whichever thread ends the run: reach the waiter's loop safely.
            with contextlib.suppress(RuntimeError):  # that loop closed: nobody waits any more
                call_soon(token, ended.set)

        if not RUNS.add_waiter(self, wake):
            return
        try:
            with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                await ended.wait()
        finally:
            RUNS.remove_waiter(self, wake)


class Waiter:
    """One sync heartbeat waiting for all its runs at once: woken once, when the last of them
    ends, rather than once per run; and at each unfinished run's own deadline, when that run
    stops counting (the heartbeat answers without it).

    Used by one thread, once.
    """

    __slots__ = ("_gate", "_runs", "pending")

    def __init__(self) -> None:
        # Held until the last run counted ends: a bare lock is the cheapest one-shot signal.
        self._gate = threading.Lock()
        self._gate.acquire()
        self._runs: list[Run] = []
        #: Runs counted that have not ended; under RUNS.lock.
        self.pending = 0

    def join(self, runs: list[Run]) -> None:
        """Count the runs of ``runs`` that are in progress and before their deadline."""
        now = time.monotonic()
        with RUNS.lock:
            for run in runs:
                if run.ended or run.deadline <= now or (run._joined and self in run._joined):
                    continue
                if run._joined is None:
                    run._joined = []
                run._joined.append(self)
                self._runs.append(run)
                self.pending += 1

    def wait(self, deadline: float) -> bool:
        """Block until every run counted has ended or ``deadline`` has passed.

        :returns: whether every run counted has ended.
        """
        if self.pending == 0:
            return True
        if self._gate.acquire(timeout=max(0.0, deadline - time.monotonic())):
            self._gate.release()  # open for good: a later wait returns at once
            return True
        return self.pending == 0

    def wait_all(self) -> None:
        """Block until each run counted has ended or reached its own deadline, whichever is
        first; a run past its deadline stops counting then."""
        while self.pending:
            now = time.monotonic()
            first = math.inf
            overdue: list[Run] = []
            for run in self._runs:
                if not run.ended:
                    deadline = run.deadline
                    if deadline <= now:
                        overdue.append(run)
                    elif deadline < first:
                        first = deadline
            if overdue:
                self._leave(overdue)
            if first == math.inf or self.wait(first):
                break
        if self.pending:
            self._leave(self._runs)

    def _leave(self, runs: list[Run]) -> None:
        with RUNS.lock:
            for run in runs:
                joined = run._joined
                if not run.ended and joined is not None and self in joined:
                    joined.remove(self)
                    self.pending -= 1
            self._runs = [run for run in self._runs if run not in runs]

    def _one_ended(self) -> bool:
        # Under RUNS.lock: whether this was the last run counted.
        self.pending -= 1
        return self.pending == 0

    def _wake(self) -> None:
        self._gate.release()


class RunRegistry:
    """Every run in progress in the process, by check function, under one lock.

    Process-wide by definition: every engine, app and API shares the threads a stuck check
    holds, so the bound of :data:`MAX_STUCK_RUNS` is counted over all of them. A forked child
    starts with none: the parent's threads are not in it.
    """

    def __init__(self) -> None:
        self._reset()
        after_fork_in_child(self, RunRegistry._reset)

    def _reset(self) -> None:
        #: The one lock of the engine's runs; short sections only, no I/O under it.
        self.lock = threading.Lock()
        # id(function) -> its runs in progress, oldest first; each run holds its function, so
        # the ids stay unique while they are keys.
        self._runs: dict[int, list[Run]] = {}

    # Called with the lock held ------------------------------------------------------------

    def runs_of(self, check: Check) -> list[Run]:
        """Return the runs of ``check``'s function in progress, oldest first (empty if none).
        The list is the registry's own: read it under the lock, never change it."""
        return self._runs.get(id(check.func), _NO_RUNS)

    def newest(self, check: Check, timeout: float, host: Host | None, owner: object) -> Run | None:
        """Return the newest run in progress of ``check``'s function started by ``owner`` with
        this timeout on this host (the run a heartbeat may share), or ``None``."""
        for run in reversed(self._runs.get(id(check.func), ())):
            if run.owner is owner and run.timeout == timeout and run.host is host:
                return run
        return None

    def stuck_of(self, check: Check, now: float) -> list[Run]:
        """Return the runs of ``check``'s function in progress past their timeout, oldest
        first; runs on a closed loop are dropped (they can never end)."""
        runs = self._runs.get(id(check.func))
        if not runs:
            return []
        dead = [run for run in runs if run.host is not None and run.host.closed]
        for run in dead:
            self._drop(run)
        return [run for run in self._runs.get(id(check.func), ()) if run.stuck(now)]

    def add(self, run: Run) -> None:
        """Count ``run`` in."""
        self._runs.setdefault(id(run.check.func), []).append(run)

    def _drop(self, run: Run) -> None:
        key = id(run.check.func)
        runs = self._runs.get(key)
        if runs is not None and run in runs:
            runs.remove(run)
            if not runs:
                del self._runs[key]

    # Taking the lock themselves -----------------------------------------------------------

    def end(self, run: Run, update: Callable[..., T] | None = None, *args: Any) -> T | None:
        """Take ``run`` out and wake whoever waits for it; ``run`` has ended (its ``finished``
        is set).

        :param update: called with ``args`` under the lock once the run is out, before anyone
            is woken.
        :returns: what ``update`` returned.
        """
        with self.lock:
            self._drop(run)
            out = update(*args) if update is not None else None
            run.ended = True
            waiters, run._waiters = run._waiters, None
            joined, run._joined = run._joined, None
            woken = [w for w in joined if w._one_ended()] if joined else ()
            event = run._event
        if event is not None:
            event.set()
        for waiter in woken:
            waiter._wake()
        if waiters:
            for wake in waiters:
                wake()
        return out

    def add_waiter(self, run: Run, wake: Callable[[], object]) -> bool:
        """Have ``wake()`` called when ``run`` ends; ``False`` if it has ended already."""
        with self.lock:
            if run.ended:
                return False
            if run._waiters is None:
                run._waiters = []
            run._waiters.append(wake)
            return True

    def remove_waiter(self, run: Run, wake: Callable[[], object]) -> None:
        """Forget ``wake`` (its waiter stopped waiting)."""
        with self.lock, contextlib.suppress(ValueError):
            if run._waiters is not None:
                run._waiters.remove(wake)

    def stuck(self, owner: object) -> dict[str, int]:
        """Return check name → runs started by ``owner`` in progress past their timeout."""
        now = time.monotonic()
        with self.lock:
            live = [run for runs in self._runs.values() for run in runs if run.owner is owner]
        out: dict[str, int] = {}
        for run in live:
            if run.stuck(now) and not (run.host is not None and run.host.closed):
                out[run.check.name] = out.get(run.check.name, 0) + 1
        return out


#: The process's runs in progress (see :class:`RunRegistry`).
RUNS = RunRegistry()
