"""The one scheduler: every run of every check starts here, whoever asks for it.

A :class:`Run` is one execution of one check, with one completion primitive: a
:class:`concurrent.futures.Future` that the run completes when the check returns, whatever the
check did. Threads wait on it; coroutines register a callback that wakes them on their own loop.

Sync checks run in daemon worker threads; async checks run as tasks of a task group the scheduler
owns on an event loop (the engine's loop thread for sync callers, a host on the caller's own loop
for async callers), never in a caller's task group: a caller that leaves at its deadline, or is
cancelled, leaves the run going, and a run ends only by finishing, by its own timeout or when its
loop shuts down.

Each run executes in a fresh context of its own: a new :mod:`contextvars` context and whatever the
engine's ``context`` factory returns (the Flask layer passes ``app.app_context``), entered where
the run executes and exited when the check returns. Heartbeats asking for a check whose run is in
progress share that run (single-flight); a run still going after its restart delay is left behind
and a new one started beside it. However many engines and APIs run one check function, at most
:data:`MAX_RUNS_PER_CHECK` runs of it are in progress in the process.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from contextlib import AbstractContextManager
from typing import Any, Protocol

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from ._bridge import LoopThread, call_soon
from ._check import Check
from ._fork import after_fork_in_child
from ._workers import WorkerPool

logger = logging.getLogger("dockerflow.engine")

#: Makes the context each run of a check executes in (for Flask: ``app.app_context``).
ContextFactory = Callable[[], AbstractContextManager[Any]]
#: Sync runs waiting for a thread, taken from the left by whichever thread begins them.
BatchQueue = collections.deque["Run"]
#: A coroutine function a host starts as a task.
TaskFunction = Callable[[], Coroutine[Any, Any, None]]

#: Seconds a heartbeat waits for an async run past the run's timeout, for the run to report its
#: own timeout (it is cancelled then); past it the heartbeat answers without the run.
GRACE = 0.1
#: An async check that runs this long without awaiting anything blocks the loop; it is logged.
BLOCKING_STEP = 0.1
#: Seconds a heartbeat's batch of sync runs (see :meth:`Scheduler.start_batch`) runs in one
#: thread before the runs not begun yet get threads of their own.
BATCH_SLICE = 0.002
#: Most runs of one check function in progress at a time in the process (threads, for a sync
#: check), whichever engines and APIs started them.
MAX_RUNS_PER_CHECK = 2


class Host(Protocol):
    """Where async runs execute: a task group on one event loop, owned by the scheduler."""

    def spawn(self, func: TaskFunction) -> None:
        """Start ``func()`` as a task of the host, without waiting for it."""


class Run:
    """One execution of one check, shared by every heartbeat that asks while it is in progress.

    ``future`` completes when the run has ended, whatever its outcome: ``value``, ``error``,
    ``timed_out`` (its timeout fired), ``abandoned`` (its loop shut down under it) or
    ``start_error`` (it could not be started). Everything else is set before it completes.
    """

    __slots__ = (
        "abandoned",
        "blocked_for",
        "check",
        "ended",
        "error",
        "finished",
        "future",
        "host",
        "result",
        "start_error",
        "started",
        "step_started",
        "timed_out",
        "timeout",
        "value",
        "warned",
    )

    def __init__(self, check: Check, timeout: float, host: Host | None) -> None:
        self.check = check
        self.timeout = timeout
        #: The host an async run executes on; ``None`` for a sync run (a worker thread).
        self.host = host
        self.started = time.monotonic()
        self.finished = 0.0
        self.future: concurrent.futures.Future[None] = concurrent.futures.Future()
        #: Set just before ``future`` completes: a plain read, for the many "is it done yet?"
        #: questions of a heartbeat (the future's own answer takes its lock).
        self.ended = False
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
    def deadline(self) -> float:
        """The ``time.monotonic()`` value by which every heartbeat sharing the run answers:
        its start plus its timeout (plus :data:`GRACE` for an async run, to be cancelled in)."""
        return self.started + self.timeout + (GRACE if self.check.is_async else 0.0)

    @property
    def duration(self) -> float:
        """Seconds from the start to the end of the run (to now while it is in progress)."""
        end = self.finished if self.done else time.monotonic()
        return end - self.started

    def wait(self, deadline: float) -> None:
        """Block the calling thread until the run has ended or ``deadline`` has passed."""
        if self.ended:
            return
        with contextlib.suppress(concurrent.futures.TimeoutError):
            self.future.exception(max(0.0, deadline - time.monotonic()))

    async def wait_async(self, deadline: float) -> None:
        """Wait until the run has ended or ``deadline`` has passed, holding no thread."""
        if self.done:
            return
        token = anyio.lowlevel.current_token()
        ended = anyio.Event()

        def wake(_: object) -> None:
            # Called in whichever thread completes the run: reach the waiter's loop safely.
            with contextlib.suppress(RuntimeError):  # that loop closed: nobody waits any more
                call_soon(token, ended.set)

        self.future.add_done_callback(wake)
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
            await ended.wait()


class RunSlots:
    """The runs in progress of each check function in this process, for the bound of
    :data:`MAX_RUNS_PER_CHECK`.

    The one piece of process-wide state of the engine: the bound is per process by definition
    (every engine, extension and API shares the threads a stuck check holds). A forked child
    starts with none: the parent's threads are not in it.
    """

    def __init__(self) -> None:
        self._reset()
        after_fork_in_child(self, RunSlots._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        # id(function) -> its runs in progress; each run holds its function, so ids stay unique.
        self._runs: dict[int, list[Run]] = {}

    def take(self, run: Run) -> bool:
        """Count ``run`` in if its function has a free slot; return whether it had one."""
        with self._lock:
            runs = self._runs.setdefault(id(run.check.func), [])
            if len(runs) >= MAX_RUNS_PER_CHECK:
                return False
            runs.append(run)
            return True

    def give_back(self, run: Run) -> None:
        """Count ``run`` out (it ended, or never started)."""
        key = id(run.check.func)
        with self._lock:
            runs = self._runs.get(key, [])
            if run in runs:
                runs.remove(run)
            if not runs:
                self._runs.pop(key, None)

    def oldest(self, func: object) -> Run | None:
        """Return the longest-running run of ``func`` in progress, or ``None``."""
        with self._lock:
            runs = self._runs.get(id(func))
            return runs[0] if runs else None


#: The process's run slots (see :class:`RunSlots`).
PROCESS_SLOTS = RunSlots()


class Scheduler:
    """Starts runs of checks, one path for sync and async callers alike.

    :param bridge: the loop thread that runs async checks for sync callers.
    :param context: makes the context each run executes in, or ``None`` for none.
    :param slots: the bound on runs per check function; defaults to the process's.
    """

    def __init__(
        self,
        bridge: LoopThread,
        context: ContextFactory | None = None,
        slots: RunSlots = PROCESS_SLOTS,
    ) -> None:
        self.bridge = bridge
        self.slots = slots
        self._context = context
        #: The host of async runs for sync callers: the bridge's own task group.
        self.bridge_host: Host = _BridgeHost(bridge)
        self._reset()
        # The child has none of the parent's threads: what ran there is not running here.
        after_fork_in_child(self, Scheduler._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        # The newest run in progress of each (function, timeout, host): what heartbeats share.
        self._running: dict[tuple[int, float, Host | None], Run] = {}
        # Every run of this scheduler in progress, the ones left behind included.
        self._live: set[Run] = set()
        # The async run executing a step on each host's loop right now (at most one per loop).
        self._stepping: dict[Host, Run] = {}
        # Hosts on async callers' loops, by native loop.
        self._hosts: dict[object, _LoopHost] = {}
        # Host tasks started on asyncio loops, held until done.
        self._detached: set[asyncio.Task[None]] = set()
        self._pool = WorkerPool()

    # -- starting runs --------------------------------------------------------------------------

    def start(
        self,
        check: Check,
        timeout: float,
        restart_after: float,
        host: Host | None,
        batch: list[Run] | None = None,
    ) -> Run | None:
        """Return the run of ``check`` a heartbeat should report on, starting one if needed.

        A run of the same function and timeout in progress is shared. A new run starts beside
        one that has been in progress for ``restart_after`` seconds, if the function has a free
        slot in the process.

        :param timeout: the check's timeout.
        :param restart_after: seconds after which a run in progress is left behind.
        :param host: for an async check, the host it runs on; ignored for a sync check.
        :param batch: if given, a new sync run is added to it instead of started: the caller
            starts the batch with :meth:`start_batch`.
        :returns: the run, or ``None`` if no run is in progress here and the function has no
            free slot (its runs elsewhere in the process are stuck).
        """
        where = host if check.is_async else None
        key = (id(check.func), timeout, where)
        with self._lock:
            current = self._running.get(key)
            if current is not None and time.monotonic() - current.started < restart_after:
                return current
            run = Run(check, timeout, where)
            if not self.slots.take(run):
                return current
            if current is not None:
                logger.warning(
                    "Dockerflow check %r has been running for %.1fs; starting it again beside "
                    "the stuck run",
                    check.name,
                    current.duration,
                )
            self._running[key] = run
            self._live.add(run)
        if batch is not None and where is None:
            batch.append(run)
        else:
            self._launch(run)
        return run

    def start_batch(self, runs: list[Run]) -> BatchQueue:
        """Start the sync runs collected with ``start(batch=...)`` in one worker thread, one
        after another: one hand-off for a heartbeat's many quick checks, not one each.

        :returns: the runs that thread has not begun yet. The caller hands them to threads of
            their own with :meth:`spread` after :data:`BATCH_SLICE` seconds, so that a slow
            check delays the others in the batch by that much at most.
        """
        queue: BatchQueue = collections.deque(runs)
        if len(runs) > 1:
            try:
                self._pool.submit(lambda: self._drain(queue))
            except BaseException:
                pass  # no thread for the batch: each run is started on its own below
            else:
                return queue
        self.spread(queue)
        return queue

    def spread(self, queue: BatchQueue) -> None:
        """Start each run of ``queue`` that no thread has begun, in a thread of its own."""
        while True:
            try:
                run = queue.popleft()  # atomic: a run is taken by one thread only
            except IndexError:
                return
            self._launch(run)

    def _drain(self, queue: BatchQueue) -> None:
        while True:
            try:
                run = queue.popleft()
            except IndexError:
                return
            self._execute_sync(run)

    def _launch(self, run: Run) -> None:
        try:
            if run.host is not None:
                run.host.spawn(lambda: self._execute_async(run))
            else:
                self._pool.submit(lambda: self._execute_sync(run))
        except BaseException as exc:
            # No thread, or no loop to run on: that is this check's error, and the slot is free.
            run.error = exc
            run.start_error = True
            self._finish(run)

    def oldest_elsewhere(self, check: Check) -> Run | None:
        """Return the longest-running run of ``check``'s function in the process, or ``None``."""
        return self.slots.oldest(check.func)

    def stuck(self) -> dict[str, int]:
        """Return check name → runs of this scheduler still in progress past their timeout
        (each holds a thread, for a sync check), for the checks that have any."""
        now = time.monotonic()
        with self._lock:
            live = list(self._live)
        out: dict[str, int] = {}
        for run in live:
            if now - run.started >= run.timeout:
                out[run.check.name] = out.get(run.check.name, 0) + 1
        return out

    async def host_here(self) -> Host:
        """Return the host of async runs on the running event loop, starting it if needed.

        The host is a task of its own on that loop, not the caller's: a caller's deadline or
        cancellation does not reach the runs. It ends when the loop shuts down.
        """
        native = anyio.lowlevel.current_token().native_token
        host = self._hosts.get(native)
        if host is None or host.ended:
            host = self._hosts[native] = _LoopHost(lambda ended: self._forget_host(native, ended))
            self._start_detached(native, host.serve)
        await host.ready.wait()
        return host

    def _forget_host(self, native_loop: object, host: _LoopHost) -> None:
        # The loop is shutting down: let it (and its host) go.
        if self._hosts.get(native_loop) is host:
            del self._hosts[native_loop]

    def _start_detached(self, native_loop: object, func: TaskFunction) -> None:
        """Start ``func()`` as a task of its own on the running loop, outside any caller's task
        group, from an empty context (nothing of the caller's travels with it)."""
        empty = contextvars.Context()
        if isinstance(native_loop, asyncio.AbstractEventLoop):
            task = empty.run(native_loop.create_task, func())
            # The loop holds tasks weakly: keep this one until it is done.
            self._detached.add(task)
            task.add_done_callback(self._detached.discard)
        else:  # anyio's other backend
            import trio

            empty.run(trio.lowlevel.spawn_system_task, func)

    def blocker(self, host: Host | None) -> Run | None:
        """Return the async run blocking ``host``'s loop now (a step longer than
        :data:`BLOCKING_STEP`), or ``None``. The first time a run is found blocking, a warning
        naming its check is logged: it may never end its step."""
        if host is None:
            return None
        run = self._stepping.get(host)
        started = run.step_started if run is not None else None
        if run is None or started is None or time.monotonic() - started < BLOCKING_STEP:
            return None
        if not run.warned:
            run.warned = True
            logger.warning(
                "Dockerflow check %r is blocking the event loop (for %.2fs so far) without "
                "awaiting; make it a def check if it calls blocking code",
                run.check.name,
                time.monotonic() - started,
            )
        return run

    # -- executing runs -------------------------------------------------------------------------

    def _enter(self) -> AbstractContextManager[Any]:
        return self._context() if self._context is not None else contextlib.nullcontext()

    def _execute_sync(self, run: Run) -> None:
        """Run a sync check in this worker thread, in a fresh context; never raises."""
        try:
            # A fresh context: nothing of the caller's, nor of an earlier run in this thread.
            run.value = contextvars.Context().run(self._call_sync, run)
        except DeadlinePassedError:
            run.timed_out = True
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
        """Run an async check as this task, under its timeout; raises only the host's own
        cancellation (its loop is shutting down)."""
        try:
            with anyio.move_on_after(max(0.0, run.started + run.timeout - time.monotonic())) as s:
                with self._enter():
                    run.value = await _Stepped(run.check.func(), self, run)
            run.timed_out = s.cancel_called
        except anyio.get_cancelled_exc_class() as exc:
            if _cancelled_from_outside():
                # The host is cancelled: the loop shuts down under the run.
                run.abandoned = True
                raise
            # A cancellation the check raised itself (a driver's, say) is its own failure.
            run.timed_out = s.cancel_called
            run.error = exc
        except BaseException as exc:
            run.timed_out = s.cancel_called
            run.error = exc
        finally:
            self._finish(run)

    def _finish(self, run: Run) -> None:
        run.finished = time.monotonic()
        key = (id(run.check.func), run.timeout, run.host)
        with self._lock:
            # Only this run's own entry: a newer run of the check may own it by now.
            if self._running.get(key) is run:
                del self._running[key]
            self._live.discard(run)
        self.slots.give_back(run)
        run.ended = True
        run.future.set_result(None)

    def _step_started(self, run: Run) -> None:
        # Called on the run's loop thread only: one step runs at a time per loop.
        run.step_started = time.monotonic()
        assert run.host is not None
        self._stepping[run.host] = run

    def _step_ended(self, run: Run) -> None:
        started = run.step_started
        run.step_started = None
        assert run.host is not None
        if self._stepping.get(run.host) is run:
            del self._stepping[run.host]
        if started is None:
            return
        blocked = time.monotonic() - started
        if blocked >= BLOCKING_STEP and blocked > run.blocked_for:
            if not run.warned:
                run.warned = True
                logger.warning(
                    "Dockerflow check %r blocked the event loop for %.2fs without awaiting; "
                    "make it a def check if it calls blocking code",
                    run.check.name,
                    blocked,
                )
            run.blocked_for = blocked


