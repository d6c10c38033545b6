"""Running checks: concurrently, each under its own timeout, with single-flight and a cache."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from .. import health
from ..health import ERROR, STATUSES, CheckMessage, Error, Info
from ..masking import masked_repr, short_error
from ._bridge import LoopThread
from ._check import DEFAULT_TIMEOUT, MAX_SECONDS, Check, validate_timeout
from ._exceptions import ConfigurationError
from ._report import CheckResult, Report, aggregate
from ._threads import ThreadCall, WorkerPool

logger = logging.getLogger("dockerflow.engine")
messages_logger = logging.getLogger("dockerflow.checks")

# Distinct check subsets whose result is kept; beyond this the cache starts over.
_MAX_CACHE_ENTRIES = 64
# How often a heartbeat looks whether a result it shares with another run has arrived.
_POLL = 0.005


@dataclass
class _Flight:
    """A run in progress that later callers for the same checks wait on (loop callers)."""

    done: anyio.Event = field(default_factory=anyio.Event)
    report: Report | None = None


@dataclass
class _ThreadFlight:
    """A run in progress that later callers for the same checks wait on (thread callers)."""

    done: threading.Event = field(default_factory=threading.Event)
    report: Report | None = None


@dataclass
class _Cached:
    report: Report
    expires: float


class _ProcessState:
    """Everything the engine keeps that belongs to one process (rebuilt after fork)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.flights: dict[tuple[Check, ...], _Flight] = {}
        self.thread_flights: dict[tuple[Check, ...], _ThreadFlight] = {}
        self.cache: dict[tuple[Check, ...], _Cached] = {}
        # The running call of each sync check whose function has not returned yet. Entries are
        # added under ``lock``; a call removes its own entry (from its worker thread) when the
        # function returns, which needs no lock: nothing else adds one while it is there.
        self.busy: dict[Check, ThreadCall] = {}
        self.pool = WorkerPool()
        self.limiter: anyio.CapacityLimiter | None = None
        # Background refresh: checks with a running refresh task; when a heartbeat last asked
        # for each (a task ends once nobody asks); their latest result and when it was stored.
        self.refreshing: set[Check] = set()
        self.wanted: dict[Check, float] = {}
        self.latest: dict[Check, tuple[CheckResult, float]] = {}
        # Flap damping, guarded by ``lock``: per check, the failing streak's length, when it
        # began and the last run counted in it (heartbeats sharing one run count it once).
        self.streaks: dict[Check, tuple[int, float, object]] = {}


