"""The engine: runs a heartbeat's checks through the scheduler and folds them into a report.

One path whoever calls: :meth:`Engine.run_sync` (a WSGI thread) and :meth:`Engine.run` (a
coroutine) plan every check the same way, through :class:`~._scheduler.Scheduler`, then wait on
events until each check's deadline; the cache, background refresh and flap damping are policies
around that path, each in its module.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import anyio
import anyio.lowlevel
import anyio.to_thread

from ..health import ERROR, STATUSES
from ._bridge import LoopThread
from ._cache import ReportCache
from ._check import DEFAULT_TIMEOUT, MAX_SECONDS, Check, restart_delay, validate_timeout
from ._damping import Damper
from ._exceptions import ConfigurationError
from ._refresh import Latest, Refresher
from ._report import CheckResult, Report, aggregate
from ._results import log_results, run_result, timed_out
from ._scheduler import GRACE, ContextFactory, Run, Scheduler, Spawner, wait_all


@dataclass
class _Plan:
    """What one heartbeat does about one check: serve a result, or wait for a run."""

    check: Check
    timeout: float
    result: CheckResult | None = None
    run: Run | None = None
    stuck: bool = False
    deadline: float = 0.0


class Engine:
    """Runs health checks concurrently, each under its own timeout, and folds them into a report.

    Async checks run on an event loop (the engine's :class:`LoopThread` for sync callers, the
    caller's own loop for async callers); sync checks run in daemon worker threads. Each run of a
    check executes in a fresh context, entered through ``context`` (the Flask layer passes
    ``app.app_context``). Heartbeats asking for a check whose run is in progress share that run.
    A heartbeat of a sync caller answers by its longest check timeout plus
    :data:`~._scheduler.GRACE`, whatever the checks do; a check not finished by then is reported
    as timed out (``E011``). A run still going after its restart delay is started again beside
    it (at most two runs of a check at a time). An optional cache serves a recent report for
    ``cache_ttl`` seconds (``cache_failed_ttl`` when it is failing).

    :param timeout: seconds a check may run when it sets no timeout of its own.
    :param silenced_ids: message IDs dropped from every report.
    :param cache_ttl: seconds a passing report is served again; 0 (default) turns caching off.
    :param cache_failed_ttl: seconds a failing report is served again; 0 (default) is off.
    :param fail_level: the level from which a report counts as failing (for the cache TTL and
        flap damping).
    :param bridge: the loop thread to run on; engines may share one. Defaults to a new one.
    :param context: called for each run of a check; the context manager it returns is entered
        around the run, in the thread or task that executes it. ``None``: no context.
    :param restart_after: seconds after which a run still in progress is started again beside
        it, for checks that set no ``restart_after`` of their own; ``None`` (default) takes the
        larger of 10 x the check's timeout and 30 s.
    :param noncritical: names of checks whose failure counts as a warning, as if they were made
        with ``critical=False``.
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
        context: ContextFactory | None = None,
        restart_after: float | None = None,
        noncritical: Collection[str] = (),
    ) -> None:
        try:
            self.timeout = validate_timeout(timeout)
            self.restart_after = (
                None if restart_after is None else validate_timeout(restart_after, "restart_after")
            )
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if fail_level not in STATUSES or fail_level == 0:
            raise ConfigurationError(f"fail_level must be one of 10..50, got {fail_level!r}")
        self.fail_level = fail_level
        self.silenced_ids = frozenset(silenced_ids)
        #: Names of checks whose failure counts as a warning, besides checks made with
        #: ``critical=False``.
        self.noncritical = frozenset(noncritical)
        self.cache = ReportCache(
            _non_negative(cache_ttl, "cache_ttl"),
            _non_negative(cache_failed_ttl, "cache_failed_ttl"),
            fail_level,
        )
        self._owns_bridge = bridge is None
        self.bridge = bridge if bridge is not None else LoopThread()
        self.scheduler = Scheduler(self.bridge, context)
        self.damper = Damper(fail_level)
        self.refresher = Refresher(self.bridge, self._start_on_bridge, self._finish_on_bridge)

    @property
    def cache_ttl(self) -> float:
        """Seconds a passing report is served again."""
        return self.cache.ttl

    @property
    def cache_failed_ttl(self) -> float:
        """Seconds a failing report is served again."""
        return self.cache.failed_ttl

    # -- callers --------------------------------------------------------------------------------

    def run_sync(self, checks: Iterable[Check]) -> Report:
        """Run ``checks`` and return the report, or a cached one; blocks the calling thread.

        Answers by the longest timeout of ``checks`` plus :data:`~._scheduler.GRACE`, whatever
        the checks do.

        :param checks: the checks to run.
        :returns: the report; failures of the checks are in it, never raised.
        """
        key = tuple(checks)
        report = self.cache.get(key)
        if report is None:
            started = time.monotonic()
            plans = [self._plan(c, started, self.bridge, self.bridge.submit) for c in _once(key)]
            wait_all([(plan.run, plan.deadline) for plan in plans if plan.run and _waits(plan)])
            report = self._report(plans, started)
            self.cache.put(key, report)
        return report

    async def run(self, checks: Iterable[Check]) -> Report:
        """Run ``checks`` concurrently and return the report, or a cached one.

        Async checks run on the caller's event loop (so they may use clients bound to it); sync
        checks in worker threads. An async check that blocks the caller's loop holds up the
        caller too; the engine's own loop, which sync callers use, is not affected.

        :param checks: the checks to run.
        :returns: the report; failures of the checks are in it, never raised.
        """
        key = tuple(checks)
        report = self.cache.get(key)
        if report is None:
            report = await self.run_uncached(key)
            self.cache.put(key, report)
        return report

    async def run_uncached(self, checks: Iterable[Check]) -> Report:
        """Run ``checks`` concurrently now, bypassing the cache.

        :returns: the report.
        """
        started = time.monotonic()
        loop = anyio.lowlevel.current_token().native_token
        async with anyio.create_task_group() as task_group:
            plans = [
                self._plan(check, started, loop, task_group.start_soon, on_loop=True)
                for check in _once(checks)
            ]
            await _wait_async([plan for plan in plans if _waits(plan)], loop)
            # A run another caller started on this loop and then abandoned (that caller was
            # cancelled) has no outcome: run the check again, within the same deadline.
            while retry := [p for p in plans if _abandoned(p) and time.monotonic() < p.deadline]:
                for plan in retry:
                    plan.run, plan.stuck = self._start(plan.check, loop, task_group.start_soon)
                    self._wait_on_loop(plan, loop)
                await _wait_async([plan for plan in retry if _waits(plan)], loop)
            report = self._report(plans, started)
        return report

    # -- one heartbeat --------------------------------------------------------------------------

    def _timeout_of(self, check: Check) -> float:
        return check.timeout if check.timeout is not None else self.timeout

    def _start(self, check: Check, loop: object, spawn: Spawner) -> tuple[Run, bool]:
        timeout = self._timeout_of(check)
        restart = restart_delay(check, timeout, self.restart_after)
        return self.scheduler.start(check, timeout, restart, loop=loop, spawn=spawn)

    def _plan(
        self, check: Check, started: float, loop: object, spawn: Spawner, *, on_loop: bool = False
    ) -> _Plan:
        """Decide what this heartbeat does about ``check``.

        :param loop: where async checks run: the bridge, or the caller's loop (native token).
        :param spawn: starts a task on that loop.
        :param on_loop: whether the caller runs on ``loop`` (an async caller).
        """
        timeout = self._timeout_of(check)
        plan = _Plan(check, timeout)
        if check.interval is not None:
            wanted = self.refresher.want(check)
            if isinstance(wanted, Latest):
                stale = self.refresher.stale(check, wanted, timeout)
                plan.result = stale or self.damper.apply(check, wanted.result, wanted.run)
                return plan
            plan.run, plan.stuck = wanted
        else:
            plan.run, plan.stuck = self._start(check, loop, spawn)
        if on_loop:
            self._wait_on_loop(plan, loop)
        plan.deadline = started + timeout + (GRACE if check.is_async else 0.0)
        return plan

    @staticmethod
    def _wait_on_loop(plan: _Plan, loop: object) -> None:
        run = plan.run
        if run is not None and run.loop is loop and run.loop_done is None:
            # Waiters on the run's own loop wait on a loop event. (No await since start(): the
            # run's task, on this same thread, cannot have begun yet.)
            run.loop_done = anyio.Event()

    def _settle(self, plan: _Plan, started: float) -> CheckResult:
        if plan.result is not None:
            return plan.result
        check, run = plan.check, plan.run
        assert run is not None
        if plan.stuck:
            stuck_for = time.monotonic() - run.started
            restart = restart_delay(check, run.timeout, self.restart_after)
            result = timed_out(
                check,
                plan.timeout,
                0.0,
                f"still running from an earlier heartbeat, stuck for {stuck_for:.1f}s "
                f"(started again once stuck for {restart:g}s)",
            )
            return self.damper.apply(check, result, object())
        if run.done.is_set() and not run.abandoned:
            return self.damper.apply(check, run_result(run), run)
        why = ""
        blocker = self.scheduler.blocker(run.loop)
        if run.abandoned:
            why = "its run was cancelled before it finished"
        elif blocker is not None:
            why = (
                f"the event loop was blocked by check {blocker.check.name!r} "
                f"for {time.monotonic() - (blocker.step_started or 0.0):.1f}s"
            )
        result = timed_out(check, plan.timeout, time.monotonic() - started, why)
        return self.damper.apply(check, result, object())

    def _report(self, plans: list[_Plan], started: float) -> Report:
        results = [self._settle(plan, started) for plan in plans]
        log_results(results)
        noncritical = self.noncritical.union(p.check.name for p in plans if not p.check.critical)
        return aggregate(results, self.silenced_ids, noncritical)

    # -- background refresh on the bridge loop --------------------------------------------------

    def _start_on_bridge(self, check: Check) -> tuple[Run, bool]:
        return self._start(check, self.bridge, self.bridge.submit)

    async def _finish_on_bridge(self, run: Run, stuck: bool) -> CheckResult:
        plan = _Plan(run.check, run.timeout, run=run, stuck=stuck)
        plan.deadline = run.started + run.timeout + (GRACE if run.check.is_async else 0.0)
        if not stuck and not run.done.is_set():
            await anyio.to_thread.run_sync(
                functools.partial(wait_all, [(run, plan.deadline)]), abandon_on_cancel=True
            )
        result = self._settle(plan, run.started)
        log_results([result])
        return result

    def stuck_runs(self) -> dict[str, int]:
        """Return check name → runs of it still in progress past the check's timeout.

        For a sync check each holds a worker thread (at most two per check); for monitoring
        (a gauge of threads held by stuck checks).
        """
        return self.scheduler.stuck()

    # -- lifecycle ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget cached reports, background results and damping streaks."""
        self.cache.clear()
        self.refresher.reset()
        self.damper = Damper(self.fail_level)

    def close(self) -> None:
        """Stop the engine's loop thread, unless it was given one to share (its owner stops
        that). The loop starts again if the engine is used later."""
        if self._owns_bridge:
            self.bridge.stop()


def _once(checks: Iterable[Check]) -> tuple[Check, ...]:
    return tuple(dict.fromkeys(checks))


def _abandoned(plan: _Plan) -> bool:
    return plan.run is not None and plan.run.abandoned


def _waits(plan: _Plan) -> bool:
    return plan.run is not None and not plan.stuck and not plan.run.done.is_set()


async def _wait_async(plans: list[_Plan], loop: object) -> None:
    """Wait until each planned run is done or its deadline passed, without blocking ``loop``."""
    on_loop = [p for p in plans if p.run is not None and p.run.loop_done is not None]
    elsewhere = [(p.run, p.deadline) for p in plans if p.run is not None and p not in on_loop]
    async with anyio.create_task_group() as task_group:
        if elsewhere:
            # Threads (and other loops) finish runs: wait for their events in a worker thread.
            task_group.start_soon(
                functools.partial(
                    anyio.to_thread.run_sync,
                    functools.partial(wait_all, elsewhere),
                    abandon_on_cancel=True,
                )
            )
        for plan in on_loop:
            assert plan.run is not None and plan.run.loop_done is not None
            with anyio.move_on_after(max(0.0, plan.deadline - time.monotonic())):
                await plan.run.loop_done.wait()


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
