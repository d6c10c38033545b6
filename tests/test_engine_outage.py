"""A dependency's outage must not eat the server (issue 21 items 1-2).

While a check fails slowly (a run overran its timeout, or failed after half of it), heartbeats
answer at once with its latest outcome while one run retries in the background, started again as
soon as the previous try ends, without waiting for a probe; the first try that passes is reported
by the next heartbeat. A check stuck on a dead connection is started again after 3 x its timeout
by default, and recovers with its dependency. A heartbeat that joins a run in progress answers
at once with the check's latest result while it is recent (stale-while-revalidate): only the
heartbeat that started the first failing run of an outage waits for it.

A dependency here is an event the check waits on for a bounded time (its own "socket timeout"),
or for ever (no timeout of its own); nothing races a sleep: the tests wait on events and poll
with generous deadlines. The bounds on how fast heartbeats answer are loose upper bounds that
only prove a heartbeat did not wait for the check's timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from dockerflow import health
from dockerflow.checks import Error
from dockerflow.engine import Check, Engine, Report
from dockerflow.engine._scheduler import MAX_LATEST

E011 = health.ERROR_CHECK_TIMEOUT
DOWN = "test.E001"
TIMEOUT = 0.5
#: A heartbeat that answered "at once": far under the check's timeout, whatever the load.
AT_ONCE = TIMEOUT / 2
#: Generous bound for what must happen "soon" on a loaded machine.
PATIENCE = 15.0


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


# -- heartbeats joining a run in progress: stale-while-revalidate -------------------------------

#: A timeout nothing waits for when the test goes as it should (every gate is opened first).
LONG = 10.0


class Gated:
    """A check whose first run passes at once and whose later runs tell the test they began
    (``entered``), then wait for ``release`` and fail: a dependency that just went down."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def check(self) -> list[Any]:
        self.calls += 1
        if self.calls == 1:
            return []
        self.entered.set()
        self.release.wait(PATIENCE)
        return [Error(f"down (run {self.calls})", id=DOWN)]

    async def check_async(self) -> list[Any]:
        self.calls += 1
        if self.calls == 1:
            return []
        self.entered.set()
        while not self.release.is_set():
            await asyncio.sleep(0.005)
        return [Error(f"down (run {self.calls})", id=DOWN)]


def in_thread(engine: Engine, check: Check) -> tuple[threading.Thread, list[Report]]:
    """Run a heartbeat in a thread of its own; its report lands in the list."""
    out: list[Report] = []
    thread = threading.Thread(target=lambda: out.append(engine.run_sync([check])))
    thread.start()
    return thread, out


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_joiners_answer_at_once_with_the_latest_result_while_the_starter_waits(
    engine: Engine, kind: str
) -> None:
    gated = Gated()
    check = Check("db", gated.check if kind == "sync" else gated.check_async, timeout=LONG)
    before = engine.run_sync([check])
    assert before.status == "ok"

    starter, started = in_thread(engine, check)
    try:
        assert gated.entered.wait(PATIENCE)
        for _ in range(5):
            # Joiners: answered with the run before, while the starter still waits for its own.
            assert engine.run_sync([check]).results["db"] == before.results["db"]
        assert starter.is_alive()
        assert gated.calls == 2  # nobody started another run
    finally:
        gated.release.set()
        starter.join(PATIENCE)
    # The starter reports the run it started.
    assert started[0].results["db"].messages == {DOWN: "down (run 2)"}


def test_an_async_callers_joiners_answer_at_once_while_the_starter_waits(engine: Engine) -> None:
    gated = Gated()
    check = Check("db", gated.check_async, timeout=LONG)

    async def heartbeats() -> tuple[Report, list[Report], Report]:
        before = await engine.run([check])
        starter = asyncio.create_task(engine.run([check]))
        while not gated.entered.is_set():
            await asyncio.sleep(0.005)
        joiners = [await engine.run([check]) for _ in range(5)]
        assert not starter.done()
        gated.release.set()
        return before, joiners, await starter

    before, joiners, started = asyncio.run(heartbeats())
    assert before.status == "ok"
    assert all(r.results["db"] == before.results["db"] for r in joiners)
    assert ids(started, "db") == [DOWN]
    assert gated.calls == 2