class Engine:
    """Runs health checks concurrently, each under its own timeout, and folds them into a report.

    Async checks run on the event loop of the engine's :class:`LoopThread`; sync checks run in
    worker threads, at most one thread per check: a heartbeat that finds a sync check still
    running shares that run, and once the run is older than the check's timeout (stuck) reports
    the check as timed out at once instead of starting another thread. Callers asking for the
    same checks while a run is in flight share that run (single-flight); an optional cache serves
    a recent report for ``cache_ttl`` seconds (``cache_failed_ttl`` when it is failing).

    Sync callers use :meth:`run_sync`. When every check is a plain sync check it runs them from
    the calling thread on the engine's worker threads, without a trip through the loop;
    otherwise it goes through the loop thread. Async callers await :meth:`run` on the engine's
    own loop (or the only loop of an async application).

    :param timeout: seconds a check may run when it sets no timeout of its own.
    :param silenced_ids: message IDs dropped from every report.
    :param cache_ttl: seconds a passing report is served again; 0 (default) turns caching off.
    :param cache_failed_ttl: seconds a failing report is served again; 0 (default) is off.
    :param fail_level: the level from which a report counts as failing (for the cache TTL and
        flap damping).
    :param bridge: the loop thread to run on; engines may share one. Defaults to a new one.
    :raises ConfigurationError: if a number is out of range or not a number.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        silenced_ids: Collection[str] = (),
        cache_ttl: float = 0.0,
        cache_failed_ttl: float = 0.0,
        fail_level: int = ERROR,
        bridge: LoopThread | None = None,
    ) -> None:
        try:
            self.timeout = validate_timeout(timeout)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        self.cache_ttl = _non_negative(cache_ttl, "cache_ttl")
        self.cache_failed_ttl = _non_negative(cache_failed_ttl, "cache_failed_ttl")
        if fail_level not in STATUSES or fail_level == 0:
            raise ConfigurationError(f"fail_level must be one of 10..50, got {fail_level!r}")
        self.fail_level = fail_level
        self.silenced_ids = frozenset(silenced_ids)
        self._owns_bridge = bridge is None
        self.bridge = bridge if bridge is not None else LoopThread()
        self._process = _ProcessState()

    @property
    def _state(self) -> _ProcessState:
        # After fork the child has none of the parent's threads: start over with fresh state.
        state = self._process
        if state.pid != os.getpid():
            state = self._process = _ProcessState()
        return state

    # -- sync callers ---------------------------------------------------------------------------

    def run_sync(self, checks: Iterable[Check]) -> Report:
        """Run ``checks`` and return the report, sharing an in-flight or cached run; blocks.

        :param checks: the checks to run; the same checks in the same order share runs.
        :returns: the report; failures of the checks are in it, never raised.
        """
        key = tuple(checks)
        if not all(_plain_sync(check) for check in key):
            return self.bridge.call(self.run, key)
        state = self._state
        while True:
            cached = self._cached(key, state)
            if cached is not None:
                return cached
            with state.lock:
                flight = state.thread_flights.get(key)
                leading = flight is None
                if flight is None:
                    flight = state.thread_flights[key] = _ThreadFlight()
            if leading:
                try:
                    flight.report = self._run_in_threads(key, state)
                    self._store(key, flight.report, state)
                    return flight.report
                finally:
                    with state.lock:
                        del state.thread_flights[key]
                    flight.done.set()
            flight.done.wait()
            if flight.report is not None:
                return flight.report

    def _run_in_threads(self, checks: tuple[Check, ...], state: _ProcessState) -> Report:
        checks = tuple(dict.fromkeys(checks))
        started = time.monotonic()
        claims = []
        for check in checks:
            timeout = self._timeout_of(check)
            call, fresh = self._claim(check, timeout, state)
            if fresh:
                assert call is not None
                state.pool.submit(call.execute)
            claims.append((check, timeout, call))
        results = []
        for check, timeout, call in claims:
            if call is None:
                result = self._stuck_result(check, state)
            elif call.done.wait(max(0.0, started + timeout - time.monotonic())) and not isinstance(
                call.error, _DeadlinePassed
            ):
                duration = call.finished - max(started, call.started)
                result = self._outcome(check, call.value, call.error, duration)
            else:
                result = self._timed_out(check, timeout, time.monotonic() - started)
            results.append(self._damp(check, result, call) if check.damped else result)
        return aggregate(results, self.silenced_ids)

    def _await_on_loop(self, deadline: float, awaitable: Any) -> Any:
        """Await what a sync check returned on the loop, until ``deadline`` (worker thread)."""
        return self.bridge.call(_await_until, awaitable, deadline)

    # -- async callers --------------------------------------------------------------------------

    async def run(self, checks: Iterable[Check]) -> Report:
        """Run ``checks`` concurrently and return the report, sharing an in-flight or cached run.

        :param checks: the checks to run; the same checks in the same order share runs.
        :returns: the report; failures of the checks are in it, never raised.
        """
        key = tuple(checks)
        state = self._state
        while True:
            cached = self._cached(key, state)
            if cached is not None:
                return cached
            flight = state.flights.get(key)
            if flight is None:
                flight = state.flights[key] = _Flight()
                try:
                    flight.report = await self.run_uncached(key)
                    self._store(key, flight.report, state)
                    return flight.report
                finally:
                    del state.flights[key]
                    flight.done.set()
            await flight.done.wait()
            if flight.report is not None:
                return flight.report
            # The leading caller was cancelled before it finished: go round and lead a new run.

    async def run_uncached(self, checks: Iterable[Check]) -> Report:
        """Run ``checks`` concurrently now, bypassing single-flight and the cache.

        :returns: the report.
        """
        checks = tuple(dict.fromkeys(checks))
        results: list[CheckResult] = [CheckResult("")] * len(checks)

        async def run_into(index: int, check: Check) -> None:
            if check.interval is None:
                results[index] = await self.run_check(check)
            else:
                results[index] = await self._latest_result(check)

        async with anyio.create_task_group() as tg:
            for index, check in enumerate(checks):
                tg.start_soon(run_into, index, check)
        return aggregate(results, self.silenced_ids)

    async def run_check(self, check: Check) -> CheckResult:
        """Run one check under its timeout; never raises for what the check does.

        A timeout, an exception or a return value that is not a list of check messages becomes an
        :class:`~dockerflow.checks.Error` with a stable ID from :mod:`dockerflow.health`. For a
        check with flap damping, a failure that is not due yet becomes an Info message.
        """
        run: object = object()  # an async check's run is never shared
        result = await self._run_check_once(check, run)
        return self._damp(check, result, run) if check.damped else result

    async def _run_check_once(self, check: Check, run: object) -> CheckResult:
        timeout = self._timeout_of(check)
        started = time.monotonic()
        value: Any = None
        error: BaseException | None = None
        with anyio.move_on_after(timeout) as scope:
            try:
                if check.is_async:
                    value = await check.func()
                else:
                    call = await self._call_in_thread(check, timeout)
                    if call is None:
                        return self._stuck_result(check, self._state)
                    value, error = call.value, call.error
            except Exception as exc:
                error = exc
        duration = time.monotonic() - started
        if scope.cancelled_caught:
            return self._timed_out(check, timeout, duration)
        if duration > timeout:
            # Only an async check that never awaited gets here: the timeout could not fire.
            logger.warning(
                "Dockerflow check %r blocked the event loop for %.1fs; use a def check for "
                "blocking code",
                check.name,
                duration,
            )
            return self._timed_out(check, timeout, duration)
        return self._outcome(check, value, error, duration)

    async def _call_in_thread(self, check: Check, timeout: float) -> ThreadCall | None:
        state = self._state
        call, fresh = self._claim(check, timeout, state)
        if call is None:
            return None
        if not fresh:
            # Another heartbeat's run of this check is in its thread: share its result.
            while not call.done.is_set():
                await anyio.sleep(_POLL)
            return call
        if state.limiter is None:
            state.limiter = anyio.CapacityLimiter(8)
        # One token per busy sync check is enough: there is at most one thread per check.
        state.limiter.total_tokens = max(len(state.busy), int(state.limiter.total_tokens))
        try:
            await anyio.to_thread.run_sync(
                call.execute, abandon_on_cancel=True, limiter=state.limiter
            )
        finally:
            call.abandon_if_pending()
        return call

    # -- background refresh ---------------------------------------------------------------------

    async def _latest_result(self, check: Check) -> CheckResult:
        """Serve a background-refreshed check's latest result, starting its refresh task."""
        assert check.interval is not None
        state = self._state
        timeout = self._timeout_of(check)
        state.wanted[check] = time.monotonic()
        if check not in state.refreshing:
            self.bridge.spawn(self._refresh_while_wanted, check, state)
            state.refreshing.add(check)
        # Only the first heartbeat waits, for the first result. Polling, not an Event: the
        # refresh task runs on the bridge loop, which need not be the caller's loop.
        deadline = time.monotonic() + timeout + 0.05
        while check not in state.latest and time.monotonic() < deadline:
            await anyio.sleep(_POLL)
        entry = state.latest.get(check)
        if entry is None:
            message = Error(
                f"Check timed out after {timeout:g}s waiting for its first background run",
                id=health.ERROR_CHECK_TIMEOUT,
            )
            return CheckResult(check.name, (message,), timeout)
        result, stored_at = entry
        age = time.monotonic() - stored_at
        max_age = check.max_age if check.max_age is not None else 2 * check.interval + timeout
        if age > max_age:
            message = Error(
                f"Latest result is {age:.1f}s old, more than the allowed {max_age:g}s",
                id=health.ERROR_CHECK_RESULT_STALE,
            )
            return CheckResult(check.name, (message,), result.duration)
        return result

    async def _refresh_while_wanted(self, check: Check, state: _ProcessState) -> None:
        """Run ``check`` every ``interval`` while heartbeats ask for it.

        Ends when the engine's state is replaced (:meth:`reset`, fork) or when no heartbeat asked
        for the check for ``max(10 * interval, 60)`` seconds (a re-registered or removed check).
        """
        assert check.interval is not None
        unwanted_after = max(10 * check.interval, 60.0)
        try:
            while self._process is state:
                if time.monotonic() - state.wanted.get(check, 0.0) > unwanted_after:
                    state.latest.pop(check, None)
                    return
                try:
                    result = await self.run_check(check)
                except Exception as exc:  # run_check reports failures; this is a safety net
                    result = self._outcome(check, None, exc, 0.0)
                state.latest[check] = (result, time.monotonic())
                await anyio.sleep(check.interval)
        finally:
            state.refreshing.discard(check)

    # -- shared pieces --------------------------------------------------------------------------

    def _timeout_of(self, check: Check) -> float:
        return check.timeout if check.timeout is not None else self.timeout

    def _cached(self, key: tuple[Check, ...], state: _ProcessState) -> Report | None:
        cached = state.cache.get(key)
        if cached is not None and cached.expires > time.monotonic():
            return cached.report
        return None

    def _store(self, key: tuple[Check, ...], report: Report, state: _ProcessState) -> None:
        ttl = self.cache_failed_ttl if report.is_failure(self.fail_level) else self.cache_ttl
        if ttl > 0:
            if len(state.cache) >= _MAX_CACHE_ENTRIES:
                state.cache.clear()
            state.cache[key] = _Cached(report, time.monotonic() + ttl)

    def _claim(
        self, check: Check, timeout: float, state: _ProcessState
    ) -> tuple[ThreadCall | None, bool]:
        """Return ``(call, fresh)``: a new call to start, the running call to share, or
        ``(None, False)`` when the running call is older than the timeout (stuck)."""
        with state.lock:
            call = state.busy.get(check)
            if call is None:
                call = state.busy[check] = ThreadCall(check, state.busy)
                # A def that returns a coroutine: awaited on the loop by the worker thread, so
                # every heartbeat sharing this call gets the awaited value.
                call.resolve = functools.partial(self._await_on_loop, call.started + timeout)
                return call, True
        if time.monotonic() - call.started >= timeout:
            return None, False
        return call, False

    def _stuck_result(self, check: Check, state: _ProcessState) -> CheckResult:
        call = state.busy.get(check)
        stuck_for = time.monotonic() - call.started if call is not None else 0.0
        message = Error(
            f"Check timed out: still running from an earlier heartbeat "
            f"({stuck_for:.1f}s ago), not started again",
            id=health.ERROR_CHECK_TIMEOUT,
        )
        return self._finish(check, (message,), 0.0)

    def _timed_out(self, check: Check, timeout: float, duration: float) -> CheckResult:
        message = Error(f"Check timed out after {timeout:g}s", id=health.ERROR_CHECK_TIMEOUT)
        return self._finish(check, (message,), duration)

    def _outcome(
        self, check: Check, value: Any, error: BaseException | None, duration: float
    ) -> CheckResult:
        if error is not None:
            logger.error("Dockerflow check %r raised an exception", check.name, exc_info=error)
            message = Error(f"Check raised {short_error(error)}", id=health.ERROR_CHECK_EXCEPTION)
            return self._finish(check, (message,), duration)
        return self._finish(check, _to_messages(check, value), duration)

    def _finish(
        self, check: Check, messages: tuple[CheckMessage, ...], duration: float
    ) -> CheckResult:
        for message in messages:
            messages_logger.log(message.level, "%s: %s: %s", check.name, message.id, message.msg)
        return CheckResult(check.name, messages, duration)

    def _damp(self, check: Check, result: CheckResult, run: object) -> CheckResult:
        state = self._state
        now = time.monotonic()
        with state.lock:
            if not any(m.level >= self.fail_level for m in result.messages):
                state.streaks.pop(check, None)
                return result
            count, since, counted = state.streaks.get(check, (0, now, None))
            if counted is not run:
                count += 1
            state.streaks[check] = (count, since, run)
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

    def reset(self) -> None:
        """Forget in-flight runs, cached reports, stuck-thread records and damping streaks."""
        self._process = _ProcessState()

    def close(self) -> None:
        """Stop the engine's loop thread, unless it was given one to share (its owner stops
        that). The loop starts again if the engine is used later."""
        if self._owns_bridge:
            self.bridge.stop()


def _plain_sync(check: Check) -> bool:
    return not check.is_async and check.interval is None


class _DeadlinePassed(Exception):
    """The awaitable a sync check returned did not finish by the check's deadline."""


async def _await_until(awaitable: Any, deadline: float) -> Any:
    with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
        return await awaitable
    raise _DeadlinePassed


def _to_messages(check: Check, value: object) -> tuple[CheckMessage, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)) and all(isinstance(m, CheckMessage) for m in value):
        return tuple(value)
    shown = masked_repr(value, 80)
    logger.error("Dockerflow check %r returned %s, not a list of check messages", check.name, shown)
    return (
        Error(
            f"Check returned {type(value).__name__}, expected a list of check messages",
            id=health.ERROR_CHECK_BAD_RESULT,
        ),
    )


def _non_negative(value: object, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value <= MAX_SECONDS
    ):
        raise ConfigurationError(
            f"{name} must be a number of seconds from 0 to {MAX_SECONDS:g}, got {value!r}"
        )
    return float(value)