class _BridgeHost:
    """The loop thread's own task group, as the host of sync callers' async runs."""

    __slots__ = ("_bridge",)

    def __init__(self, bridge: LoopThread) -> None:
        self._bridge = bridge

    def spawn(self, func: TaskFunction) -> None:
        self._bridge.submit(func)


class _LoopHost:
    """A task group of the scheduler's on an async caller's loop, hosting the runs started
    there. Used from that loop's thread only."""

    def __init__(self, on_end: Callable[[_LoopHost], object]) -> None:
        self.ready = anyio.Event()
        self.ended = False
        self._group: TaskGroup | None = None
        self._on_end = on_end

    def spawn(self, func: TaskFunction) -> None:
        if self._group is None or self.ended:
            raise RuntimeError("the event loop this check would run on is shutting down")
        self._group.start_soon(func)

    async def serve(self) -> None:
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                self.ready.set()
                await anyio.sleep_forever()
        finally:
            self.ended = True
            self.ready.set()
            self._on_end(self)


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


def _cancelled_from_outside() -> bool:
    """Whether the running task is being cancelled by a scope around it or by its loop (not
    merely handed a cancellation exception that a check raised itself)."""
    if anyio.current_effective_deadline() == -math.inf:
        return True
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not an asyncio loop
        return False
    # Python 3.11 on: cancellation requests made with task.cancel() (asyncio.run's shutdown).
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling is not None and cancelling())


class DeadlinePassedError(Exception):
    """The awaitable a sync check returned did not finish within the check's timeout."""


async def _await_within(awaitable: Awaitable[Any], deadline: float) -> Any:
    with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
        return await awaitable
    raise DeadlinePassedError
