"""The one scheduler: every run of every check starts here, whoever asks for it.

A :class:`Run` is one execution of one check. Sync checks run in daemon worker threads, async
checks as tasks on an event loop (the engine's loop thread for sync callers, the caller's own loop
for async callers). Each run gets a fresh context of its own: a new :mod:`contextvars` context and
whatever the engine's ``context`` factory returns (the Flask layer passes ``app.app_context``),
entered where the run executes and exited when the check returns, also when no heartbeat waits for
it any more. Heartbeats asking for a check whose run is in progress share that run (single-flight);
a run still going after its restart delay is left behind and a new one started beside it, never
more than two per check.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from contextlib import AbstractContextManager
from typing import Any

import anyio

from ._bridge import LoopThread
from ._check import Check
from ._fork import after_fork_in_child
from ._workers import WorkerPool

logger = logging.getLogger("dockerflow.engine")

#: Makes the context each run of a check executes in (for Flask: ``app.app_context``).
ContextFactory = Callable[[], AbstractContextManager[Any]]
#: Starts a coroutine function as a task on some event loop, without waiting for it.
Spawner = Callable[[Callable[[], Coroutine[Any, Any, None]]], object]

#: Seconds a heartbeat waits for an async run past the run's timeout, for the run to report its
#: own timeout (it is cancelled then); past it the heartbeat answers without the run.
GRACE = 0.1
#: An async check that runs this long without awaiting anything blocks the loop; it is logged.
BLOCKING_STEP = 0.1
#: Most runs of one check in progress at a time (threads, for a sync check).
MAX_RUNS_PER_CHECK = 2


class Run:
    """One execution of one check, shared by every heartbeat that asks while it is in progress.

    Its outcome is ``value`` or ``error``, or ``cancelled`` (an async run cancelled at its
    timeout), unless it was ``abandoned``. ``done`` is set when the check has returned (a
    :class:`threading.Event`, so any thread can wait on it); ``loop_done`` is the same for
    waiters on the run's own loop.
    """

    __slots__ = (
        "abandoned",
        "blocked_for",
        "cancelled",
        "check",
        "done",
        "error",
        "finished",
        "loop",
        "loop_done",
        "result",
        "started",
        "step_started",
        "timeout",
        "value",
    )

    def __init__(self, check: Check, timeout: float, loop: object | None) -> None:
        self.check = check
        self.timeout = timeout
        #: The event loop an async run executes on (its native token), ``None`` for a thread.
        self.loop = loop
        self.started = time.monotonic()
        self.finished = 0.0
        self.value: Any = None
        self.error: BaseException | None = None
        self.cancelled = False
        #: The run was cancelled from outside before it finished (its caller went away, or the
        #: loop stopped): it has no outcome.
        self.abandoned = False
        #: Longest time the check ran without awaiting (async runs), in seconds.
        self.blocked_for = 0.0
        #: When the step of the coroutine running now began; ``None`` between steps.
        self.step_started: float | None = None
        #: What the engine made of the outcome, kept so that it is made (and logged) once.
        self.result: Any = None
        self.done = threading.Event()
        self.loop_done: anyio.Event | None = None

    @property
    def duration(self) -> float:
        """Seconds from the start to the end of the run (to now while it is in progress)."""
        end = self.finished if self.done.is_set() else time.monotonic()
        return end - self.started


class Scheduler:
    """Starts runs of checks, one path for sync and async callers alike.

    :param bridge: the loop thread that runs async checks for sync callers.
    :param context: makes the context each run executes in, or ``None`` for none.
    """

    def __init__(self, bridge: LoopThread, context: ContextFactory | None = None) -> None:
        self.bridge = bridge
        self._context = context
        self._reset()
        # The child has none of the parent's threads: what ran there is not running here.
        after_fork_in_child(self, Scheduler._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        # The newest run of each check in progress, per loop (``None``: worker threads).
        self._running: dict[tuple[Check, object | None], Run] = {}
        # Runs in progress per check, the ones left behind included.
        self._live: dict[Check, int] = {}
        # The async run executing a step on each loop right now (at most one per loop).
        self._stepping: dict[object, Run] = {}
        self._pool = WorkerPool()

    # -- starting runs --------------------------------------------------------------------------

    def start(
        self,
        check: Check,
        timeout: float,
        restart_after: float,
        *,
        loop: object | None = None,
        spawn: Spawner | None = None,
    ) -> tuple[Run, bool]:
        """Return the run of ``check`` a heartbeat should wait on, starting one if needed.

        :param timeout: the check's timeout.
        :param restart_after: a run in progress for this long is left behind and a new one
            started, when fewer than :data:`MAX_RUNS_PER_CHECK` are in progress.
        :param loop: for an async check, the event loop it runs on (a native loop token).
        :param spawn: for an async check, starts a task on that loop.
        :returns: ``(run, stuck)``; ``stuck`` is true when the run was already in progress for
            longer than ``timeout`` (an earlier heartbeat's), so there is nothing to wait for.
        """
        key = (check, loop if check.is_async else None)
        now = time.monotonic()
        with self._lock:
            run = self._running.get(key)
            if run is not None:
                age = now - run.started
                if age < timeout:
                    return run, False
                if age < restart_after or self._live.get(check, 0) >= MAX_RUNS_PER_CHECK:
                    return run, True
                logger.warning(
                    "Dockerflow check %r has been running for %.1fs; starting it again beside "
                    "the stuck run",
                    check.name,
                    age,
                )
            run = self._running[key] = Run(check, timeout, key[1])
            self._live[check] = self._live.get(check, 0) + 1
        if check.is_async:
            assert spawn is not None, "an async check needs a loop to run on"
            spawn(lambda: self._execute_async(run))
        else:
            self._pool.submit(lambda: self._execute_sync(run))
        return run, False

    def stuck(self) -> dict[str, int]:
        """Return check name → runs still in progress past their timeout (each holds a thread,
        for a sync check), for the checks that have any."""
        now = time.monotonic()
        with self._lock:
            runs = list(self._running.values())
            live = dict(self._live)
        out: dict[str, int] = {}
        for run in runs:
            if now - run.started >= run.timeout:
                # The newest run is stuck, and so is any run left behind beside it.
                out[run.check.name] = out.get(run.check.name, 0) + live.get(run.check, 1)
        return out

    def blocker(self, loop: object | None) -> Run | None:
        """Return the async run blocking ``loop`` now (a step longer than
        :data:`BLOCKING_STEP`), or ``None``."""
        if loop is None:
            return None
        run = self._stepping.get(loop)
        started = run.step_started if run is not None else None
        if run is None or started is None or time.monotonic() - started < BLOCKING_STEP:
            return None
        return run

    # -- executing runs -------------------------------------------------------------------------

    def _enter(self) -> AbstractContextManager[Any]:
        return self._context() if self._context is not None else contextlib.nullcontext()

    def _execute_sync(self, run: Run) -> None:
        """Run a sync check in this worker thread, in a fresh context; never raises."""
        try:
            # A fresh context: nothing of the caller's, nor of an earlier run in this thread.
            run.value = contextvars.Context().run(self._call_sync, run)
        except BaseException as exc:  # a check's SystemExit must not end the worker thread
            run.error = exc
        finally:
            self._finish(run)

    def _call_sync(self, run: Run) -> Any:
        with self._enter():
            value = run.check.func()
            if hasattr(value, "__await__"):
                # A def that returned an awaitable (``lambda: client.ping()``): awaited on the
                # loop thread, within the run's timeout.
                value = self.bridge.call(_await_within, value, run.started + run.timeout)
            return value

    async def _execute_async(self, run: Run) -> None:
        """Run an async check as this task, under its timeout; never raises."""
        if run.loop_done is None:
            run.loop_done = anyio.Event()
        try:
            with anyio.move_on_after(max(0.0, run.started + run.timeout - time.monotonic())):
                try:
                    with self._enter():
                        run.value = await _Stepped(run.check.func(), self, run)
                except Exception as exc:
                    run.error = exc
                return
            run.cancelled = True
        except anyio.get_cancelled_exc_class():
            run.abandoned = True
            raise
        finally:
            self._finish(run)
            run.loop_done.set()

    def _finish(self, run: Run) -> None:
        run.finished = time.monotonic()
        key = (run.check, run.loop)
        with self._lock:
            # Only this run's own entry: a newer run of the check may own it by now.
            if self._running.get(key) is run:
                del self._running[key]
            left = self._live.get(run.check, 1) - 1
            if left > 0:
                self._live[run.check] = left
            else:
                self._live.pop(run.check, None)
        run.done.set()

    def _step_started(self, run: Run) -> None:
        # Called on the run's loop thread only: one step runs at a time per loop.
        run.step_started = time.monotonic()
        self._stepping[run.loop] = run

    def _step_ended(self, run: Run) -> None:
        started = run.step_started
        run.step_started = None
        if self._stepping.get(run.loop) is run:
            del self._stepping[run.loop]
        if started is None:
            return
        blocked = time.monotonic() - started
        if blocked >= BLOCKING_STEP and blocked > run.blocked_for:
            if run.blocked_for < BLOCKING_STEP:  # once per run
                logger.warning(
                    "Dockerflow check %r blocked the event loop for %.2fs without awaiting; "
                    "make it a def check if it calls blocking code",
                    run.check.name,
                    blocked,
                )
            run.blocked_for = blocked


class _Stepped:
    """Awaits a check's awaitable one step at a time, noting when each step starts and ends.

    A step is the code between two suspensions; one that runs long holds the whole loop. Knowing
    which run is in a step tells a heartbeat whose deadline passed which check blocked the loop.
    """

    __slots__ = ("_awaitable", "_run", "_scheduler")

    def __init__(self, awaitable: Awaitable[Any], scheduler: Scheduler, run: Run) -> None:
        self._awaitable = awaitable
        self._scheduler = scheduler
        self._run = run

    def __await__(self) -> Generator[Any, Any, Any]:
        inner = self._awaitable.__await__()
        scheduler, run = self._scheduler, self._run
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            scheduler._step_started(run)
            try:
                yielded = inner.throw(thrown) if thrown is not None else inner.send(sent)
            except StopIteration as stop:
                return stop.value
            finally:
                scheduler._step_ended(run)
            sent, thrown = None, None
            try:
                sent = yield yielded
            except GeneratorExit:
                close = getattr(inner, "close", None)
                if close is not None:
                    close()
                raise
            except BaseException as exc:  # cancellation and the like go on to the check
                thrown = exc


class DeadlinePassedError(Exception):
    """The awaitable a sync check returned did not finish within the check's timeout."""


async def _await_within(awaitable: Awaitable[Any], deadline: float) -> Any:
    with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
        return await awaitable
    raise DeadlinePassedError


def wait_all(waits: list[tuple[Run, float]]) -> None:
    """Block until each run is done or its deadline (a ``time.monotonic()`` value) passed."""
    for run, deadline in waits:
        run.done.wait(max(0.0, deadline - time.monotonic()))
