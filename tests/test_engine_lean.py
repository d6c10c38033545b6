"""The lean heartbeat path (issue 24 items 1 and 3): one waiter per heartbeat, woken at each
unfinished check's own deadline; a sync caller's async runs under one loop timer; the check set
worked out once and again when the engine's settings change."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from dockerflow import health
from dockerflow.checks import Error
from dockerflow.engine import Check, Engine, Report

E011 = health.ERROR_CHECK_TIMEOUT
E012 = health.ERROR_CHECK_EXCEPTION

#: Bounds, generous for a loaded machine, far below the longest timeout of each test's checks.
WAIT = 10.0


def hanging(release: threading.Event, is_async: bool) -> Callable[[], object]:
    if is_async:

        async def hangs_async() -> None:
            await asyncio.sleep(60)

        return hangs_async

    def hangs() -> None:
        release.wait(60)

    return hangs


def quick() -> None:
    return None


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_heartbeat_answers_at_the_deadline_of_each_unfinished_check(
    engine: Engine, release: threading.Event, is_async: bool
) -> None:
    # A heartbeat woken at the set's longest timeout (3 s here) would answer in 3 s, not 0.3.
    checks = [
        Check("hangs", hanging(release, is_async), timeout=0.3),
        Check("quick", quick, timeout=3.0),
    ]
    started = time.monotonic()
    report = engine.run_sync(checks)
    elapsed = time.monotonic() - started
    assert list(report.results["hangs"].messages) == [E011]
    assert report.checks["quick"] == "ok"
    assert elapsed < 2.0, elapsed


def test_a_heartbeat_waits_on_for_a_check_whose_deadline_is_later(
    engine: Engine, release: threading.Event
) -> None:
    def slower() -> None:
        time.sleep(0.5)  # well within its 3 s timeout: it is waited for past 0.2 s

    checks = [
        Check("hangs", hanging(release, False), timeout=0.2),
        Check("slower", slower, timeout=3.0),
        Check("quick", quick),
    ]
    report = engine.run_sync(checks)
    assert list(report.results["hangs"].messages) == [E011]
    assert report.checks["slower"] == "ok"
    assert report.checks["quick"] == "ok"


def test_a_sync_callers_async_check_is_cancelled_at_its_timeout(engine: Engine) -> None:
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    report = engine.run_sync([Check("slow", slow, timeout=0.2), Check("quick", quick)])
    assert list(report.results["slow"].messages) == [E011]
    assert cancelled.wait(WAIT)
    # The timer's cancellation was consumed: the loop and the next heartbeat are unaffected.
    again = engine.run_sync([Check("quick", quick)])
    assert again.status == "ok"


def test_an_async_check_that_fails_at_once_beside_a_hanging_one(engine: Engine) -> None:
    async def refused() -> list[Error]:
        return [Error("refused", id="x.E001")]

    async def hangs() -> None:
        await asyncio.sleep(60)

    report = engine.run_sync(
        [Check("refused", refused), Check("hangs", hangs, timeout=0.2), Check("quick", quick)]
    )
    assert list(report.results["refused"].messages) == ["x.E001"]
    assert list(report.results["hangs"].messages) == [E011]
    assert report.checks["quick"] == "ok"


def test_stopping_the_loop_under_a_sync_callers_async_run_reports_it(engine: Engine) -> None:
    started = threading.Event()

    async def waits() -> None:
        started.set()
        await asyncio.sleep(60)

    answered: list[object] = []
    heartbeat = threading.Thread(
        target=lambda: answered.append(engine.run_sync([Check("waits", waits, timeout=30)]))
    )
    heartbeat.start()
    assert started.wait(WAIT)
    engine.bridge.stop()
    heartbeat.join(WAIT)
    assert not heartbeat.is_alive()
    (report,) = answered
    assert isinstance(report, Report)
    assert "the event loop it ran on stopped" in report.results["waits"].messages[E012]


def test_the_check_set_follows_the_engines_settings(engine: Engine) -> None:
    def fails() -> list[Error]:
        return [Error("down", id="x.E001")]

    checks = [Check("fails", fails), Check("quick", quick)]
    assert engine.run_sync(checks).status == "error"
    engine.noncritical = frozenset({"fails"})
    assert engine.run_sync(checks).status == "warning"
    engine.noncritical = frozenset()
    assert engine.run_sync(checks).status == "error"