def test_a_joiner_whose_latest_result_is_older_than_the_timeout_waits(engine: Engine) -> None:
    """The latest result is served only if its run started within the check's timeout."""
    timeout = 0.5
    calls: list[int] = []
    entered = threading.Event()

    def check_func() -> list[Any]:
        calls.append(1)
        if len(calls) == 1:
            return []
        entered.set()
        # A slow failure within the timeout (the dependency's own bound): the joiner waits
        # for it; if the machine is so loaded that the joiner asks only once it has ended, it
        # is answered with this failure at once (failing slowly). Never with the ok before.
        time.sleep(0.8 * timeout)
        return [Error("down", id=DOWN)]

    check = Check("db", check_func, timeout=timeout)
    before = engine.run_sync([check])
    assert before.status == "ok"
    # Let the clock pass the window (no thread is raced: nothing runs meanwhile).
    time.sleep(timeout + 0.05)
    starter, started = in_thread(engine, check)
    try:
        assert entered.wait(PATIENCE)
        joiner = engine.run_sync([check])
    finally:
        starter.join(PATIENCE)
    assert ids(joiner, "db") == [DOWN]
    assert joiner.results["db"] == started[0].results["db"]  # the run it joined


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_first_failing_runs_deadline_still_bounds_detection(engine: Engine, kind: str) -> None:
    """Joiners are served the ok from before only until the run they join is past its
    deadline; from then on every heartbeat reports the failure (``E011``)."""
    timeout = 0.5
    calls: list[int] = []
    entered = threading.Event()
    forever = threading.Event()

    def hangs() -> None:
        calls.append(1)
        if len(calls) > 1:
            entered.set()
            forever.wait()

    async def hangs_async() -> None:
        calls.append(1)
        if len(calls) > 1:
            entered.set()
            await asyncio.sleep(PATIENCE)  # cancelled at the timeout

    check = Check("db", hangs if kind == "sync" else hangs_async, timeout=timeout)
    try:
        before = engine.run_sync([check])
        assert before.status == "ok"
        starter, started = in_thread(engine, check)
        assert entered.wait(PATIENCE)
        seen: list[tuple[float, Report]] = []
        while starter.is_alive():
            seen.append((time.monotonic(), engine.run_sync([check])))
            time.sleep(0.01)
        starter.join(PATIENCE)
        starter_answered = time.monotonic()
        after = [engine.run_sync([check]) for _ in range(5)]
        assert ids(started[0], "db") == [E011]  # at the first failing run's deadline
        for asked, report in seen:
            if report.status == "ok":
                assert report.results["db"] == before.results["db"]
                assert asked < starter_answered
            else:
                assert ids(report, "db") == [E011]
        assert all(ids(report, "db") == [E011] for report in after)
    finally:
        forever.set()


def test_no_ok_is_served_from_a_run_that_overran_its_timeout(engine: Engine) -> None:
    """A run that passes after its timeout is ``E011``; the ok from before it is not served
    in its place either, while the retry after it is in progress."""
    timeout = 0.3
    calls: list[int] = []
    late = threading.Event()
    retrying = threading.Event()
    recovered = threading.Event()

    def check_func() -> None:
        calls.append(1)
        if len(calls) == 2:
            late.wait(PATIENCE)  # passes, after its timeout
        elif len(calls) > 2:
            retrying.set()
            recovered.wait(PATIENCE)

    check = Check("db", check_func, timeout=timeout, restart_after=60)
    try:
        assert engine.run_sync([check]).status == "ok"
        assert ids(engine.run_sync([check]), "db") == [E011]  # waited for the second run
        late.set()
        assert retrying.wait(PATIENCE)  # the late run ended; its retry is in progress
        for _ in range(5):
            report = engine.run_sync([check])
            assert ids(report, "db") == [E011]
            assert "it took" in report.results["db"].messages[E011]
    finally:
        late.set()
        recovered.set()
    assert recovery(engine, check) < PATIENCE


def test_a_served_result_counts_once_for_flap_damping(engine: Engine) -> None:
    calls: list[int] = []
    entered = threading.Event()
    release = threading.Event()

    def check_func() -> list[Any]:
        calls.append(1)
        if len(calls) > 1:
            entered.set()
            release.wait(PATIENCE)
        return [Error(f"down (run {len(calls)})", id=DOWN)]  # a fast failure, the first time

    check = Check("db", check_func, timeout=LONG, failure_threshold=3)
    first = engine.run_sync([check])
    held = first.results["db"].messages[health.INFO_FAILURE_DAMPED]
    assert held.startswith("Failing for 1 run(s)")
    starter, started = in_thread(engine, check)
    try:
        assert entered.wait(PATIENCE)
        for _ in range(5):
            joiner = engine.run_sync([check]).results["db"].messages
            assert joiner[health.INFO_FAILURE_DAMPED].startswith("Failing for 1 run(s)")
            assert "down (run 1)" in joiner[health.INFO_FAILURE_DAMPED]
    finally:
        release.set()
        starter.join(PATIENCE)
    held = started[0].results["db"].messages[health.INFO_FAILURE_DAMPED]
    assert held.startswith("Failing for 2 run(s)")


