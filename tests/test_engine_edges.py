"""Where the engine's policies meet: a dependency that is down must never read as healthy, and a
check must never silently stop running (issue 15).

Each test drives the engine the way a heartbeat does and asserts on what a probe would see.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.to_thread
import pytest
from flask import Flask
from test_engine import threads_inside

from dockerflow import health
from dockerflow.checks import Error, clear_checks, get_checks, run_checks
from dockerflow.engine import Check, Engine, Report
from dockerflow.flask import Dockerflow

E011 = health.ERROR_CHECK_TIMEOUT
E012 = health.ERROR_CHECK_EXCEPTION


def ids(report: Report, name: str) -> list[str]:
    return list(report.results[name].messages)


def text(report: Report, name: str) -> str:
    return " ".join(report.results[name].messages.values())


def heartbeats_in_threads(engine: Engine, checks: list[Check], count: int) -> list[Report]:
    reports: list[Report] = []
    lock = threading.Lock()

    def heartbeat() -> None:
        report = engine.run_sync(checks)
        with lock:
            reports.append(report)

    threads = [threading.Thread(target=heartbeat) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return reports


# --- 1. background refresh with flap damping ---------------------------------------------------


def test_a_refreshed_check_failing_on_every_run_is_reported_after_the_threshold(
    engine: Engine,
) -> None:
    runs: list[int] = []

    def always_down() -> list[Error]:
        runs.append(1)
        return [Error("down", id="x.E1")]

    # Heartbeats come more often than refreshes, as probes do.
    check = Check("down", always_down, interval=0.2, failure_threshold=2, timeout=1.0)
    statuses = [engine.run_sync([check]).checks["down"]]
    deadline = time.monotonic() + 10
    while statuses[-1] != "error" and time.monotonic() < deadline:
        statuses.append(engine.run_sync([check]).checks["down"])
        time.sleep(0.01)
    assert statuses[0] == "info"  # the first failing run is held back
    assert statuses[-1] == "error", (len(runs), statuses[-5:])
    assert engine.run_sync([check]).status == "error"


def test_a_refreshed_check_is_reported_failing_while_its_run_hangs(
    engine: Engine, release: threading.Event
) -> None:
    # A refresh whose run never returns must not keep serving the last good result.
    calls: list[int] = []

    def hangs_after_first() -> None:
        calls.append(1)
        if len(calls) > 1:
            release.wait(30)

    check = Check("hangs", hangs_after_first, interval=0.02, timeout=0.2, failure_threshold=2)
    assert engine.run_sync([check]).checks["hangs"] == "ok"
    deadline = time.monotonic() + 10
    status = "ok"
    while status != "error" and time.monotonic() < deadline:
        status = engine.run_sync([check]).checks["hangs"]
        time.sleep(0.02)
    assert status == "error"


# --- 2. a worker thread that cannot start ------------------------------------------------------


def test_a_worker_thread_that_cannot_start_is_that_checks_error_and_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = Engine()
    calls: list[int] = []

    def counted() -> None:
        calls.append(1)

    real_start = threading.Thread.start

    def refuse(self: threading.Thread) -> None:
        if self.name.startswith("dockerflow-worker"):
            raise RuntimeError("can't start new thread")
        real_start(self)

    check = Check("counted", counted, timeout=1.0)
    try:
        monkeypatch.setattr(threading.Thread, "start", refuse)
        for _ in range(3):
            report = engine.run_sync([check])
            assert report.checks["counted"] == "error"
            assert ids(report, "counted") == [E012]
            assert "can't start new thread" in text(report, "counted")
        assert engine.stuck_runs() == {}
        monkeypatch.undo()
        report = engine.run_sync([check])
        assert report.checks["counted"] == "ok"
        assert calls == [1]
    finally:
        monkeypatch.undo()
        engine.close()


# --- 4. a check that raises a cancellation itself ----------------------------------------------


async def cancels_itself() -> None:
    raise asyncio.CancelledError()


async def healthy_after_a_moment() -> None:
    await anyio.sleep(0.05)


def slow_clean_up(cleaned_up: anyio.Event) -> Callable[[], Awaitable[None]]:
    """A check that hangs and, once cancelled, cleans up (shielded) until ``cleaned_up`` is set
    or for 10 s: a heartbeat that waited for the clean-up would take that long."""

    async def check() -> None:
        try:
            await anyio.sleep(30)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await cleaned_up.wait()

    return check


def test_an_async_check_raising_cancelled_error_is_its_own_error(engine: Engine) -> None:
    checks = [Check("cancels", cancels_itself), Check("healthy", healthy_after_a_moment)]
    report = engine.run_sync(checks)
    assert ids(report, "cancels") == [E012]
    assert report.checks["healthy"] == "ok"
    loop_thread = engine.bridge.thread
    assert loop_thread is not None and loop_thread.is_alive()
    # The loop lives on: the next heartbeat runs on the same one.
    again = engine.run_sync(checks)
    assert again.checks["healthy"] == "ok"
    assert engine.bridge.thread is loop_thread


@pytest.mark.anyio
async def test_an_async_caller_gets_a_report_when_a_check_cancels_itself(engine: Engine) -> None:
    checks = [Check("cancels", cancels_itself), Check("healthy", healthy_after_a_moment)]
    report = await engine.run(checks)
    assert ids(report, "cancels") == [E012]
    assert report.checks["healthy"] == "ok"
    report = await engine.run(checks)
    assert report.checks["healthy"] == "ok"


def test_a_sync_check_raising_base_exceptions_is_its_own_error(engine: Engine) -> None:
    def exits() -> None:
        raise SystemExit(3)

    def interrupted() -> None:
        raise KeyboardInterrupt

    report = engine.run_sync([Check("exits", exits), Check("interrupted", interrupted)])
    assert ids(report, "exits") == [E012]
    assert ids(report, "interrupted") == [E012]


# --- 5. and 6. a shared run that overruns its timeout -----------------------------------------


def test_a_run_that_overran_its_timeout_is_a_timeout_for_every_heartbeat_that_joined_it(
    engine: Engine,
) -> None:
    entered = threading.Event()
    proceed = threading.Event()

    def slow() -> None:
        entered.set()
        proceed.wait(10)

    check = Check("slow", slow, timeout=0.5)
    first: list[Report] = []
    late: list[Report] = []
    leader = threading.Thread(target=lambda: first.append(engine.run_sync([check])))
    leader.start()
    assert entered.wait(10)
    time.sleep(0.3)  # the second heartbeat joins the run well into its timeout
    joiner = threading.Thread(target=lambda: late.append(engine.run_sync([check])))
    joiner.start()
    leader.join(10)
    proceed.set()  # the run finishes after its timeout, before the joiner's own would end
    joiner.join(10)
    assert ids(first[0], "slow") == [E011]
    assert ids(late[0], "slow") == [E011]


def test_a_run_that_finished_past_its_timeout_is_a_timeout(engine: Engine) -> None:
    # Nothing waits for it; the result seen afterwards (by a refresh, say) must still be E011.
    def slow() -> None:
        time.sleep(0.3)

    check = Check("slow", slow, timeout=0.1, interval=0.01)
    first = engine.run_sync([check])
    assert ids(first, "slow") == [E011]
    time.sleep(0.5)  # the run ended (late) and its result was stored
    assert ids(engine.run_sync([check]), "slow") == [E011]


def test_damping_counts_one_timed_out_run_once_however_many_heartbeats_share_it(
    engine: Engine, release: threading.Event
) -> None:
    def hangs() -> None:
        release.wait(30)

    check = Check("hangs", hangs, timeout=0.3, failure_threshold=3)
    reports = heartbeats_in_threads(engine, [check], 3)
    assert [report.checks["hangs"] for report in reports] == ["info"] * 3


def test_damping_reports_a_hung_dependency_once_it_overran_threshold_timeouts(
    engine: Engine, release: threading.Event
) -> None:
    # One run stuck for many timeouts counts as that many failing runs: damping must not hold
    # a hung dependency back for ever because no new run can start beside it.
    def hangs() -> None:
        release.wait(30)

    check = Check("hangs", hangs, timeout=0.1, failure_threshold=3, restart_after=60)
    statuses = []
    deadline = time.monotonic() + 10
    while (not statuses or statuses[-1] != "error") and time.monotonic() < deadline:
        statuses.append(engine.run_sync([check]).checks["hangs"])
        time.sleep(0.05)
    assert statuses[0] == "info"
    assert statuses[-1] == "error"


# --- 7. and 8. run sharing and the thread bound, whichever API and however many apps ----------


def test_checks_put_into_get_checks_by_hand_share_runs_and_the_thread_bound(
    release: threading.Event,
) -> None:
    def hung_by_hand() -> None:
        release.wait(30)

    clear_checks()
    get_checks()["hung_by_hand"] = hung_by_hand
    try:
        results = []
        lock = threading.Lock()
        seen = [0]

        def heartbeat() -> None:
            result = run_checks(list(get_checks().items()))
            with lock:
                results.append(result)

        threads = [threading.Thread(target=heartbeat) for _ in range(12)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            seen[0] = max(seen[0], threads_inside(hung_by_hand.__code__))
            time.sleep(0.01)
        assert len(results) == 12
        assert all(result.statuses["hung_by_hand"] == "error" for result in results)
        assert 1 <= seen[0] <= 2
    finally:
        clear_checks()


def test_one_extension_on_two_apps_holds_at_most_two_threads_per_check(
    release: threading.Event,
) -> None:
    ext = Dockerflow()

    @ext.check(timeout=0.05, restart_after=0.1)
    def hung() -> None:
        release.wait(30)

    apps = [Flask("one"), Flask("two")]
    for app in apps:
        ext.init_app(app)
    clients = [app.test_client() for app in apps]
    most = 0
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            for client in clients:
                assert client.get("/__heartbeat__").status_code == 500
                most = max(most, threads_inside(hung.__code__))
    finally:
        release.set()
        ext.close()
    assert 1 <= most <= 2


# --- 9. async callers --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_callers_waiting_on_sync_runs_hold_no_worker_thread_of_the_app(
    engine: Engine, release: threading.Event
) -> None:
    entered = threading.Event()

    def hangs() -> None:
        entered.set()
        release.wait(30)

    # The callers wait for as long as the test looks (cancelled below): a worker thread they
    # held back would keep the app's own to_thread call waiting for the check's 30 s.
    check = Check("hangs", hangs, timeout=30)
    limiter = anyio.to_thread.current_default_thread_limiter()
    borrowed: list[float] = []
    async with anyio.create_task_group() as task_group:
        for _ in range(60):
            task_group.start_soon(engine.run, [check])
        while not entered.is_set():
            await anyio.sleep(0.01)
        await anyio.wait_all_tasks_blocked()  # every caller waits on the run
        borrowed.append(limiter.borrowed_tokens)
        started = time.monotonic()
        with anyio.fail_after(10):
            await anyio.to_thread.run_sync(lambda: None)
        borrowed.append(time.monotonic() - started)
        task_group.cancel_scope.cancel()
    assert borrowed[0] == 0
    assert borrowed[1] < 5


@pytest.mark.anyio
async def test_an_async_caller_answers_at_its_deadline_whatever_the_checks_clean_up(
    engine: Engine,
) -> None:
    cleaned_up = anyio.Event()
    started = time.monotonic()
    report = await engine.run([Check("slow", slow_clean_up(cleaned_up), timeout=0.3)])
    elapsed = time.monotonic() - started
    cleaned_up.set()
    assert ids(report, "slow") == [E011]
    # Timeout 0.3 + grace 0.1, with room for a loaded machine; the clean-up lasts until the
    # heartbeat has answered (10 s at most).
    assert elapsed < 0.3 + 2.0


# --- 10. closing ------------------------------------------------------------------------------


def test_close_is_bounded_while_a_check_blocks_the_loop(release: threading.Event) -> None:
    app = Flask("closing")
    ext = Dockerflow(app)

    @ext.check(timeout=0.1)
    async def blocks_the_loop() -> None:
        release.wait(20)  # a sync call in an async def: the loop stops

    assert app.test_client().get("/__heartbeat__").status_code == 500
    started = time.monotonic()
    ext.close(timeout=0.5)
    elapsed = time.monotonic() - started
    release.set()
    assert elapsed < 3.0


# --- 11. fork while a lock is held -------------------------------------------------------------


@pytest.mark.parametrize("lock", ["damper", "cache"])
def test_a_fork_while_an_engine_lock_is_held_leaves_the_child_working(lock: str) -> None:
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        from dockerflow.checks import Error
        from dockerflow.engine import Check, Engine

        engine = Engine(cache_ttl=5, cache_failed_ttl=5)
        check = Check("down", lambda: [Error("down", id="x.E1")], failure_threshold=2)
        engine.run_sync([check])
        held = {{"damper": engine.damper, "cache": engine.cache}}[{lock!r}]._lock
        held.acquire()
        pid = os.fork()
        if pid == 0:
            signal.alarm(10)  # a blocked child is killed, and fails the test
            engine.cache.clear()
            engine.run_sync([check])
            os._exit(0)
        held.release()
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


# --- 12. messages that say what happened -------------------------------------------------------


def test_a_run_cancelled_when_its_loop_stops_says_so() -> None:
    engine = Engine()
    entered = threading.Event()

    async def waits() -> None:
        entered.set()
        await anyio.sleep(30)

    check = Check("waits", waits, timeout=5)
    reports: list[Report] = []
    heartbeat = threading.Thread(target=lambda: reports.append(engine.run_sync([check])))
    heartbeat.start()
    assert entered.wait(10)
    engine.bridge.stop()  # the loop shuts down under the run
    heartbeat.join(10)
    assert ids(reports[0], "waits") == [E012]
    message = text(reports[0], "waits")
    assert "cancelled" in message and "timed out" not in message
    engine.close()


def test_the_engine_keeps_no_event_loop_of_an_async_caller_alive(engine: Engine) -> None:
    import gc
    import weakref

    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def heartbeat() -> Report:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        return await engine.run([Check("fine", healthy_after_a_moment)])

    for _ in range(3):
        assert asyncio.run(heartbeat()).status == "ok"
    gc.collect()
    assert [ref() for ref in loops] == [None, None, None]


def test_an_async_caller_on_trio_leaves_at_its_deadline(engine: Engine) -> None:
    import trio

    async def heartbeat() -> tuple[Report, float]:
        cleaned_up = anyio.Event()
        started = time.monotonic()
        report = await engine.run(
            [
                Check("slow", slow_clean_up(cleaned_up), timeout=0.3),
                Check("fine", healthy_after_a_moment),
            ]
        )
        elapsed = time.monotonic() - started
        cleaned_up.set()
        return report, elapsed

    report, elapsed = trio.run(heartbeat)
    assert ids(report, "slow") == [E011]
    assert report.checks["fine"] == "ok"
    assert elapsed < 0.3 + 2.0


# --- policies together -------------------------------------------------------------------------


def test_a_held_back_failure_is_cached_like_a_failure_not_like_a_pass() -> None:
    # A passing report may be served for a long TTL; one with a failure held back by damping
    # must not be, or the next failing runs (which would report it) never happen meanwhile.
    engine = Engine(cache_ttl=30, cache_failed_ttl=0)
    runs: list[int] = []

    def down() -> list[Error]:
        runs.append(1)
        return [Error("down", id="x.E1")]

    check = Check("down", down, failure_threshold=2)
    try:
        assert engine.run_sync([check]).checks["down"] == "info"
        assert engine.run_sync([check]).checks["down"] == "error"
        assert len(runs) == 2
    finally:
        engine.close()


def test_a_failing_noncritical_check_is_cached_like_a_failure() -> None:
    engine = Engine(cache_ttl=30, cache_failed_ttl=0)
    state = {"up": False}

    def flaky() -> list[Error]:
        return [] if state["up"] else [Error("down", id="x.E1")]

    check = Check("flaky", flaky, critical=False)
    try:
        assert engine.run_sync([check]).results["flaky"].raw_level == 40
        state["up"] = True
        # Recovery shows at the next heartbeat, not 30 s later.
        assert engine.run_sync([check]).results["flaky"].raw_level == 0
    finally:
        engine.close()


def test_a_slow_sync_check_does_not_hold_up_the_quick_ones_started_with_it(
    engine: Engine,
) -> None:
    # Sync runs of one heartbeat start together in one thread; the ones not begun soon get
    # threads of their own. If the quick checks queued behind the slow one, it would wait its
    # five seconds and fail.
    quick_ran = threading.Barrier(6)

    def slow() -> list[Error]:
        try:
            quick_ran.wait(5)
        except threading.BrokenBarrierError:
            return [Error("the quick checks waited behind this one", id="x.E1")]
        return []

    def quick() -> None:
        quick_ran.wait(5)

    checks = [Check("slow", slow, timeout=10)] + [
        Check(f"quick{i}", functools.partial(quick), timeout=10) for i in range(5)
    ]
    report = engine.run_sync(checks)
    assert report.status == "ok", report.details


def test_a_fork_while_the_startup_grace_lock_is_held_leaves_the_child_working() -> None:
    code = textwrap.dedent(
        """
        import os, signal, sys
        from dockerflow.checks import Error
        from dockerflow.engine import Check, Engine
        from dockerflow.engine._startup import StartupGrace

        engine = Engine()
        report = engine.run_sync([Check("down", lambda: [Error("down", id="x.E1")])])
        grace = StartupGrace(30)
        grace._lock.acquire()
        pid = os.fork()
        if pid == 0:
            signal.alarm(10)  # a blocked child is killed, and fails the test
            grace.apply(report, 40, ["down"])
            os._exit(0)
        grace._lock.release()
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
