"""The engine: runs a heartbeat's checks through the scheduler and folds them into a report.

One path whoever calls: :meth:`Engine.run_sync` (a WSGI thread) and :meth:`Engine.run` (a
coroutine) plan every check the same way, through :class:`~._scheduler.Scheduler`, then wait on
events until each check's deadline; the cache, background refresh and flap damping are policies
around that path, each in its module.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection, Hashable, Iterable
from dataclasses import dataclass

from ..health import ERROR, STATUSES
from ._bridge import LoopThread
from ._cache import ReportCache
from ._check import DEFAULT_TIMEOUT, MAX_SECONDS, Check, restart_delay, validate_timeout
from ._damping import Damper
from ._exceptions import ConfigurationError
from ._refresh import Refresher
from ._report import CheckResult, Report, aggregate
from ._results import log_results, not_started, run_key, run_result, timed_out
from ._runs import Host, Run, Waiter
from ._scheduler import BATCH_WAIT, ContextFactory, Scheduler

#: Most check sets an engine keeps worked out (see :class:`_CheckSet`); past it, it starts again.
MAX_CHECK_SETS = 64


@dataclass(frozen=True)
class _CheckSet:
    """What an engine works out once per set of checks, not per heartbeat: each check's
    timeout and restart delay, which checks are non-critical. Made again when the engine's
    settings change (``settings``)."""

    settings: tuple[float, float | None, frozenset[str]]
    #: Each distinct check, in order, with its timeout.
    timeouts: tuple[tuple[Check, float], ...]
    #: (check, timeout, restart delay) of the checks without a background refresh.
    started: tuple[tuple[Check, float, float], ...]
    noncritical: frozenset[str]
    any_async: bool

    @classmethod
    def of(cls, engine: Engine, checks: tuple[Check, ...]) -> _CheckSet:
        """Work out ``checks`` for ``engine``."""
        unique = _once(checks)
        timeouts = tuple((check, engine._timeout_of(check)) for check in unique)
        return cls(
            settings=engine._settings(),
            timeouts=timeouts,
            started=tuple(
                (check, timeout, engine._restart_of(check, timeout))
                for check, timeout in timeouts
                if check.interval is None
            ),
            noncritical=engine.noncritical.union(c.name for c in unique if not c.critical),
            any_async=any(check.is_async for check in unique),
        )


@dataclass(slots=True)
class _Plan:
    """What one heartbeat does about one check: wait for a run, or serve a result at once.

    ``key`` identifies the run a ready ``result`` is of, for flap damping; ``None`` reports
    the result as it is.
    """

    check: Check
    timeout: float
    run: Run | None = None
    #: The run was already past its deadline when this heartbeat asked (an earlier one's).
    overdue: bool = False
    result: CheckResult | None = None
    key: Hashable | None = None
    #: A new run was needed but not started: these runs of the check are stuck.
    stuck: list[Run] | None = None


class Engine:
    """Runs health checks concurrently, each under its own timeout, and folds them into a report.

    Async checks run on an event loop (the engine's :class:`LoopThread` for sync callers, the
    caller's own loop for async callers); sync checks run in daemon worker threads. Each run of a
    check executes in a fresh context, entered through ``context`` (the Flask layer passes
    ``app.app_context``). Heartbeats asking for a check whose run is in progress share that run;
    one that did not start it answers at once with the check's latest result instead, if that
    result's run started within the timeout and the run shared is within its deadline.
    Every heartbeat sharing a run answers by that run's start plus its timeout (plus
    :data:`~._runs.CANCEL_WAIT` for an async check), whatever the checks do; a run not finished by
    then, or finished later, is reported as timed out (``E011``) to everyone who sees it. A run
    still going after its restart delay is started again beside it, unless two runs of the check's
    function are already stuck past their timeout in the process (then the check is reported as
    not started, ``E016``). While a check fails slowly (a run overran its timeout, or failed
    after half of it), heartbeats answer at once with its latest outcome while one run retries in
    the background (see :mod:`._scheduler`). An optional cache serves a recent report for
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
        it, for checks that set no ``restart_after`` of their own; ``None`` (default) takes 3 x
        the check's timeout.
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
        self.scheduler = Scheduler(self.bridge, context, self._failed)
        self.damper = Damper(fail_level)
        self.refresher = Refresher(self.bridge, self._start_refresh, self._settle_refresh)
        self._check_sets: dict[tuple[Check, ...], _CheckSet] = {}

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

        Answers by the longest timeout of ``checks`` plus :data:`~._runs.CANCEL_WAIT`, whatever
        the checks do.

        :param checks: the checks to run.
        :returns: the report; failures of the checks are in it, never raised.
        """
        key = tuple(checks)
        report = self.cache.get(key)
        if report is None:
            started = time.monotonic()
            known = self._check_set(key)
            batch: list[Run] = []
            async_batch: list[Run] = []
            plans = self._plan_all(known, started, self.scheduler.bridge_host, batch, async_batch)
            # One waiter for all the heartbeat's runs: woken once, when the last ends.
            waiter = Waiter()
            waiter.join([plan.run for plan in plans if plan.run is not None])
            if async_batch:
                # One hand-off to the loop thread for all of them, first: they run meanwhile.
                self.scheduler.start_async_batch(async_batch)
            if batch:
                queue = self.scheduler.start_batch(batch)
                if queue:
                    # A slow check delays the others of the batch by BATCH_WAIT at most.
                    waiter.wait(time.monotonic() + BATCH_WAIT)
                    self.scheduler.spread(queue)
            waiter.wait_all()
            report = self._report(plans, started, known.noncritical)
            self.cache.put(key, report)
        return report

    async def run(self, checks: Iterable[Check]) -> Report:
        """Run ``checks`` concurrently and return the report, or a cached one.

        Async checks run on the caller's event loop (so they may use clients bound to it), as
        tasks the engine owns there; sync checks in worker threads. The caller answers by the
        same deadline as a sync caller: the longest timeout of ``checks`` plus
        :data:`~._runs.CANCEL_WAIT`, unless a check blocks the caller's loop itself (the engine's
        own loop, which sync callers use, is not affected then).

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
        """Run ``checks`` concurrently now, bypassing the cache (see :meth:`run`).

        :returns: the report.
        """
        started = time.monotonic()
        known = self._check_set(tuple(checks))
        host = await self.scheduler.host_here() if known.any_async else None
        plans = self._plan_all(known, started, host)
        for plan in plans:
            if plan.run is not None:
                await plan.run.wait_async(plan.run.deadline)
        return self._report(plans, started, known.noncritical)

    # -- one heartbeat: run -> damp (keyed by the run) -> aggregate; the cache is the callers' -

    def _timeout_of(self, check: Check) -> float:
        return check.timeout if check.timeout is not None else self.timeout

    def _restart_of(self, check: Check, timeout: float) -> float:
        return restart_delay(check, timeout, self.restart_after)

    def _check_set(self, checks: tuple[Check, ...]) -> _CheckSet:
        """Return what is worked out once per set of checks (and engine settings)."""
        known = self._check_sets.get(checks)
        if known is None or known.settings != self._settings():
            if len(self._check_sets) >= MAX_CHECK_SETS:
                self._check_sets.clear()  # many selections: start again rather than grow
            known = self._check_sets[checks] = _CheckSet.of(self, checks)
        return known

    def _settings(self) -> tuple[float, float | None, frozenset[str]]:
        # What a check set's timeouts, restart delays and non-critical names depend on.
        return (self.timeout, self.restart_after, self.noncritical)

    def _plan_all(
        self,
        known: _CheckSet,
        started: float,
        host: Host | None,
        batch: list[Run] | None = None,
        async_batch: list[Run] | None = None,
    ) -> list[_Plan]:
        """:meth:`_plan` for each check of ``known``, the checks without a background refresh
        started together (:meth:`~._scheduler.Scheduler.start_many`)."""
        started_runs = iter(
            self.scheduler.start_many(known.started, host, batch, async_batch=async_batch)
        )
        plans = []
        for check, timeout in known.timeouts:
            if check.interval is not None:
                plans.append(self._plan(check, started, host, batch, async_batch))
            else:
                run, stuck = next(started_runs)
                plans.append(self._plan_of(check, timeout, started, run, stuck))
        return plans

    def _plan(
        self,
        check: Check,
        started: float,
        host: Host | None,
        batch: list[Run] | None = None,
        async_batch: list[Run] | None = None,
    ) -> _Plan:
        """Decide what this heartbeat does about ``check``: serve its background result, or
        share (or start) a run and wait until that run's deadline.

        :param batch: new sync runs are collected here, for the caller to start together.
        :param async_batch: new async runs on the loop thread are collected here, likewise.
        """
        timeout = self._timeout_of(check)
        if check.interval is not None:
            # An async check refreshed for an async caller runs on the caller's loop, where its
            # clients live; every other on the engine's loop thread.
            where = host if check.is_async and host is not self.scheduler.bridge_host else None
            latest = self.refresher.latest(check, where)
            if latest is not None:
                stale = self.refresher.stale(check, latest, timeout)
                if stale is not None:
                    # The refresh stopped: not a flap of the dependency, never held back.
                    return _Plan(check, timeout, result=stale)
                return _Plan(check, timeout, result=latest.result, key=latest.key)
            # No background result yet: wait for the refresh's first run.
            run = self.refresher.pending(check, where)
            if run is not None:
                return _Plan(check, timeout, run=run, overdue=started >= run.deadline)
        restart = self._restart_of(check, timeout)
        run, stuck = self.scheduler.start(
            check, timeout, restart, host, batch, async_batch=async_batch
        )
        return self._plan_of(check, timeout, started, run, stuck)

    def _plan_of(
        self, check: Check, timeout: float, started: float, run: Run | None, stuck: list[Run]
    ) -> _Plan:
        """The plan of a heartbeat that asked at ``started`` for ``check``, to which the
        scheduler gave ``run`` (or ``None``: ``stuck`` runs kept a new one from starting)."""
        if run is None:
            result, key = self._refused(check, stuck)
            return _Plan(check, timeout, result=result, key=key)
        return _Plan(check, timeout, run=run, overdue=started >= run.deadline, stuck=stuck)

    def _refused(self, check: Check, stuck: list[Run]) -> tuple[CheckResult, Hashable]:
        """The result of a check that could not start: its stuck runs hold every slot."""
        now = time.monotonic()
        oldest = stuck[0]
        result = not_started(check, len(stuck), now - oldest.started, oldest.timeout)
        return result, run_key(oldest, now)

    def _failed(self, run: Run) -> bool:
        """Whether ``run``, which ended, failed (reported ``fail_level`` or above)."""
        messages = run_result(run).messages
        if not messages:
            return False  # most runs
        fail_level = self.fail_level
        return any(m.level >= fail_level for m in messages)

    def _observe(
        self, check: Check, run: Run, overdue: bool, since: float, stuck: list[Run] | None = None
    ) -> CheckResult:
        """Return the raw result of ``run`` as seen now, at or after its deadline, by a caller
        that asked at ``since`` (a run not finished took that caller the time it waited).

        :param stuck: the stuck runs that kept a new run from starting beside ``run``, if any.
        """
        if run.done:
            return run_result(run)
        why = ""
        blocker = self.scheduler.blocker(run.host)
        if overdue:
            why = f"still running from an earlier heartbeat, stuck for {run.duration:.1f}s"
            if stuck:
                why += f"; not started again: {len(stuck)} runs of it are stuck in this process"
            else:
                why += f"; started again once stuck for {self._restart_of(check, run.timeout):g}s"
        elif blocker is not None:
            blocking, step_started = blocker
            why = (
                f"the event loop was blocked by check {blocking.check.name!r} "
                f"for {time.monotonic() - step_started:.1f}s"
            )
        # How long this caller waited for it: nothing, for a run already past its deadline.
        waited = 0.0 if overdue else min(run.duration, time.monotonic() - since)
        return timed_out(check, run.timeout, waited, why)

    def _settle(self, plan: _Plan, started: float) -> CheckResult:
        check = plan.check
        run = plan.run
        if run is not None:
            if run.ended:  # most runs: their result was made when they ended
                raw = run_result(run)
            else:
                raw = self._observe(check, run, plan.overdue, started, plan.stuck)
            # The key matters to damping only (most checks are not damped).
            key: Hashable | None = run_key(run, time.monotonic()) if check.damped else None
        else:
            assert plan.result is not None
            raw, key = plan.result, plan.key
        if raw.name != check.name:
            # Checks of one function under two names share its runs.
            raw = dataclasses.replace(raw, name=check.name)
        return raw if key is None else self.damper.apply(check, raw, key)

    def _report(self, plans: list[_Plan], started: float, noncritical: frozenset[str]) -> Report:
        results = [self._settle(plan, started) for plan in plans]
        log_results(results)
        return aggregate(results, self.silenced_ids, noncritical)

    # -- background refresh, on the bridge loop ------------------------------------------------

    def _start_refresh(self, check: Check, host: Host | None) -> tuple[Run | None, list[Run]]:
        timeout = self._timeout_of(check)
        restart = self._restart_of(check, timeout)
        where = host if host is not None else self.scheduler.bridge_host
        return self.scheduler.start(check, timeout, restart, where, background=True)

    async def _settle_refresh(
        self, check: Check, run: Run | None, stuck: list[Run], started: float
    ) -> tuple[CheckResult, Hashable]:
        """Wait for a refresh's run (started at ``started``) and return its raw result and run
        key; ``run`` is ``None`` when the check could not start (``stuck`` held the slots)."""
        if run is None:
            result, key = self._refused(check, stuck)
        else:
            await run.wait_async(run.deadline)
            result = self._observe(check, run, started >= run.deadline, started)
            key = run_key(run, time.monotonic())
        log_results([result])
        return result, key

    def stuck_runs(self) -> dict[str, int]:
        """Return check name → runs of it still in progress past the check's timeout.

        For a sync check each holds a worker thread (at most two per check function in the
        process); for monitoring (a gauge of threads held by stuck checks).
        """
        return self.scheduler.stuck()

    # -- lifecycle ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget cached reports, background results and damping streaks."""
        self._check_sets.clear()
        self.cache.clear()
        self.refresher.reset()
        self.damper.clear()

    def close(self) -> None:
        """Stop retrying failing checks in the background, and stop the engine's loop thread,
        unless it was given one to share (its owner stops that). The loop starts again, and
        failing checks are retried again, if the engine is used later."""
        self.scheduler.retrying = False
        if self._owns_bridge:
            self.bridge.stop()


def _once(checks: Iterable[Check]) -> tuple[Check, ...]:
    return tuple(dict.fromkeys(checks))


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
