"""Running checks: concurrently, each under its own timeout, with single-flight and a cache."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from .. import health
from .._redact import short_error
from ..checks._messages import ERROR, STATUSES, CheckMessage, Error, Info
from ._bridge import LoopThread
from ._check import DEFAULT_TIMEOUT, Check, validate_timeout
from ._exceptions import ConfigurationError
from ._report import CheckResult, Report, aggregate

logger = logging.getLogger("dockerflow.engine")
messages_logger = logging.getLogger("dockerflow.checks")

# Distinct check subsets whose result is kept; beyond this the cache starts over.
_MAX_CACHE_ENTRIES = 64


@dataclass
class _Flight:
    """A run in progress that later callers for the same checks wait on."""

    done: anyio.Event = field(default_factory=anyio.Event)
    report: Report | None = None


@dataclass
class _Cached:
    report: Report
    expires: float


class _ThreadCall:
    """Tracks one sync check call in a worker thread, so the check is never run twice at once."""

    __slots__ = ("lock", "state")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = "pending"  # -> "running" -> "done", or "pending" -> "abandoned"


class _ProcessState:
    """Everything the engine keeps that belongs to one process (rebuilt after fork)."""

    def __init__(self) -> None:
        self.flights: dict[tuple[Check, ...], _Flight] = {}
        self.cache: dict[tuple[Check, ...], _Cached] = {}
        # Sync checks whose worker thread has not returned yet, with when it started. Written from
        # worker threads and the loop thread; single dict operations are atomic under the GIL.
        self.busy: dict[Check, float] = {}
        self.limiter: anyio.CapacityLimiter | None = None
        # Background refresh: checks whose refresh task was started, and their latest result
        # with the monotonic time it was stored. Written only on the loop thread.
        self.refreshing: set[Check] = set()
        self.latest: dict[Check, tuple[CheckResult, float]] = {}
        # Flap damping: consecutive failing runs and when the current failing streak began.
        self.streaks: dict[Check, tuple[int, float]] = {}


class Engine:
    """Runs health checks concurrently, each under its own timeout, and folds them into a report.

    Async checks run on the event loop; sync checks run in worker threads, at most one thread per
    check: while a sync check is stuck in its thread past its timeout, later runs report it as
    timed out at once instead of starting another thread. Callers asking for the same checks
    while a run is in flight share that run (single-flight); an optional cache serves a recent
    report for ``cache_ttl`` seconds (``cache_failed_ttl`` when it is failing).

    Await :meth:`run` from the engine's own loop (or from the only loop of an async application);
    sync callers use :meth:`run_sync`, which goes through the engine's :class:`LoopThread`.

    :param timeout: seconds a check may run when it sets no timeout of its own.
    :param silenced_ids: message IDs dropped from every report.
    :param cache_ttl: seconds a passing report is served again; 0 (default) turns caching off.
    :param cache_failed_ttl: seconds a failing report is served again; 0 (default) is off.
    :param fail_level: the level from which a report counts as failing (for the cache TTL).
    :param bridge: the loop thread to run on; engines may share one. Defaults to a new one.
    :raises ConfigurationError: if a number is negative or not a number.
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
        self.bridge = bridge if bridge is not None else LoopThread()
        self._state = _ProcessState()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset_if_alive(ref))

    def run_sync(self, checks: Iterable[Check]) -> Report:
        """Run ``checks`` on the engine's loop thread and return the report; blocks the caller."""
        return self.bridge.call(self.run, tuple(checks))

    async def run(self, checks: Iterable[Check]) -> Report:
        """Run ``checks`` concurrently and return the report, sharing an in-flight or cached run.

        :param checks: the checks to run; the same checks in the same order share runs.
        """
        key = tuple(checks)
        state = self._state
        while True:
            cached = state.cache.get(key)
            if cached is not None and cached.expires > time.monotonic():
                return cached.report
            flight = state.flights.get(key)
            if flight is None:
                return await self._lead(key, state)
            await flight.done.wait()
            if flight.report is not None:
                return flight.report
            # The leading caller was cancelled before it finished: go round and lead a new run.

    async def _lead(self, key: tuple[Check, ...], state: _ProcessState) -> Report:
        flight = state.flights[key] = _Flight()
        try:
            report = await self.run_uncached(key)
            flight.report = report
            ttl = self.cache_failed_ttl if report.is_failure(self.fail_level) else self.cache_ttl
            if ttl > 0:
                if len(state.cache) >= _MAX_CACHE_ENTRIES:
                    state.cache.clear()
                state.cache[key] = _Cached(report, time.monotonic() + ttl)
            return report
        finally:
            del state.flights[key]
            flight.done.set()

    async def run_uncached(self, checks: Iterable[Check]) -> Report:
        """Run ``checks`` concurrently now, bypassing single-flight and the cache."""
        checks = tuple(checks)
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

    async def _latest_result(self, check: Check) -> CheckResult:
        """Serve a background-refreshed check's latest result, starting its refresh task."""
        assert check.interval is not None
        state = self._state
        timeout = self._timeout_of(check)
        if check not in state.refreshing:
            state.refreshing.add(check)
            self.bridge.spawn(self._refresh_forever, check, state)
        # Only the first heartbeat waits, for the first result. Polling, not an Event: the
        # refresh task runs on the bridge loop, which need not be the caller's loop.
        deadline = time.monotonic() + timeout + 0.05
        while check not in state.latest and time.monotonic() < deadline:
            await anyio.sleep(0.005)
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

    async def _refresh_forever(self, check: Check, state: _ProcessState) -> None:
        assert check.interval is not None
        try:
            while True:
                result = await self.run_check(check)
                state.latest[check] = (result, time.monotonic())
                await anyio.sleep(check.interval)
        finally:
            state.refreshing.discard(check)

    def _timeout_of(self, check: Check) -> float:
        return check.timeout if check.timeout is not None else self.timeout

    async def run_check(self, check: Check) -> CheckResult:
        """Run one check under its timeout; never raises for what the check does.

        A timeout, an exception or a return value that is not a list of check messages becomes an
        :class:`~dockerflow.checks.Error` with a stable ID from :mod:`dockerflow.health`. For a
        check with flap damping, a failure that is not due yet becomes an Info message.
        """
        result = await self._run_check_once(check)
        if check.damped:
            result = self._damp(check, result)
        return result

    def _damp(self, check: Check, result: CheckResult) -> CheckResult:
        streaks = self._state.streaks
        if not any(m.level >= self.fail_level for m in result.messages):
            streaks.pop(check, None)
            return result
        now = time.monotonic()
        count, since = streaks.get(check, (0, now))
        count += 1
        streaks[check] = (count, since)
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

    async def _run_check_once(self, check: Check) -> CheckResult:
        timeout = self._timeout_of(check)
        started = time.perf_counter()
        messages: tuple[CheckMessage, ...]
        if not check.is_async and check in self._state.busy:
            stuck_for = time.monotonic() - self._state.busy[check]
            messages = (
                Error(
                    f"Check timed out: still running from an earlier heartbeat "
                    f"({stuck_for:.1f}s ago), not started again",
                    id=health.ERROR_CHECK_TIMEOUT,
                ),
            )
            return CheckResult(check.name, messages, 0.0)
        with anyio.move_on_after(timeout) as scope:
            try:
                if check.is_async:
                    value = await check.func()
                else:
                    value = await self._call_in_thread(check)
                messages = _to_messages(check, value)
            except Exception as exc:
                logger.error("Dockerflow check %r raised an exception", check.name, exc_info=exc)
                messages = (
                    Error(f"Check raised {short_error(exc)}", id=health.ERROR_CHECK_EXCEPTION),
                )
        duration = time.perf_counter() - started
        if scope.cancelled_caught:
            logger.warning("Dockerflow check %r timed out after %gs", check.name, timeout)
            messages = (
                Error(f"Check timed out after {timeout:g}s", id=health.ERROR_CHECK_TIMEOUT),
            )
        for message in messages:
            messages_logger.log(message.level, "%s: %s: %s", check.name, message.id, message.msg)
        return CheckResult(check.name, messages, duration)

    async def _call_in_thread(self, check: Check) -> Any:
        state = self._state
        if state.limiter is None:
            state.limiter = anyio.CapacityLimiter(8)
        # One token per sync check at most: at most one thread per check is ever busy.
        sync_checks = max(len(state.busy) + 1, int(state.limiter.total_tokens))
        state.limiter.total_tokens = sync_checks
        call = _ThreadCall()
        state.busy[check] = time.monotonic()

        def work() -> Any:  # runs in a worker thread
            with call.lock:
                if call.state == "abandoned":
                    return None
                call.state = "running"
            try:
                return check.func()
            finally:
                call.state = "done"
                state.busy.pop(check, None)

        try:
            value = await anyio.to_thread.run_sync(
                work, abandon_on_cancel=True, limiter=state.limiter
            )
        finally:
            with call.lock:
                if call.state == "pending":  # cancelled before the thread picked it up
                    call.state = "abandoned"
                    state.busy.pop(check, None)
        if hasattr(value, "__await__"):  # a sync callable that returned an awaitable
            value = await value
        return value

    def reset(self) -> None:
        """Forget in-flight runs, cached reports and stuck-thread records (used after fork)."""
        self._state = _ProcessState()

    def close(self) -> None:
        """Stop the engine's loop thread. It starts again if the engine is used later."""
        self.bridge.stop()


def _to_messages(check: Check, value: object) -> tuple[CheckMessage, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)) and all(isinstance(m, CheckMessage) for m in value):
        return tuple(value)
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:79] + "…"
    logger.error("Dockerflow check %r returned %s, not a list of check messages", check.name, shown)
    return (
        Error(
            f"Check returned {type(value).__name__}, expected a list of check messages",
            id=health.ERROR_CHECK_BAD_RESULT,
        ),
    )


def _non_negative(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigurationError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _reset_if_alive(ref: weakref.ref[Engine]) -> None:
    engine = ref()
    if engine is not None:
        engine.reset()
