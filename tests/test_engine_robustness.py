"""Checks that misbehave in ways that must not take the engine (or its loop) down."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import anyio
import pytest
from test_engine import threads_inside

from dockerflow import health
from dockerflow.checks import Error
from dockerflow.engine import (
    Check,
    CheckRegistrationError,
    CheckResult,
    ConfigurationError,
    Engine,
    LoopThread,
)
from dockerflow.engine._bridge import LoopStoppingError
from dockerflow.engine._refresh import Refresher
from dockerflow.engine._runs import Run


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("cannot print me")


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("cannot repr me")


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = Engine(timeout=1.0)
    yield engine
    engine.close()


def raise_unprintable() -> None:
    raise Unprintable


def test_unprintable_exception_and_unrepresentable_result(engine: Engine) -> None:
    report = engine.run_sync([Check("raises", raise_unprintable), Check("bad", BadRepr)])
    assert list(report.details["raises"]["messages"]) == [health.ERROR_CHECK_EXCEPTION]
    assert list(report.details["bad"]["messages"]) == [health.ERROR_CHECK_BAD_RESULT]


def test_a_failing_background_check_does_not_stop_the_loop(engine: Engine) -> None:
    async def explodes() -> None:
        raise Unprintable

    background = Check("explodes", explodes, interval=0.05)
    for _ in range(3):
        report = engine.run_sync([background])
        assert list(report.details["explodes"]["messages"]) == [health.ERROR_CHECK_EXCEPTION]
        time.sleep(0.1)

    async def fine() -> None:
        return None

    assert engine.run_sync([Check("fine", fine)]).status == "ok"


def test_async_check_that_blocks_the_loop_is_reported_as_timed_out(engine: Engine) -> None:
    slept = threading.Event()

    async def blocks() -> None:
        time.sleep(0.4)  # never awaits: the timeout cannot fire while it runs
        slept.set()

    report = engine.run_sync([Check("blocks", blocks, timeout=0.1)])
    assert list(report.details["blocks"]["messages"]) == [health.ERROR_CHECK_TIMEOUT]
    # The step's end (and its "blocked the event loop" warning) belongs to this test.
    assert slept.wait(10)
    deadline = time.monotonic() + 10
    while engine.stuck_runs() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not engine.stuck_runs()


def test_stop_does_not_wait_for_a_blocked_loop() -> None:
    bridge = LoopThread()
    release = threading.Event()
    blocking = threading.Event()

    async def block() -> None:
        blocking.set()
        release.wait(10)

    bridge.submit(block)
    try:
        assert blocking.wait(10)
        started = time.perf_counter()
        bridge.stop(timeout=0.3)
        # Not the 10 s of the blocked loop; room for a loaded machine.
        assert time.perf_counter() - started < 0.3 + 2.0
    finally:
        release.set()


def test_interpreter_exit_is_not_held_by_a_blocked_loop() -> None:
    code = textwrap.dedent(
        """
        import threading, time
        from dockerflow.engine import LoopThread

        blocking = threading.Event()

        async def block():
            blocking.set()
            time.sleep(60)

        bridge = LoopThread()
        bridge.submit(block)
        assert blocking.wait(10)
        """
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    assert time.perf_counter() - started < 10


def test_reset_ends_the_old_refresh_tasks(engine: Engine) -> None:
    runs: list[float] = []

    async def counted() -> None:
        runs.append(time.monotonic())

    check = Check("counted", counted, interval=0.1)
    for _ in range(4):
        engine.run_sync([check])
        engine.reset()
    engine.run_sync([check])
    time.sleep(0.2)
    before = len(runs)
    time.sleep(1.0)
    assert len(runs) - before <= 13  # one task (about 10 runs a second), not five


def test_damping_counts_a_shared_run_once(engine: Engine) -> None:
    release = threading.Event()

    def slow_failure() -> list[Error]:
        release.wait(5)
        return [Error("down", id="x.E1")]

    damped = Check("damped", slow_failure, failure_threshold=3)
    others = [Check(f"other{i}", lambda: None) for i in range(3)]
    reports = []

    def heartbeat(extra: Check) -> None:
        reports.append(engine.run_sync([damped, extra]))

    threads = [threading.Thread(target=heartbeat, args=(other,)) for other in others]
    for thread in threads:
        thread.start()
    # The run fails once all three heartbeats wait on it, however late their threads start.
    deadline = time.monotonic() + 5
    while threads_inside(Engine.run_sync.__code__) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for thread in threads:
        thread.join()
    # Three heartbeats shared one failing run: that is one failure, not three.
    assert [report.checks["damped"] for report in reports] == ["info"] * 3


def test_def_returning_a_coroutine_shared_by_two_heartbeats(engine: Engine) -> None:
    async def nap() -> list[Error]:
        await anyio.sleep(0.2)
        return [Error("napped", id="x.E1")]

    shared = Check("shared", lambda: nap())
    reports = []

    def heartbeat(extra: Check) -> None:
        reports.append(engine.run_sync([shared, extra]))

    async def on_loop() -> None:
        return None

    threads = [
        threading.Thread(target=heartbeat, args=(Check("plain", lambda: None),)),
        threading.Thread(target=heartbeat, args=(Check("async", on_loop),)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [list(r.details["shared"]["messages"]) for r in reports] == [["x.E1"], ["x.E1"]]


@pytest.mark.parametrize("seconds", [1e10, 86401, float("inf")])
def test_absurd_durations_are_refused(seconds: float) -> None:
    with pytest.raises(CheckRegistrationError, match="at most"):
        Check("x", lambda: None, timeout=seconds)
    with pytest.raises(ConfigurationError):
        Engine(timeout=seconds)
    with pytest.raises(ConfigurationError):
        Engine(cache_ttl=seconds)


def test_close_leaves_a_shared_loop_running() -> None:
    bridge = LoopThread()
    first, second = Engine(bridge=bridge), Engine(bridge=bridge)

    async def on_loop() -> None:
        await asyncio.sleep(0)

    try:
        assert first.run_sync([Check("a", on_loop)]).status == "ok"
        first.close()
        assert bridge.running
        assert second.run_sync([Check("b", on_loop)]).status == "ok"
    finally:
        bridge.stop()


def test_work_handed_to_the_loop_by_its_own_task_while_it_stops_does_not_start_it_again() -> None:
    # A background refresh whose sleep ends just as stop() begins hands the loop a run: that
    # must not start a new loop thread, which would leave a loop running after stop().
    bridge = LoopThread()
    tried: list[BaseException | None] = []
    on_loop = threading.Event()
    ran: list[int] = []

    async def more() -> None:
        ran.append(1)

    async def hands_over_when_cancelled() -> None:
        on_loop.set()
        try:
            await anyio.sleep_forever()
        finally:
            try:
                bridge.submit(more)
            except RuntimeError as exc:
                tried.append(exc)
            else:
                tried.append(None)

    bridge.submit(hands_over_when_cancelled)
    assert on_loop.wait(10)
    old = bridge.thread
    bridge.stop()
    assert old is not None and not old.is_alive()
    assert len(tried) == 1 and isinstance(tried[0], LoopStoppingError)
    assert not bridge.running  # no new loop was started for it
    assert ran == []
    # Used again from outside, the loop starts as before.
    assert bridge.call(anyio.sleep, 0) is None
    assert bridge.running and bridge.thread is not old
    bridge.stop()


def test_a_refresh_whose_run_the_stopping_loop_refused_ends_and_keeps_no_result() -> None:
    # What a refresh task does when the run it starts is refused with LoopStoppingError (the
    # race above, from the refresher's side): it ends, waits for nothing and keeps no result
    # that heartbeats after the engine is used again would report.
    bridge = LoopThread()
    check = Check("refreshed", lambda: None, interval=0.05)
    settled: list[Run | None] = []
    ended = threading.Event()

    def start(check: Check, host: object) -> tuple[Run | None, list[Run]]:
        run = Run(check, 1.0, None, bridge)
        run.error = LoopStoppingError("the dockerflow event loop is stopping")
        run.start_error = True
        run.finished = run.started
        run.ended = True
        ended.set()
        return run, []

    async def settle(
        check: Check, run: Run | None, stuck: list[Run], started: float
    ) -> tuple[CheckResult, object]:
        settled.append(run)
        return CheckResult(check.name, (Error("refused", id="x.E1"),)), object()

    refresher = Refresher(bridge, start, settle)
    try:
        assert refresher.latest(check) is None  # starts the refresh task
        assert ended.wait(10)
        deadline = time.monotonic() + 10
        while refresher.pending(check) is None and time.monotonic() < deadline:
            if check not in {where[0] for where in refresher._tasks}:
                break  # the task ended
            time.sleep(0.01)
        assert settled == []
        assert refresher.pending(check) is None
        assert refresher.latest(check) is None  # nothing kept; a new task starts
    finally:
        bridge.stop()
