"""The one scheduler: every run of every check starts here, whoever asks for it.

Sync checks run in daemon worker threads; async checks run as tasks the scheduler owns on an
event loop (the engine's loop thread for sync callers, a host on the caller's own loop for async
callers), never in a caller's task group: a caller that leaves at its deadline, or is cancelled,
leaves the run going. An async run ends when it finishes, at its own timeout (it is cancelled)
or when its loop shuts down; a sync run ends only when its function returns, which may be never
(a socket with no timeout whose peer went silent).

A heartbeat's checks cost little each: they are started under one hold of the registry's lock
(:meth:`Scheduler.start_many`), its sync runs are handed to one thread
(:meth:`Scheduler.start_batch`), its async runs to the loop thread in one hand-off, as plain
tasks under one timer for all their timeouts (:class:`_TimedBatch`, on asyncio from Python
3.11; started eagerly from 3.12), and the heartbeat waits for all of them with one
:class:`~._runs.Waiter`.

Each run executes in a fresh context of its own: a new :mod:`contextvars` context and whatever the
engine's ``context`` factory returns (the Flask layer passes ``app.app_context``), entered where
the run executes and exited when the check returns. Heartbeats of one scheduler asking for a check
whose run is in progress share that run (single-flight); runs of two schedulers are never shared,
since each executes in its own scheduler's context. A run still going after its restart delay is
left behind and a new one started beside it, unless :data:`~._runs.MAX_STUCK_RUNS` runs of the
check's function are already stuck past their timeout in the process (see :mod:`._runs`).

While a check is failing slowly (its latest run overran its timeout, or failed after taking at
least half of it), heartbeats do not wait for it: they are answered at once with that run's
outcome, while one run tries again in the background, started again as soon as the previous try
ends for as long as heartbeats ask for the check. The first try that passes, or fails fast, ends
it: the next heartbeat runs the check and waits for it as usual.

A heartbeat that joins a run started by someone else does not wait for it either while the
check has a recent result (stale-while-revalidate): it is answered at once with the check's
latest run, if that run ended within its timeout and started at most the check's timeout before
the heartbeat asked, and the run joined is not past its deadline. So a served result is never
older than that of a run the heartbeat could have shared, and a heartbeat after the joined run's
deadline reports that run (its failure is seen at its deadline, as before). The heartbeat that
starts a run, and joiners with no recent result, wait for it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import logging
import math
import sys
import time
import types
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, MutableMapping
from contextlib import AbstractContextManager
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from ._bridge import LoopThread
from ._check import Check
from ._fork import after_fork_in_child
from ._runs import MAX_STUCK_RUNS, RUNS, Host, Run
from ._workers import WorkerPool

logger = logging.getLogger("dockerflow.engine")

#: Makes the context each run of a check executes in (for Flask: ``app.app_context``).
ContextFactory = Callable[[], AbstractContextManager[Any]]
#: Sync runs waiting for a thread, taken from the left by whichever thread begins them.
BatchQueue = collections.deque[Run]
#: A coroutine function a host starts as a task.
TaskFunction = Callable[[], Coroutine[Any, Any, None]]
#: Whether a run that ended failed (the engine's judgement of its result).
FailedJudge = Callable[[Run], bool]

#: An async check that runs this long without awaiting anything blocks the loop; it is logged.
BLOCKING_STEP = 0.1
#: Seconds a heartbeat waits for its batch of sync runs (see :meth:`Scheduler.start_batch`) to
#: be done in one thread before the runs not begun yet get threads of their own.
BATCH_WAIT = 0.002
#: A failing run that took at least this share of its timeout makes its check "failing slowly":
#: heartbeats stop waiting for it while it is retried in the background.
SLOW_FAILURE = 0.5
#: A check failing slowly is retried in the background while a heartbeat asked for it within
#: this many timeouts (at least :data:`MIN_RETRY_SECONDS`); an outcome older than that is not
#: served in place of a new run.
RETRY_TIMEOUTS = 10
MIN_RETRY_SECONDS = 30.0
#: What :meth:`Scheduler._decide` decided about one check (see there).
_Decision = tuple["Run | None", "list[Run]", "Run | None", "Run | None", "Run | None", bool]
#: No stuck runs (shared: never changed).
_NONE: list[Run] = []
#: Whether asyncio tasks count their cancellations (Python 3.11 on): the timeout of a sync
#: caller's async run is then a plain loop timer, not an anyio cancel scope.
NATIVE_TIMEOUTS = sys.version_info >= (3, 11)
#: Checks whose latest run one scheduler keeps (see :meth:`Scheduler._served_instead`) before it
#: lets go of the runs too old to be served.
MAX_LATEST = 256
#: Key of a check's runs in one scheduler: (id of its function, timeout, host of an async run).
RunKey = tuple[int, float, "Host | None"]


def retry_window(timeout: float) -> float:
    """Seconds a slow failure is retried and served for without a heartbeat asking again."""
    return max(RETRY_TIMEOUTS * timeout, MIN_RETRY_SECONDS)


class Scheduler:
    """Starts runs of checks, one path for sync and async callers alike.

    :param bridge: the loop thread that runs async checks for sync callers.
    :param context: makes the context each run executes in, or ``None`` for none.
    :param failed: tells whether a run that ended failed; ``None``: only errors and timeouts do.
    """

    def __init__(
        self,
        bridge: LoopThread,
        context: ContextFactory | None = None,
        failed: FailedJudge | None = None,
    ) -> None:
        self.bridge = bridge
        self._context = context
        self._failed = failed if failed is not None else _raised_or_timed_out
        #: The host of async runs for sync callers: the bridge's own task group.
        self.bridge_host: Host = _BridgeHost(bridge)
        self._reset()
        # The child has none of the parent's threads: what ran there is not running here.
        after_fork_in_child(self, Scheduler._reset)

    def _reset(self) -> None:
        # Under RUNS.lock: per check of this scheduler, the latest run of a slow failure (what
        # heartbeats are answered with while it is retried), and when a heartbeat last asked.
        self._failing: dict[RunKey, Run] = {}
        # The run that ended a slow failure by passing (or failing fast), for the next
        # heartbeat to report rather than run the check once more.
        self._recovered: dict[RunKey, Run] = {}
        self._asked: dict[RunKey, float] = {}
        # Past this many checks asked for, those asked for too long ago to be retried are let
        # go (see _forget_old_asks): a check function made per call leaves one each.
        self._asked_bound = MAX_LATEST
        # The latest run of each check that ended, if it ended within its timeout: what a
        # heartbeat joining a newer run is answered with (see _served_instead).
        self._latest: dict[RunKey, Run] = {}
        # Functions whose refusal was logged, until a run of theirs starts again.
        self._refusal_logged: set[int] = set()
        # The async run executing a step on each host's loop right now (at most one per loop).
        self._stepping: dict[Host, Run] = {}
        # Hosts on async callers' loops, by native loop; an asyncio loop is held weakly (its
        # host too): a caller's loop must not outlive the caller because the engine saw it.
        self._hosts: weakref.WeakKeyDictionary[object, _LoopHost] = weakref.WeakKeyDictionary()
        self._trio_hosts: dict[object, _LoopHost] = {}
        self._pool = WorkerPool()
        # False once the owner closed: a run ending then is not retried in the background (a
        # retry on the loop thread would start the stopped loop again). A heartbeat asking for
        # a check makes it true again.
        self.retrying = True
        # The batches of sync callers' async runs on the loop thread (asyncio) with runs in
        # progress: they hold the runs' tasks (the loop holds tasks weakly). That thread only.
        self._batches: set[_TimedBatch] = set()

    # -- starting runs --------------------------------------------------------------------------

    def start(
        self,
        check: Check,
        timeout: float,
        restart_after: float,
        host: Host | None,
        batch: list[Run] | None = None,
        *,
        background: bool = False,
        async_batch: list[Run] | None = None,
    ) -> tuple[Run | None, list[Run]]:
        """Return the run of ``check`` a heartbeat should report on, starting one if needed.

        A run of the same function and timeout in progress is shared. A new run starts beside
        one that has been in progress for ``restart_after`` seconds, unless
        :data:`~._runs.MAX_STUCK_RUNS` runs of the function are stuck past their timeout in the
        process. While the check is failing slowly, the run returned is the latest one that
        failed (or is stuck), whose deadline has passed: the heartbeat answers at once, and a
        new run, if one is needed, is started in the background.

        :param timeout: the check's timeout.
        :param restart_after: seconds after which a run in progress is left behind.
        :param host: for an async check, the host it runs on; ignored for a sync check.
        :param batch: if given, a new sync run is added to it instead of started: the caller
            starts the batch with :meth:`start_batch`.
        :param async_batch: if given, a new async run on the loop thread is added to it instead
            of started: the caller starts them with :meth:`start_async_batch`.
        :param background: the caller (a background refresh) waits for the newest run whatever
            the check's state, and is not a heartbeat asking for the check.
        :returns: the run to report on, or ``None`` when the check has no run here and could
            not start one; and the stuck runs that kept a new run from starting (empty if none
            was refused).
        """
        ((run, stuck),) = self.start_many(
            ((check, timeout, restart_after),),
            host,
            batch,
            background=background,
            async_batch=async_batch,
        )
        return run, stuck

    def start_many(
        self,
        wanted: Iterable[tuple[Check, float, float]],
        host: Host | None,
        batch: list[Run] | None = None,
        *,
        background: bool = False,
        async_batch: list[Run] | None = None,
    ) -> list[tuple[Run | None, list[Run]]]:
        """:meth:`start` for each ``(check, timeout, restart_after)`` of ``wanted``, deciding
        under one hold of the registry's lock: what a heartbeat's many checks cost once.

        :returns: per check of ``wanted``, in order, what :meth:`start` returns.
        """
        now = time.monotonic()
        if not background:
            self.retrying = True
        with RUNS.lock:
            decided = [
                self._decide(check, timeout, restart_after, host, now, background)
                for check, timeout, restart_after in wanted
            ]
        return [self._act(d, now, batch, async_batch, background) for d in decided]

    def _decide(
        self,
        check: Check,
        timeout: float,
        restart_after: float,
        host: Host | None,
        now: float,
        background: bool,
    ) -> _Decision:
        # Under RUNS.lock: (run to answer with, stuck runs refusing a new one, the new run,
        # the run it starts beside, the run answered with while failing slowly, log refusal).
        where = host if check.is_async else None
        key: RunKey = (id(check.func), timeout, where)
        if not background:
            if len(self._asked) >= self._asked_bound and key not in self._asked:
                self._forget_old_asks(now)
            self._asked[key] = now
        # Most checks are not failing, and have no run in progress: two look-ups tell.
        failing = self._failing.get(key) if self._failing else None
        if failing is not None and failing.ended and now - failing.finished > retry_window(timeout):
            failing = None  # too old to speak for the check now
            del self._failing[key]
        if self._recovered:
            recovered = self._recovered.pop(key, None)
            if (
                recovered is not None
                and not background
                and now - recovered.finished <= timeout
                and failing is None
            ):
                return (recovered, _NONE, None, None, None, False)
        in_progress = RUNS.runs_of(check)
        current = RUNS.newest(check, timeout, where, self) if in_progress else None
        if current is not None and now - current.started < restart_after:
            if failing is not None and not background and failing is not current:
                return (failing, _NONE, None, None, None, False)
            served = None if background else self._served_instead(key, current, now)
            return (served if served is not None else current, _NONE, None, None, None, False)
        if in_progress:
            stuck = RUNS.stuck_of(check, now)
            if len(stuck) >= MAX_STUCK_RUNS:
                log = id(check.func) not in self._refusal_logged
                self._refusal_logged.add(id(check.func))
                return (current, stuck, None, None, None, log)
        if self._refusal_logged:
            self._refusal_logged.discard(id(check.func))
        run = Run(check, timeout, where, self)
        RUNS.add(run)
        if current is not None and not background:
            # Known to be failing by timeout: answered at once from the stuck run while the
            # new one tries again.
            self._failing[key] = current
            failing = current
        return (None, _NONE, run, current, failing, False)

    def _forget_old_asks(self, now: float) -> None:
        """Let go of the checks no heartbeat asked for within their retry window, and of their
        slow failures that ended before it: nothing is retried or served for them any more.
        Called with ``RUNS.lock`` held, when the table reaches its bound; the bound then
        doubles past what is left, so that many checks asked for at once cost one pass."""
        self._asked = {
            key: asked for key, asked in self._asked.items() if now - asked <= retry_window(key[1])
        }
        self._failing = {
            key: run
            for key, run in self._failing.items()
            if key in self._asked or not run.ended or now - run.finished <= retry_window(key[1])
        }
        self._asked_bound = max(MAX_LATEST, 2 * len(self._asked))

    def _act(
        self,
        decision: _Decision,
        now: float,
        batch: list[Run] | None,
        async_batch: list[Run] | None,
        background: bool,
    ) -> tuple[Run | None, list[Run]]:
        # Outside the lock: log, and start (or collect) the new run that was decided on.
        answer, stuck, run, current, failing, log = decision
        if current is None and failing is None and run is not None:
            # Most checks: a new run, nobody else's in progress.
            if batch is not None and run.host is None:
                batch.append(run)
            elif async_batch is not None and run.host is self.bridge_host:
                async_batch.append(run)
            else:
                self._launch(run)
            return run, _NONE
        if run is None:
            if log:
                logger.warning(
                    "Dockerflow check %r is not started again: %d runs of it are stuck in this "
                    "process (the oldest for %.1fs, timeout %gs); it starts again when one of "
                    "them returns",
                    stuck[0].check.name,
                    len(stuck),
                    now - stuck[0].started,
                    stuck[0].timeout,
                )
            return answer, stuck if stuck else []
        if current is not None:
            logger.warning(
                "Dockerflow check %r has been running for %.1fs; starting it again beside "
                "the stuck run",
                run.check.name,
                now - current.started,
            )
        if batch is not None and run.host is None and failing is None:
            batch.append(run)
        elif async_batch is not None and run.host is self.bridge_host and failing is None:
            async_batch.append(run)
        else:
            self._launch(run)
        if failing is not None and not background:
            return failing, []
        return run, []

    def _served_instead(self, key: RunKey, current: Run, now: float) -> Run | None:
        """Return the run a heartbeat joining ``current`` at ``now`` is answered with at once,
        or ``None`` if it waits for ``current``. Called with ``RUNS.lock`` held.

        Stale-while-revalidate: the check's latest run (one that ended within its timeout, see
        :meth:`_keep_latest`), if it started no more than the timeout before ``now``, the age
        of a run the heartbeat could have shared; and only while ``current`` is within its
        deadline: past it, heartbeats report ``current`` itself, so that its failure is seen
        at its deadline.
        """
        latest = self._latest.get(key)
        if latest is None or now >= current.deadline or now - latest.started > current.timeout:
            return None
        return latest

    def start_batch(self, runs: list[Run]) -> BatchQueue:
        """Start the sync runs collected with ``start(batch=...)`` in one worker thread, one
        after another: one hand-off for a heartbeat's many quick checks, not one each.

        :returns: the runs that thread has not begun yet. The caller hands them to threads of
            their own with :meth:`spread` after waiting :data:`BATCH_WAIT` seconds, so that a
            slow check delays the others in the batch by that much at most.
        """
        queue: BatchQueue = collections.deque(runs)
        if len(runs) > 1:
            try:
                self._pool.submit(lambda: self._run_in_order(queue))
            except BaseException:
                pass  # no thread for the batch: each run is started on its own below
            else:
                return queue
        self.spread(queue)
        return queue

    def start_async_batch(self, runs: list[Run]) -> None:
        """Start the async runs collected with ``start(async_batch=...)`` on the loop thread
        with one hand-off, as tasks of their own there (not the caller's)."""
        try:
            if NATIVE_TIMEOUTS and self.bridge.backend == "asyncio":
                self.bridge.call_soon(self._spawn_all, runs)
            else:
                self.bridge.submit(self._run_together, runs)
        except BaseException as exc:
            for run in runs:  # no loop to run on: that is each check's error
                self._not_started(run, exc)

    def _spawn_all(self, runs: list[Run]) -> None:
        # On the loop thread (asyncio), in an empty context that each task copies: plain tasks,
        # the cheapest there are, under one timer for all their timeouts.
        loop = asyncio.get_running_loop()
        batch = _TimedBatch(loop, self._batches)
        for run in runs:
            try:
                task = _new_task(self._execute_native(run, batch), loop=loop)
            except BaseException as exc:
                self._not_started(run, exc)
            else:
                batch.add(run, task)
        batch.arm()

    async def _run_together(self, runs: list[Run]) -> None:
        async with anyio.create_task_group() as group:
            for run in runs:
                group.start_soon(self._execute_async, run)

    def spread(self, queue: BatchQueue) -> None:
        """Start each run of ``queue`` that no thread has begun, in a thread of its own."""
        while True:
            try:
                run = queue.popleft()  # atomic: a run is taken by one thread only
            except IndexError:
                return
            self._launch(run)

    def _run_in_order(self, queue: BatchQueue) -> None:
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
            # No thread, or no loop to run on: that is this check's error.
            self._not_started(run, exc)

    def _not_started(self, run: Run, exc: BaseException) -> None:
        run.error = exc
        run.start_error = True
        run.finished = time.monotonic()
        RUNS.end(run)

    def stuck(self) -> dict[str, int]:
        """Return check name → runs of this scheduler still in progress past their timeout
        (each holds a thread, for a sync check), for the checks that have any."""
        return RUNS.stuck(self)

    async def host_here(self) -> Host:
        """Return the host of async runs on the running event loop, starting it if needed.

        The host's runs are tasks of their own on that loop, not the caller's: a caller's
        deadline or cancellation does not reach them. Hosts of loops that were closed are let
        go here, whether or not the loop cancelled its tasks first.
        """
        native = anyio.lowlevel.current_token().native_token
        hosts: MutableMapping[object, _LoopHost] = (
            self._hosts if isinstance(native, asyncio.AbstractEventLoop) else self._trio_hosts
        )
        host = hosts.get(native)
        if host is None or host.closed:
            self._forget_closed_loops()
            host = hosts[native] = _LoopHost(native)
            if hosts is self._trio_hosts:  # anyio's other backend
                import trio

                contextvars.Context().run(trio.lowlevel.spawn_system_task, host.serve)
        await host.ready.wait()
        return host

    def _forget_closed_loops(self) -> None:
        # A loop closed without cancelling its tasks first (run_until_complete, then close)
        # never tells its host: holding the host would hold the loop for ever.
        for hosts in (self._hosts, self._trio_hosts):
            for native, host in list(hosts.items()):
                if host.closed:
                    hosts.pop(native, None)
        with RUNS.lock:
            for table in (self._asked, self._failing, self._recovered, self._latest):
                for key in [k for k in table if k[2] is not None and k[2].closed]:
                    del table[key]

    def blocker(self, host: Host | None) -> tuple[Run, float] | None:
        """Return the async run blocking ``host``'s loop now (a step longer than
        :data:`BLOCKING_STEP`) and when its step began, or ``None``. The first time a run is
        found blocking, a warning naming its check is logged: it may never end its step."""
        if host is None:
            return None
        run = self._stepping.get(host)
        # Read once: the loop thread may end the step (and clear it) meanwhile.
        started = run.step_started if run is not None else None
        now = time.monotonic()
        if run is None or started is None or now - started < BLOCKING_STEP:
            return None
        if not run.warned:
            run.warned = True
            logger.warning(
                "Dockerflow check %r is blocking the event loop (for %.2fs so far) without "
                "awaiting; make it a def check if it calls blocking code",
                run.check.name,
                now - started,
            )
        return run, started

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
        if self._context is None:
            value = run.check.func()
            return self._awaited(run, value) if hasattr(value, "__await__") else value
        with self._context():
            value = run.check.func()
            return self._awaited(run, value) if hasattr(value, "__await__") else value

    def _awaited(self, run: Run, value: Awaitable[Any]) -> Any:
        # A def that returned an awaitable (``lambda: client.ping()``): awaited on the loop
        # thread, within the run's timeout (the run's context is still entered).
        return self.bridge.call(_await_within, value, run.started + run.timeout)

    async def _execute_async(self, run: Run) -> None:
        """Run an async check as this task, under its timeout; raises only the host's own
        cancellation (its loop is shutting down)."""
        try:
            with anyio.move_on_after(max(0.0, run.started + run.timeout - time.monotonic())) as s:
                with self._enter():
                    run.value = await _stepped(run.check.func(), self, run)
            run.timed_out = s.cancel_called
        except anyio.get_cancelled_exc_class() as exc:
            if _cancelled_from_outside():
                self._abandon(run)
                raise
            # A cancellation the check raised itself (a driver's, say) is its own failure.
            run.timed_out = s.cancel_called
            run.error = exc
        except BaseException as exc:
            run.timed_out = s.cancel_called
            run.error = exc
        if not run.ended:
            self._finish(run)

    async def _execute_native(self, run: Run, batch: _TimedBatch) -> None:
        """:meth:`_execute_async` for a plain asyncio task on Python 3.11 and later: the run's
        timeout is kept by its batch's one loop timer, which cancels the task, not by an anyio
        cancel scope (the scope's bookkeeping was ~15 µs a run, most of the cost of a trivial
        async check). The timer cancels once, as :func:`asyncio.timeout` does: an anyio shield
        inside the check does not hold it back, and a check that swallows it is not cancelled
        again (the heartbeat answers at the deadline all the same; the run counts as stuck).
        Raises only the loop's own cancellation (it is shutting down)."""
        try:
            if self._context is None:
                run.value = await _stepped(run.check.func(), self, run)
            else:
                with self._context():
                    run.value = await _stepped(run.check.func(), self, run)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            assert task is not None
            # Cancellations counted on the task beyond the timer's own: the loop's shutdown.
            if _cancellations(task) > run.timed_out:
                batch.done(run)
                self._abandon(run)
                raise
            if run.timed_out:
                _uncancel(task)  # the timer's: consumed here
            else:
                # A cancellation the check raised itself (a driver's, say) is its own failure.
                run.error = exc
        except BaseException as exc:
            run.error = exc
        batch.done(run)
        if not run.ended:
            self._finish(run)

    def _abandon(self, run: Run) -> None:
        # The host is cancelled: the loop shuts down under the run.
        run.abandoned = True
        run.finished = time.monotonic()
        RUNS.end(run)

    def _finish(self, run: Run) -> None:
        """End ``run``, update its check's slow-failure state, and retry it in the background
        if it failed slowly while heartbeats ask for it. In the thread or task that ran it."""
        run.finished = time.monotonic()
        slow = (
            (run.timed_out or run.finished - run.started >= SLOW_FAILURE * run.timeout)
            # Judged only then: the judge makes the run's result (kept on it), as heartbeats
            # would anyway.
            and self._failed(run)
        )
        retry = RUNS.end(run, self._ended, run, slow)
        if retry is not None:
            self._launch(retry)

    def _ended(self, run: Run, slow: bool) -> Run | None:
        """Update the check's state for ``run``, which is ending, and return the run that
        retries it in the background, if one is needed (the caller starts it). Called with
        ``RUNS.lock`` held, before anyone waiting for the run is woken: the heartbeats woken
        by it find the check's state as the run left it."""
        key: RunKey = (id(run.check.func), run.timeout, run.host)
        self._keep_latest(key, run)
        if not slow and not self._failing:
            return None  # most runs: a pass, and nothing was failing
        failing = self._failing.get(key)
        if not slow:
            # A pass, or a fast failure (refused connection): heartbeats wait for runs again.
            if failing is not None and failing.started <= run.started:
                del self._failing[key]
                self._recovered[key] = run
            return None
        if failing is None or failing.started <= run.started or not failing.ended:
            self._failing[key] = run
        now = time.monotonic()
        if (
            # A cancellation: the run's loop may be shutting down; nothing to retry on.
            isinstance(run.error, asyncio.CancelledError)
            or not self.retrying
            or now - self._asked.get(key, -math.inf) > retry_window(run.timeout)
            or RUNS.newest(run.check, run.timeout, run.host, self) is not None
            or len(RUNS.stuck_of(run.check, now)) >= MAX_STUCK_RUNS
        ):
            return None
        retry = Run(run.check, run.timeout, run.host, self)
        RUNS.add(retry)
        return retry

    def _keep_latest(self, key: RunKey, run: Run) -> None:
        """Make ``run``, which ended, its check's latest run, unless a newer one ended before
        it. A run that overran its timeout is never served, nor an older one in its place.
        Called with ``RUNS.lock`` held."""
        kept = self._latest.get(key)
        if kept is not None and kept.started > run.started:
            return
        if run.timed_out or run.finished - run.started > run.timeout:
            self._latest.pop(key, None)
            return
        if kept is None and len(self._latest) >= MAX_LATEST:
            # Those too old to be served; a check function made per call leaves one each.
            self._latest = {
                k: r for k, r in self._latest.items() if run.finished - r.started <= r.timeout
            }
        self._latest[key] = run

    def _blocked(self, run: Run, blocked: float) -> None:
        # A step of ``run`` ran ``blocked`` seconds without awaiting: noted, and logged once.
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

    @property
    def closed(self) -> bool:
        # The loop thread starts again on its next use.
        return False


class _LoopHost:
    """Hosts the async runs started on an async caller's loop, as tasks of their own there.
    Used from that loop's thread only.

    On asyncio each run is a plain task of the loop, started from an empty context (nothing of
    the caller's travels with it) and held until done: no task of the host's own waits for ever,
    so a loop closed without cancelling its tasks is not kept alive by one. On trio a system
    task holds a nursery for the runs, ended when the run finishes.
    """

    def __init__(self, native_loop: object) -> None:
        self.ready = anyio.Event()
        self.ended = False
        # Weakly: the host must not keep its loop alive (the scheduler holds hosts).
        self._loop = (
            weakref.ref(native_loop) if isinstance(native_loop, asyncio.AbstractEventLoop) else None
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._group: TaskGroup | None = None
        if self._loop is not None:
            self.ready.set()

    @property
    def closed(self) -> bool:
        """Whether the host's loop shut it down, or was closed."""
        if self._loop is None:
            return self.ended
        loop = self._loop()
        return loop is None or loop.is_closed()

    def spawn(self, func: TaskFunction) -> None:
        if self.closed:
            raise RuntimeError("the event loop this check would run on is shutting down")
        if self._loop is not None:
            loop = self._loop()
            assert loop is not None  # called on that loop
            task = contextvars.Context().run(loop.create_task, func())
            # The loop holds tasks weakly: keep this one until it is done.
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if self._group is None:
            raise RuntimeError("the event loop this check would run on is shutting down")
        self._group.start_soon(func)

    async def serve(self) -> None:
        """Hold the nursery of the runs until the loop shuts down (trio)."""
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                self.ready.set()
                await anyio.sleep_forever()
        finally:
            self.ended = True
            self.ready.set()


@types.coroutine
def _stepped(awaitable: Awaitable[Any], scheduler: Scheduler, run: Run) -> Generator[Any, Any, Any]:
    """Await a check's awaitable one step at a time, noting when each step starts and ends.

    A step is the code between two suspensions; one that runs long holds the whole loop. Knowing
    which run is in a step tells a heartbeat whose deadline passed which check blocked the loop.
    """
    # A coroutine is driven directly, without the wrapper its __await__ returns.
    inner = awaitable if isinstance(awaitable, types.CoroutineType) else awaitable.__await__()
    host = run.host
    assert host is not None
    # On the run's loop thread only: one step runs at a time per loop.
    stepping = scheduler._stepping
    monotonic = time.monotonic
    send, throw = inner.send, inner.throw
    sent: Any = None
    thrown: BaseException | None = None
    while True:
        started = run.step_started = monotonic()
        stepping[host] = run
        try:
            yielded = send(sent) if thrown is None else throw(thrown)
        except StopIteration as stop:
            return stop.value
        finally:
            run.step_started = None
            if stepping.get(host) is run:
                del stepping[host]
            blocked = monotonic() - started
            if blocked >= BLOCKING_STEP:
                scheduler._blocked(run, blocked)
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


if sys.version_info >= (3, 11):

    def _cancellations(task: asyncio.Task[None]) -> int:
        return task.cancelling()

    def _uncancel(task: asyncio.Task[None]) -> None:
        task.uncancel()

else:  # pragma: no cover - not called there (NATIVE_TIMEOUTS is false)

    def _cancellations(task: asyncio.Task[None]) -> int:
        raise NotImplementedError

    def _uncancel(task: asyncio.Task[None]) -> None:
        raise NotImplementedError


class _TimedBatch:
    """Async runs started together on one asyncio loop, with one timer for all their timeouts:
    at the earliest timeout of a run not ended, it cancels the task of each run past its
    timeout, and is set again for the next. Holds the runs' tasks until they end. Used on that
    loop's thread only."""

    __slots__ = ("_loop", "_owner", "_tasks", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: set[_TimedBatch]) -> None:
        self._loop = loop
        self._owner = owner
        self._tasks: dict[Run, asyncio.Task[None]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, run: Run, task: asyncio.Task[None]) -> None:
        """Hold ``task``, which executes ``run``, until it ends: a task started eagerly may
        have ended already (and called :meth:`done`)."""
        if not task.done():
            self._tasks[run] = task

    def arm(self) -> None:
        """Set the timer for the earliest timeout of a run not ended or cancelled yet."""
        first = math.inf
        for run in self._tasks:
            if not run.ended and not run.timed_out and run.started + run.timeout < first:
                first = run.started + run.timeout
        if first < math.inf:
            self._owner.add(self)
            self._timer = self._loop.call_later(first - time.monotonic(), self._expire)

    def done(self, run: Run) -> None:
        """``run``'s task is ending: let it go, and the timer once no run is left."""
        self._tasks.pop(run, None)  # not held yet if it ends in its eager first step
        if not self._tasks:
            if self._timer is not None:
                self._timer.cancel()
            self._owner.discard(self)

    def _expire(self) -> None:
        now = time.monotonic()
        for run, task in self._tasks.items():
            if not run.timed_out and not run.ended and run.started + run.timeout <= now:
                run.timed_out = True
                task.cancel()
        self.arm()


#: Starts a task on the loop given as ``loop=``: eagerly from Python 3.12 (its first step runs
#: now rather than in the loop's next iteration; a check that returns without suspending ends
#: here), and as asyncio.Task itself, without loop.create_task's frame (the bridge's loop has no
#: task factory): ~1 µs a run less each.
_new_task: Callable[..., asyncio.Task[None]]
if sys.version_info >= (3, 12):
    _new_task = functools.partial(asyncio.Task, eager_start=True)
else:
    _new_task = asyncio.Task


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


def _raised_or_timed_out(run: Run) -> bool:
    return run.timed_out or run.error is not None or run.duration > run.timeout
