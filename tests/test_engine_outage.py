"""A dependency's outage must not eat the server (issue 21 items 1-2).

While a check fails slowly (a run overran its timeout, or failed after half of it), heartbeats
answer at once with its latest outcome while one run retries in the background, started again as
soon as the previous try ends, without waiting for a probe; the first try that passes is reported
by the next heartbeat. A check stuck on a dead connection is started again after 3 x its timeout
by default, and recovers with its dependency.

A dependency here is an event the check waits on for a bounded time (its own "socket timeout"),
or for ever (no timeout of its own); nothing races a sleep: the tests wait on events and poll
with generous deadlines. The bounds on how fast heartbeats answer are loose upper bounds that
only prove a heartbeat did not wait for the check's timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dockerflow import health
from dockerflow.checks import Error
from dockerflow.engine import Check, Engine, Report

E011 = health.ERROR_CHECK_TIMEOUT
DOWN = "test.E001"
TIMEOUT = 0.5
#: A heartbeat that answered "at once": far under the check's timeout, whatever the load.
AT_ONCE = TIMEOUT / 2
#: Generous bound for what must happen "soon" on a loaded machine.
PATIENCE = 15.0


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = Engine()
    yield engine
    engine.close()


class Dependency:
    """A dependency that answers at once when up, and not at all when down: a check waiting on
    it gives up after its own bound, 60 % of the check's timeout (a slow failure)."""

    def __init__(self) -> None:
        self.up = threading.Event()
        self.lock = threading.Lock()
        self.runs = 0
        self.in_flight = 0
        self.most_in_flight = 0

    def _enter(self) -> None:
        with self.lock:
            self.runs += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def check(self) -> list[Any]:
        self._enter()
        try:
            if self.up.wait(0.6 * TIMEOUT):
                return []
            return [Error("no answer within 0.3s", id=DOWN)]
        finally:
            self._leave()

    async def check_async(self) -> list[Any]:
        self._enter()
        try:
            deadline = time.monotonic() + 0.6 * TIMEOUT
            while not self.up.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return [] if self.up.is_set() else [Error("no answer within 0.3s", id=DOWN)]
        finally:
            self._leave()

    def wait_for_runs(self, count: int) -> None:
        deadline = time.monotonic() + PATIENCE
        while self.runs < count:
            assert time.monotonic() < deadline, f"only {self.runs} runs, {count} expected"
            time.sleep(0.01)


def timed(engine: Engine, check: Check) -> tuple[Report, float]:
    started = time.monotonic()
    report = engine.run_sync([check])
    return report, time.monotonic() - started


def ids(report: Report, name: str) -> list[str]:
    return list(report.results[name].messages)


def recovery(engine: Engine, check: Check) -> float:
    """Seconds from now until a heartbeat reports the check ok (heartbeats every 10 ms)."""
    started = time.monotonic()
    while engine.run_sync([check]).status != "ok":
        assert time.monotonic() - started < PATIENCE, "the check never recovered"
        time.sleep(0.01)
    return time.monotonic() - started


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_heartbeats_do_not_wait_for_a_check_failing_slowly(engine: Engine, kind: str) -> None:
    dependency = Dependency()
    func = dependency.check if kind == "sync" else dependency.check_async
    check = Check("db", func, timeout=TIMEOUT)

    first, took = timed(engine, check)
    assert ids(first, "db") == [DOWN]
    assert took >= 0.6 * TIMEOUT  # the first failure is waited for: detection as before
    for _ in range(20):
        report, took = timed(engine, check)
        assert ids(report, "db") == [DOWN]
        assert took < AT_ONCE, took
    # Retried in the background, one try at a time, without any heartbeat asking.
    runs = dependency.runs
    dependency.wait_for_runs(runs + 3)
    assert dependency.most_in_flight == 1

    dependency.up.set()
    assert recovery(engine, check) < TIMEOUT + 1.0
    assert dependency.most_in_flight == 1


def test_an_async_caller_does_not_wait_for_a_check_failing_slowly(engine: Engine) -> None:
    dependency = Dependency()
    check = Check("db", dependency.check_async, timeout=TIMEOUT)

    async def heartbeats() -> list[tuple[Report, float]]:
        out = []
        for _ in range(10):
            started = time.monotonic()
            report = await engine.run([check])
            out.append((report, time.monotonic() - started))
        return out

    results = asyncio.run(heartbeats())
    assert all(ids(report, "db") == [DOWN] for report, _ in results)
    assert results[0][1] >= 0.6 * TIMEOUT
    assert all(took < AT_ONCE for _, took in results[1:]), [took for _, took in results]


def test_a_fast_failure_is_run_by_every_heartbeat(engine: Engine) -> None:
    calls: list[int] = []

    def refused() -> list[Any]:
        calls.append(1)
        return [Error("connection refused", id=DOWN)]

    check = Check("db", refused, timeout=TIMEOUT)
    for beat in range(1, 6):
        assert ids(engine.run_sync([check]), "db") == [DOWN]
        assert len(calls) == beat  # nothing retries it in the background


def test_a_run_overrunning_its_timeout_is_reported_at_once_then_retried(engine: Engine) -> None:
    """An overrun (a run that returned after its timeout) is a slow failure too."""
    gate = threading.Event()
    calls: list[int] = []

    def late_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            gate.wait(PATIENCE)  # returns once the test lets it, long after the timeout

    check = Check("late", late_once, timeout=0.1, restart_after=60)
    assert ids(engine.run_sync([check]), "late") == [E011]
    gate.set()
    # The late run ends as a timeout; a retry passes in the background; a heartbeat reports ok.
    assert recovery(engine, check) < PATIENCE
    assert len(calls) >= 2


def test_a_stuck_check_recovers_within_a_few_timeouts_by_default(
    engine: Engine,
) -> None:
    """No socket timeout of its own: the first run hangs for ever (until teardown); a new run is
    started beside it after 3 x the timeout, in the background, and passes."""
    forever = threading.Event()
    calls: list[int] = []
    timeout = 0.2

    def hangs_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            forever.wait()

    check = Check("stuck", hangs_once, timeout=timeout)
    try:
        first = engine.run_sync([check])
        assert ids(first, "stuck") == [E011]
        started = time.monotonic()
        while (report := engine.run_sync([check])).status != "ok":
            assert time.monotonic() - started < PATIENCE
            assert ids(report, "stuck") == [E011]
            time.sleep(0.01)
        # Restarted at 3 x the timeout after the first run began; well before the old 30 s.
        assert time.monotonic() - started < 3 * timeout + 5.0
        assert len(calls) == 2
        assert engine.stuck_runs() == {"stuck": 1}
    finally:
        forever.set()


def test_damping_still_reports_a_check_failing_slowly(engine: Engine) -> None:
    dependency = Dependency()
    check = Check("db", dependency.check, timeout=TIMEOUT, failure_threshold=3)
    first = engine.run_sync([check])
    assert first.results["db"].level < health.ERROR
    assert list(first.results["db"].messages) == [health.INFO_FAILURE_DAMPED]
    started = time.monotonic()
    while engine.run_sync([check]).results["db"].level < health.ERROR:
        assert time.monotonic() - started < PATIENCE, "damping held the failure back for ever"
        time.sleep(0.01)
    dependency.up.set()
    assert recovery(engine, check) < TIMEOUT + 1.0