def test_the_latest_runs_of_check_functions_made_per_call_are_let_go(engine: Engine) -> None:
    """A check function made per call (``run_checks`` with a lambda) leaves its latest run
    behind; past ``MAX_LATEST`` of them, those too old to be served are let go."""
    for _ in range(MAX_LATEST + 50):
        engine.run_sync([Check("made_per_call", lambda: None, timeout=0.01)])
    assert len(engine.scheduler._latest) <= MAX_LATEST


def test_heartbeats_asking_for_check_functions_made_per_call_are_let_go(engine: Engine) -> None:
    """When each heartbeat was asked for (what background retries go by) is kept per check
    function: past its bound, the functions not asked for within their retry window are let
    go, and those asked for recently are kept."""
    kept = Check("kept", lambda: None, timeout=0.01)
    engine.run_sync([kept])
    # Asked for "long ago": more than the retry window (30 s at this timeout) before now.
    key = next(iter(engine.scheduler._asked))
    engine.scheduler._asked[key] -= 3600
    recent = Check("recent", lambda: None, timeout=0.01)
    engine.run_sync([recent])
    for _ in range(3 * MAX_LATEST):
        engine.run_sync([Check("made_per_call", lambda: None, timeout=0.01)])
        engine.run_sync([recent])
    asked = engine.scheduler._asked
    assert len(asked) <= 2 * MAX_LATEST + 1
    assert key not in asked
    assert any(k[0] == id(recent.func) for k in asked)


@pytest.mark.parametrize("closed", [False, True], ids=["open", "closed"])
def test_a_closed_engine_retries_nothing_in_the_background(closed: bool) -> None:
    """A check failing slowly is retried in the background, but not once its engine is closed:
    a retry of an async check would start the stopped loop thread again, and go on running
    (and logging) for the retry window after the engine's owner is gone."""
    from dockerflow.engine._runs import RUNS

    engine = Engine()
    first_ends, retried, retry_ends = threading.Event(), threading.Event(), threading.Event()
    calls: list[int] = []

    def slow() -> None:
        calls.append(1)
        if len(calls) == 1:
            first_ends.wait(PATIENCE)  # overruns its timeout: failing slowly
        else:
            retried.set()
            retry_ends.wait(PATIENCE)  # in progress while the test looks for it

    check = Check("slow", slow, timeout=0.1)
    try:
        assert list(engine.run_sync([check]).details["slow"]["messages"]) == [E011]
        with RUNS.lock:
            first = RUNS.newest(check, 0.1, None, engine.scheduler)
        assert first is not None
        if closed:
            engine.close()
        first_ends.set()
        deadline = time.monotonic() + PATIENCE
        while not first.ended and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.ended
        # A retry is counted in before the run it replaces is marked ended: no race here.
        with RUNS.lock:
            retry = RUNS.newest(check, 0.1, None, engine.scheduler)
        if closed:
            assert retry is None
            assert not engine.bridge.running
        else:
            assert retry is not None
            assert retried.wait(PATIENCE)
    finally:
        first_ends.set()
        retry_ends.set()
        engine.close()


def test_a_closed_engines_async_retry_does_not_start_its_loop_again() -> None:
    """The case that showed it: an async check that blocks the loop past its timeout ends
    after close(); its background retry started the loop thread again."""
    engine = Engine()
    blocking, unblock = threading.Event(), threading.Event()
    calls: list[int] = []

    async def blocks() -> None:
        calls.append(1)
        blocking.set()
        unblock.wait(PATIENCE)  # never awaits: holds the loop past the timeout

    try:
        report = engine.run_sync([Check("blocks", blocks, timeout=0.1)])
        assert list(report.details["blocks"]["messages"]) == [E011]
        assert blocking.wait(PATIENCE)
        thread = engine.bridge.thread
        assert thread is not None
        closer = threading.Thread(target=engine.close)
        closer.start()  # waits (bounded) for the blocked loop thread
        deadline = time.monotonic() + PATIENCE
        while engine.bridge.running and time.monotonic() < deadline:
            time.sleep(0.01)
        unblock.set()
        closer.join(PATIENCE)
        thread.join(PATIENCE)
        assert not thread.is_alive()
        assert not engine.bridge.running
        assert calls == [1]
    finally:
        unblock.set()
        engine.close()
