"""The checks engine: concurrency, timeouts, stuck threads, single-flight, cache, bridge, fork."""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from types import CodeType
from typing import Any

import anyio
import pytest
import sniffio

from dockerflow import health
from dockerflow.checks import (
    ERROR,
    WARNING,
    CheckMessage,
    ChecksResults,
    Error,
    Info,
    Warning,
    clear_checks,
    get_checks,
    register,
    register_partial,
    run_checks,
    run_checks_async,
)
from dockerflow.checks.registry import registered_checks
from dockerflow.engine import (
    DEFAULT_TIMEOUT,
    Check,
    CheckRegistrationError,
    ConfigurationError,
    Engine,
    LoopThread,
    Report,
)

E011 = health.ERROR_CHECK_TIMEOUT
E012 = health.ERROR_CHECK_EXCEPTION
E013 = health.ERROR_CHECK_BAD_RESULT


def message_ids(report: Report, name: str) -> list[str]:
    return list(report.results[name].messages)


def threads_inside(code: CodeType) -> int:
    """Count the threads whose stack currently runs the function with this code object."""
    count = 0
    for frame in sys._current_frames().values():
        current: Any = frame
        while current is not None:
            if current.f_code is code:
                count += 1
                break
            current = current.f_back
    return count


#: Seconds a heartbeat may take past a check's timeout and still count as answering at the
#: timeout: the hung checks it is told apart from wait 5 s or more, and a machine with every
#: core busy can delay an answer by a good fraction of a second.
PROMPT = 2.0


def ok() -> None:
    return None


# --- concurrency -------------------------------------------------------------------------------


async def async_ok() -> None:
    return None


def sleepers(seconds: float) -> list[Check]:
    def sync_sleep() -> None:
        time.sleep(seconds)

    async def async_sleep() -> None:
        await anyio.sleep(seconds)

    return [Check(f"sync{i}", sync_sleep) for i in range(10)] + [
        Check(f"async{i}", async_sleep) for i in range(10)
    ]


@pytest.mark.anyio
async def test_checks_run_concurrently(engine: Engine) -> None:
    checks = sleepers(0.3)
    started = time.perf_counter()
    report = await engine.run(checks)
    elapsed = time.perf_counter() - started
    assert report.status == "ok"
    assert len(report.checks) == 20
    # One after another would take 6 s: a bound well under it proves they overlapped, and
    # leaves a loaded machine seconds of room.
    assert elapsed < 3.0
    assert all(0.25 < d < 3.0 for d in report.durations.values())


def test_checks_run_concurrently_through_run_sync(engine: Engine) -> None:
    checks = sleepers(0.3)
    started = time.perf_counter()
    report = engine.run_sync(checks)
    assert time.perf_counter() - started < 3.0  # one after another: 6 s
    assert report.checks == {check.name: "ok" for check in checks}


@pytest.mark.anyio
async def test_report_keeps_the_order_of_the_checks(engine: Engine) -> None:
    async def fast() -> None:
        return None

    async def slower() -> None:
        await anyio.sleep(0.05)

    checks = [Check("z", slower), Check("a", fast), Check("m", ok)]
    report = await engine.run(checks)
    assert list(report.checks) == ["z", "a", "m"]


# --- timeouts ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_check_times_out(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    async def hangs() -> None:
        await anyio.sleep(30)

    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="dockerflow.checks.registry"):
        report = await engine.run([Check("hangs", hangs, timeout=0.1), Check("fine", ok)])
    assert time.perf_counter() - started < 0.1 + PROMPT
    assert report.status == "error"
    assert report.checks == {"hangs": "error", "fine": "ok"}
    assert report.details["hangs"]["messages"] == {E011: "Check timed out after 0.1s"}
    logged = [r for r in caplog.records if r.name == "dockerflow.checks.registry"]
    # python-dockerflow's format, "<id>: <msg>"; the check's name in the record's extras.
    assert [(r.getMessage(), r.check) for r in logged] == [  # type: ignore[attr-defined]
        (f"{E011}: Check timed out after 0.1s", "hangs")
    ]


@pytest.mark.anyio
async def test_sync_check_times_out(engine: Engine, release: threading.Event) -> None:
    def hangs() -> None:
        release.wait(10)

    started = time.perf_counter()
    report = await engine.run([Check("hangs", hangs, timeout=0.1)])
    assert time.perf_counter() - started < 0.1 + PROMPT
    assert report.details["hangs"] == {
        "status": "error",
        "level": ERROR,
        "messages": {E011: "Check timed out after 0.1s"},
    }


def test_sync_check_times_out_through_run_sync(engine: Engine, release: threading.Event) -> None:
    def hangs() -> None:
        release.wait(10)

    started = time.perf_counter()
    report = engine.run_sync([Check("hangs", hangs, timeout=0.2), Check("fine", ok)])
    assert time.perf_counter() - started < 0.2 + PROMPT
    assert message_ids(report, "hangs") == [E011]
    assert report.checks["fine"] == "ok"


@pytest.mark.anyio
async def test_per_check_timeout_overrides_engine_default() -> None:
    async def takes_a_while() -> None:
        await anyio.sleep(0.3)

    short_default = Engine(timeout=0.1)
    report = await short_default.run(
        [Check("own", takes_a_while, timeout=2), Check("default", takes_a_while)]
    )
    assert report.checks == {"own": "ok", "default": "error"}
    assert report.details["default"]["messages"] == {E011: "Check timed out after 0.1s"}

    async def hangs() -> None:
        await anyio.sleep(30)

    long_default = Engine(timeout=5)
    started = time.perf_counter()
    report = await long_default.run([Check("own", hangs, timeout=0.05)])
    assert time.perf_counter() - started < 0.05 + PROMPT  # the engine's default is 5 s
    assert report.details["own"]["messages"] == {E011: "Check timed out after 0.05s"}


def test_engine_default_timeout() -> None:
    assert Engine().timeout == DEFAULT_TIMEOUT
    assert Engine(timeout=1).timeout == 1.0


# --- exceptions and bad results ----------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("is_async", [False, True])
async def test_exception_becomes_e012_and_traceback_is_logged(
    engine: Engine, caplog: pytest.LogCaptureFixture, is_async: bool
) -> None:
    def boom() -> None:
        raise ValueError("could not connect with password=hunter2\n" + "x" * 1000)

    async def aboom() -> None:
        boom()

    with caplog.at_level(logging.ERROR, logger="dockerflow.checks.registry"):
        report = await engine.run([Check("boom", aboom if is_async else boom)])

    assert report.status == "error"
    [(message_id, text)] = report.details["boom"]["messages"].items()
    assert message_id == E012
    assert text.startswith("Check raised ValueError: could not connect")
    assert "\n" not in text
    assert len(text) <= 250
    assert "hunter2" not in text

    # Logged once, masked: the message, and the exception as the error and traceback fields.
    [record] = [r for r in caplog.records if r.name == "dockerflow.checks.registry"]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == f"{E012}: {text}"
    assert record.check == "boom"  # type: ignore[attr-defined]
    assert record.exc_info is None
    assert record.error.startswith("ValueError('could not connect with password=***")  # type: ignore[attr-defined]
    assert record.traceback.startswith("Traceback")  # type: ignore[attr-defined]
    assert "in boom" in record.traceback  # type: ignore[attr-defined]
    assert "hunter2" not in record.error + record.traceback  # type: ignore[attr-defined]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "value",
    [42, "all good", [Error("fine", id="x.E1"), "not a message"], {"a": 1}, Error("bare")],
    ids=["int", "str", "list-with-non-message", "dict", "bare-message"],
)
async def test_bad_return_value_becomes_e013(engine: Engine, value: object) -> None:
    def sync_check() -> object:
        return value

    async def async_check() -> object:
        return value

    report = await engine.run([Check("sync", sync_check), Check("async", async_check)])
    for name in ("sync", "async"):
        messages = report.details[name]["messages"]
        assert list(messages) == [E013]
        assert type(value).__name__ in messages[E013]


@pytest.mark.anyio
async def test_none_empty_list_and_tuples_of_messages_are_accepted(engine: Engine) -> None:
    async def returns_tuple() -> tuple[CheckMessage, ...]:
        return (Warning("slow", id="t.W1"), Info("fyi", id="t.I1"))

    report = await engine.run(
        [
            Check("none", ok),
            Check("empty", lambda: []),
            Check("tuple", returns_tuple),
            Check("list", lambda: [Error("down", id="l.E1")]),
        ]
    )
    assert report.checks == {"none": "ok", "empty": "ok", "tuple": "warning", "list": "error"}
    assert report.details["tuple"]["messages"] == {"t.W1": "slow", "t.I1": "fyi"}
    assert report.details["list"]["messages"] == {"l.E1": "down"}


# --- sync / async detection --------------------------------------------------------------------


class AsyncCallable:
    async def __call__(self) -> list[CheckMessage]:
        return [Info("from an object", id="obj.I1")]


class SyncCallable:
    def __init__(self) -> None:
        self.thread: int | None = None

    def __call__(self) -> None:
        self.thread = threading.get_ident()


async def async_with_arg(text: str, level: int = WARNING) -> list[CheckMessage]:
    return [CheckMessage(text, level=level, id="p.1")]


@pytest.mark.anyio
async def test_async_callables_and_partials_are_detected(engine: Engine) -> None:
    obj = Check("obj", AsyncCallable())
    partial = Check("partial", functools.partial(async_with_arg, "from a partial"))
    nested = Check("nested", functools.partial(functools.partial(async_with_arg), "nested"))
    assert obj.is_async and partial.is_async and nested.is_async

    report = await engine.run([obj, partial, nested])
    assert report.details["obj"]["messages"] == {"obj.I1": "from an object"}
    assert report.details["partial"]["messages"] == {"p.1": "from a partial"}
    assert report.details["nested"]["messages"] == {"p.1": "nested"}


@pytest.mark.anyio
async def test_sync_callables_run_in_a_worker_thread(engine: Engine) -> None:
    target = SyncCallable()
    check = Check("obj", target)
    assert not check.is_async
    assert not Check("partial", functools.partial(print, "x")).is_async

    report = await engine.run([check])
    assert report.status == "ok"
    assert target.thread is not None
    assert target.thread != threading.get_ident()  # not on the event loop's thread


@pytest.mark.anyio
async def test_sync_callable_returning_an_awaitable_is_awaited(engine: Engine) -> None:
    check = Check("lazy", lambda: async_with_arg("awaited", ERROR))
    assert not check.is_async
    report = await engine.run([check])
    assert report.details["lazy"]["messages"] == {"p.1": "awaited"}


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "func", "timeout"),
    [
        ("", ok, None),
        (None, ok, None),
        ("x", 42, None),
        ("x", "ok", None),
        ("x", None, None),
        ("x", ok, 0),
        ("x", ok, -1),
        ("x", ok, math.nan),
        ("x", ok, math.inf),
        ("x", ok, "3"),
        ("x", ok, True),
    ],
)
def test_check_validation(name: Any, func: Any, timeout: Any) -> None:
    with pytest.raises(CheckRegistrationError):
        Check(name, func, timeout)


def test_check_accepts_int_and_float_timeouts() -> None:
    assert Check("x", ok, 3).timeout == 3.0
    assert isinstance(Check("x", ok, 3).timeout, float)
    assert Check("x", ok, 0.25).timeout == 0.25
    assert Check("x", ok).timeout is None


def test_checks_compare_by_identity() -> None:
    assert Check("x", ok) != Check("x", ok)
    first = Check("x", ok)
    assert first == first
    assert len({first: 1, Check("x", ok): 2}) == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": math.nan},
        {"timeout": "3"},
        {"timeout": True},
        {"cache_ttl": -1},
        {"cache_ttl": math.nan},
        {"cache_ttl": "1"},
        {"cache_ttl": True},
        {"cache_failed_ttl": -0.5},
        {"fail_level": 0},
        {"fail_level": 35},
    ],
)
def test_engine_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        Engine(**kwargs)
    assert isinstance(info.value, ValueError)


# --- one thread per stuck check, until its restart delay ----------------------------------------


def test_a_stuck_sync_check_holds_one_thread_until_its_restart_delay(engine: Engine) -> None:
    release = threading.Event()
    entered = threading.Event()
    calls: list[int] = []

    def stuck() -> None:
        calls.append(1)
        entered.set()
        release.wait(30)  # set below or at the end of the test, never a real hang

    # Far past the 200 heartbeats below, however slow the machine (the default is 3 x timeout).
    check = Check("stuck", stuck, timeout=0.05, restart_after=60)
    start_threads = threading.active_count()
    try:
        for beat in range(200):
            report = engine.run_sync([check])
            if beat == 0:
                assert entered.wait(5)
            assert report.details["stuck"]["messages"].keys() == {E011}, beat
            assert threads_inside(stuck.__code__) == 1, beat
            assert threading.active_count() <= start_threads + 3, beat
        assert len(calls) == 1
        # Later heartbeats answered at once instead of waiting out the timeout again.
        assert report.durations["stuck"] < 0.05

        release.set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            report = engine.run_sync([check])
            if report.status == "ok":
                break
            time.sleep(0.01)
        assert report.status == "ok"
        assert len(calls) == 2  # once stuck, once again after its thread returned
        assert threads_inside(stuck.__code__) == 0
    finally:
        release.set()


def test_stuck_check_does_not_block_the_other_checks(
    engine: Engine, release: threading.Event
) -> None:
    def stuck() -> None:
        release.wait(10)

    checks = [Check("stuck", stuck, timeout=0.05, restart_after=60), Check("fine", ok)]
    for _ in range(5):
        report = engine.run_sync(checks)
        assert report.checks == {"stuck": "error", "fine": "ok"}
    assert threads_inside(stuck.__code__) == 1


# --- single-flight -----------------------------------------------------------------------------


def test_single_flight_across_threads(engine: Engine) -> None:
    lock = threading.Lock()
    calls = 0
    go_on = threading.Event()

    def slow() -> None:
        nonlocal calls
        with lock:
            calls += 1
        go_on.wait(30)

    # The run lasts until every caller is waiting in run_sync, however long the threads take to
    # get there on a loaded machine (a fixed nap let late callers start a run of their own).
    check = Check("slow", slow, timeout=30)
    engine.run_sync([])  # start the loop thread first so callers do not straddle its start
    callers = 50
    barrier = threading.Barrier(callers)
    reports: list[Report | None] = [None] * callers

    def caller(index: int) -> None:
        barrier.wait(10)
        reports[index] = engine.run_sync([check])

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while threads_inside(Engine.run_sync.__code__) < callers and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        go_on.set()
    for thread in threads:
        thread.join(10)
    assert all(r is not None for r in reports)
    assert all(r.status == "ok" for r in reports if r is not None)
    assert 1 <= calls <= 2  # two only if a caller was on its way in when the run ended
    assert all(r == reports[0] for r in reports)


def test_single_flight_across_tasks_on_the_bridge_loop(engine: Engine) -> None:
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.2)

    check = Check("slow", slow)

    async def fan_out() -> list[Report]:
        reports: list[Report] = []

        async def one() -> None:
            reports.append(await engine.run([check]))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
        return reports

    reports = engine.bridge.call(fan_out)
    assert calls == 1
    assert len(reports) == 50
    assert all(r == reports[0] for r in reports)


@pytest.mark.anyio
async def test_single_flight_without_cache_runs_again_after_the_flight(engine: Engine) -> None:
    calls = 0

    async def counted() -> None:
        nonlocal calls
        calls += 1

    check = Check("counted", counted)
    first = await engine.run([check])
    second = await engine.run([check])
    assert calls == 2
    assert first is not second


@pytest.mark.anyio
async def test_a_cancelled_caller_leaves_the_run_going_for_the_others(engine: Engine) -> None:
    calls = 0
    started = anyio.Event()
    finish = anyio.Event()

    async def slow() -> None:
        nonlocal calls
        calls += 1
        started.set()
        await finish.wait()

    check = Check("slow", slow)
    reports: list[Report] = []

    async def follower() -> None:
        reports.append(await engine.run([check]))

    with anyio.fail_after(5):  # a stranded follower would wait forever
        async with anyio.create_task_group() as tg:
            async with anyio.create_task_group() as leader_group:
                leader_group.start_soon(engine.run, [check])
                await started.wait()
                tg.start_soon(follower)
                await anyio.wait_all_tasks_blocked()  # the follower waits on the run
                leader_group.cancel_scope.cancel()  # the caller that started the run leaves
            finish.set()
    assert len(reports) == 1
    assert reports[0].status == "ok"
    # The run belongs to the engine, not to the caller that started it: cancelling that
    # caller left it going, and the follower shared it.
    assert calls == 1


# --- cache -------------------------------------------------------------------------------------


def counting_check(
    name: str, messages: list[CheckMessage] | None = None
) -> tuple[Check, list[int]]:
    calls: list[int] = []

    async def counted() -> list[CheckMessage]:
        calls.append(1)
        return list(messages or [])

    return Check(name, counted), calls


def test_cache_is_off_by_default() -> None:
    engine = Engine()
    assert engine.cache_ttl == 0
    assert engine.cache_failed_ttl == 0


@pytest.mark.anyio
async def test_cache_ttl_serves_a_recent_report() -> None:
    # Long enough for two heartbeats in a row on a loaded machine; then waited out.
    engine = Engine(cache_ttl=1.0)
    check, calls = counting_check("cached")
    first = await engine.run([check])
    second = await engine.run([check])
    assert second is first
    assert len(calls) == 1

    await anyio.sleep(1.0)
    third = await engine.run([check])
    assert third is not first
    assert len(calls) == 2


@pytest.mark.anyio
async def test_cache_is_keyed_by_the_checks() -> None:
    engine = Engine(cache_ttl=60)
    check_a, calls_a = counting_check("a")
    check_b, calls_b = counting_check("b")
    both = await engine.run([check_a, check_b])
    only_a = await engine.run([check_a])
    assert only_a is not both
    assert list(only_a.checks) == ["a"]
    assert (len(calls_a), len(calls_b)) == (2, 1)
    assert await engine.run([check_a, check_b]) is both


@pytest.mark.anyio
async def test_failing_reports_use_cache_failed_ttl() -> None:
    engine = Engine(cache_ttl=60, cache_failed_ttl=0)
    failing, failing_calls = counting_check("failing", [Error("down", id="f.E1")])
    first = await engine.run([failing])
    second = await engine.run([failing])
    assert first.status == "error"
    assert second is not first
    assert len(failing_calls) == 2

    passing, passing_calls = counting_check("passing")
    assert await engine.run([passing]) is await engine.run([passing])
    assert len(passing_calls) == 1


@pytest.mark.anyio
async def test_failing_reports_are_cached_for_cache_failed_ttl() -> None:
    engine = Engine(cache_ttl=0, cache_failed_ttl=60)
    failing, failing_calls = counting_check("failing", [Error("down", id="f.E1")])
    assert await engine.run([failing]) is await engine.run([failing])
    assert len(failing_calls) == 1

    passing, passing_calls = counting_check("passing")
    assert await engine.run([passing]) is not await engine.run([passing])
    assert len(passing_calls) == 2


@pytest.mark.anyio
async def test_warnings_are_not_failures_for_the_cache() -> None:
    engine = Engine(cache_ttl=60, cache_failed_ttl=0)
    warning, calls = counting_check("warning", [Warning("slow", id="w.W1")])
    assert await engine.run([warning]) is await engine.run([warning])
    assert len(calls) == 1


@pytest.mark.anyio
async def test_run_uncached_bypasses_the_cache() -> None:
    engine = Engine(cache_ttl=60)
    check, calls = counting_check("c")
    await engine.run([check])
    await engine.run_uncached([check])
    assert len(calls) == 2


# --- the loop thread bridge --------------------------------------------------------------------


def test_loop_thread_starts_lazily() -> None:
    before = set(threading.enumerate())
    fresh = Engine()
    assert fresh.bridge.thread is None
    assert not fresh.bridge.running
    assert set(threading.enumerate()) == before
    try:
        # Plain sync checks run from the calling thread: no loop needed for them.
        assert fresh.run_sync([Check("fine", ok)]).status == "ok"
        assert fresh.bridge.thread is None
        assert fresh.run_sync([Check("fine_async", async_ok)]).status == "ok"
        thread = fresh.bridge.thread
        assert thread is not None
        assert thread.is_alive() and thread.daemon
        assert thread.name == "dockerflow-loop"
        assert set(threading.enumerate()) - before >= {thread}
    finally:
        fresh.close()


def test_the_same_loop_serves_every_heartbeat(engine: Engine) -> None:
    seen: list[tuple[int, int]] = []

    async def where() -> None:
        seen.append((id(asyncio.get_running_loop()), threading.get_ident()))

    check = Check("where", where)
    for _ in range(3):
        assert engine.run_sync([check]).status == "ok"
    assert len(seen) == 3
    assert len(set(seen)) == 1
    thread = engine.bridge.thread
    assert thread is not None
    assert seen[0][1] == thread.ident != threading.get_ident()


def test_an_asyncio_connection_is_reused_across_heartbeats(engine: Engine) -> None:
    connections: list[int] = []
    handler_done: list[asyncio.Event] = []
    client: dict[str, Any] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        done = asyncio.Event()
        handler_done.append(done)
        connections.append(1)
        try:
            while await reader.readline():
                writer.write(b"pong\n")
                await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()
            done.set()

    async def start_server() -> asyncio.Server:
        return await asyncio.start_server(handle, "127.0.0.1", 0)

    server = engine.bridge.call(start_server)
    port = server.sockets[0].getsockname()[1]

    async def ping() -> list[CheckMessage]:
        # The connection belongs to the loop it was opened on: this only works if every
        # heartbeat runs on that same loop.
        if "conn" not in client:
            client["conn"] = await asyncio.open_connection("127.0.0.1", port)
        reader, writer = client["conn"]
        writer.write(b"ping\n")
        await writer.drain()
        if await reader.readline() != b"pong\n":
            return [Error("no pong", id="tcp.E1")]
        return []

    async def shut_down() -> None:
        if "conn" in client:
            _, writer = client["conn"]
            writer.close()
            await writer.wait_closed()
        for done in handler_done:
            await done.wait()
        server.close()
        await server.wait_closed()

    check = Check("tcp", ping)
    try:
        for _ in range(5):
            report = engine.run_sync([check])
            assert report.status == "ok", report.details
    finally:
        engine.bridge.call(shut_down)
    assert connections == [1]


def test_stop_joins_the_thread_and_the_loop_restarts() -> None:
    bridge = LoopThread()
    assert bridge.thread is None

    async def ident() -> int:
        return threading.get_ident()

    first_ident = bridge.call(ident)
    first = bridge.thread
    assert first is not None and first.ident == first_ident
    bridge.stop()
    assert not first.is_alive()
    assert bridge.thread is None
    assert not bridge.running
    bridge.stop()  # stopping twice is harmless

    assert bridge.call(ident) != threading.get_ident()
    second = bridge.thread
    assert second is not None and second is not first and second.is_alive()
    bridge.stop()
    assert not second.is_alive()


def test_engine_close_stops_its_loop_and_it_restarts_on_use(engine: Engine) -> None:
    engine.run_sync([Check("fine", async_ok)])
    thread = engine.bridge.thread
    assert thread is not None
    engine.close()
    assert not thread.is_alive()
    assert engine.run_sync([Check("fine", async_ok)]).status == "ok"
    assert engine.bridge.thread is not None and engine.bridge.thread is not thread


def test_calling_the_bridge_from_its_own_loop_thread_is_refused() -> None:
    bridge = LoopThread()

    async def reenter() -> None:
        bridge.call(anyio.sleep, 0)

    try:
        with pytest.raises(RuntimeError):
            bridge.call(reenter)
    finally:
        bridge.stop()


def test_trio_backend() -> None:
    engine = Engine(bridge=LoopThread("trio"))
    libraries: list[str] = []

    async def which() -> None:
        libraries.append(sniffio.current_async_library())
        await anyio.sleep(0.01)

    async def hangs() -> None:
        await anyio.sleep(30)

    try:
        report = engine.run_sync(
            [Check("which", which), Check("sync", ok), Check("hangs", hangs, timeout=0.05)]
        )
    finally:
        engine.close()
    assert libraries == ["trio"]
    assert report.checks == {"which": "ok", "sync": "ok", "hangs": "error"}
    assert message_ids(report, "hangs") == [E011]


# --- fork --------------------------------------------------------------------------------------


def _fork() -> int:
    with warnings.catch_warnings():
        # Python 3.12+ warns when a process with threads forks; that is what we test here.
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _wait_for_child(pid: int, seconds: float = 10.0) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child did not finish within {seconds}s")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_run_sync_works_in_a_forked_child(engine: Engine, release: threading.Event) -> None:
    parent_pid = os.getpid()
    seen: list[int] = []

    async def where() -> None:
        seen.append(id(asyncio.get_running_loop()))

    def stuck_in_parent() -> None:
        if os.getpid() == parent_pid:
            release.wait(10)

    where_check = Check("where", where)
    # In the child the check returns at once, in a thread started in a fresh process: its
    # timeout leaves a loaded machine room for that (the parent waits it out once).
    stuck_check = Check("stuck", stuck_in_parent, timeout=1.0)
    report = engine.run_sync([where_check, stuck_check])
    assert report.checks == {"where": "ok", "stuck": "error"}
    parent_thread = engine.bridge.thread
    assert parent_thread is not None and parent_thread.is_alive()

    read_end, write_end = os.pipe()
    pid = _fork()
    if pid == 0:  # the child: never return into pytest
        try:
            os.close(read_end)
            child_report = engine.run_sync([where_check, stuck_check, Check("sync", ok)])
            child_thread = engine.bridge.thread
            payload = {
                "report": child_report.as_dict(),
                "new_thread": child_thread is not None and child_thread is not parent_thread,
                "loop": seen[-1],
            }
            os.write(write_end, json.dumps(payload).encode())
            os.close(write_end)
        except BaseException:
            os._exit(1)
        os._exit(0)

    os.close(write_end)
    try:
        exit_code = _wait_for_child(pid)
        with os.fdopen(read_end, "rb", closefd=False) as pipe:
            data = pipe.read()
    finally:
        os.close(read_end)
    assert exit_code == 0
    payload = json.loads(data)
    # The stuck check's thread exists only in the parent: the child runs the check again.
    assert payload["report"] == {
        "status": "ok",
        "checks": {"where": "ok", "stuck": "ok", "sync": "ok"},
        "details": {},
    }
    assert payload["new_thread"] is True
    assert payload["loop"] != seen[0]
    # The parent's engine is untouched by the fork.
    assert engine.bridge.thread is parent_thread
    assert engine.run_sync([stuck_check]).details["stuck"]["messages"].keys() == {E011}


# --- python-dockerflow's module-level registry (compatibility layer) ---------------------------


@pytest.fixture
def registry() -> Iterator[None]:
    clear_checks()
    yield
    clear_checks()


def test_register_as_a_bare_decorator_returns_the_function(registry: None) -> None:
    @register
    def check_plain() -> None:
        return None

    assert callable(check_plain)
    assert check_plain.__name__ == "check_plain"
    assert get_checks() == {"check_plain": check_plain}


def test_register_with_arguments_returns_the_function(registry: None) -> None:
    def database() -> None:
        return None

    decorated = register(name="db", timeout=1)(database)
    assert decorated is database
    assert register(database) is database
    assert get_checks() == {"db": database, "database": database}
    triples = [(c.name, c.func, c.timeout) for c in registered_checks()]
    assert ("db", database, 1.0) in triples
    assert ("database", database, None) in triples


def test_register_replaces_a_check_of_the_same_name(registry: None) -> None:
    def first() -> None:
        return None

    def second() -> None:
        return None

    register(first, name="x")
    register(second, name="x")
    assert get_checks() == {"x": second}


@pytest.mark.parametrize(("func", "timeout"), [(42, None), (ok, 0), (ok, "1"), (ok, -3)])
def test_register_validates_at_once(registry: None, func: Any, timeout: Any) -> None:
    with pytest.raises(CheckRegistrationError):
        register(func, name="bad", timeout=timeout)
    assert get_checks() == {}


def test_register_partial(registry: None) -> None:
    def level_check(level: int) -> list[CheckMessage]:
        return [CheckMessage("from partial", level=level, id="rp.1")]

    partial = register_partial(level_check, WARNING)
    assert isinstance(partial, functools.partial)
    assert partial() == [CheckMessage("from partial", level=WARNING, id="rp.1")]
    assert get_checks() == {"level_check": partial}

    async_partial = register_partial(async_with_arg, "hello", name="async_one", timeout=2)
    assert Check("x", async_partial).is_async
    assert ("async_one", async_partial, 2.0) in [
        (c.name, c.func, c.timeout) for c in registered_checks()
    ]


def test_get_checks_returns_the_live_registry(registry: None) -> None:
    # As python-dockerflow's: code that edits the dict edits the registry.
    register(ok, name="fine")
    live = get_checks()
    assert live is get_checks()
    assert [c.name for c in registered_checks()] == ["fine"]
    del live["fine"]
    assert registered_checks() == []
    live["added"] = ok
    assert [(c.name, c.func) for c in registered_checks()] == [("added", ok)]
    clear_checks()
    assert get_checks() == {} and live == {}


def _compat_checks() -> list[tuple[str, Callable[[], Any]]]:
    async def async_error() -> list[CheckMessage]:
        await anyio.sleep(0.01)
        return [Error("down", id="compat.E1"), Warning("slow", id="compat.W1")]

    def sync_silenced() -> list[CheckMessage]:
        return [Error("ignored", id="compat.E2")]

    def sync_info() -> list[CheckMessage]:
        return [Info("fyi")]

    return [
        ("async_error", async_error),
        ("sync_silenced", sync_silenced),
        ("sync_info", sync_info),
        ("fine", ok),
    ]


def _assert_compat_results(results: ChecksResults) -> None:
    assert isinstance(results, ChecksResults)
    assert results.level == ERROR
    assert results.statuses == {
        "async_error": "error",
        "sync_silenced": "ok",
        "sync_info": "info",
        "fine": "ok",
    }
    assert results.details == {
        "async_error": {
            "status": "error",
            "level": ERROR,
            "messages": {"compat.E1": "down", "compat.W1": "slow"},
        },
        "sync_info": {"status": "info", "level": 20, "messages": {"sync_info.0": "fyi"}},
    }


def test_run_checks(registry: None) -> None:
    for name, func in _compat_checks():
        register(func, name=name)
    results = run_checks(get_checks().items(), silenced_check_ids=["compat.E2"])
    _assert_compat_results(results)


@pytest.mark.anyio
async def test_run_checks_async(registry: None) -> None:
    results = await run_checks_async(_compat_checks(), silenced_check_ids=("compat.E2",))
    _assert_compat_results(results)
    empty = await run_checks_async([])
    assert (empty.level, empty.statuses, empty.details) == (0, {}, {})


# --- regressions: overlapping runs, duplicate checks, compat hooks ------------------------------


def test_concurrent_runs_with_different_checks_share_a_busy_sync_check(engine: Engine) -> None:
    def slow_but_healthy() -> None:
        time.sleep(0.3)

    check = Check("slow", slow_but_healthy, timeout=2)
    other = Check("other", ok)

    async def two_heartbeats() -> list[Report]:
        reports: list[Report] = []

        async def one(checks: list[Check]) -> None:
            reports.append(await engine.run(checks))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, [check])
            tg.start_soon(one, [check, other])
        return reports

    reports = engine.bridge.call(two_heartbeats)
    # Nothing ran past its timeout, so neither heartbeat may report a timeout.
    assert [r.status for r in reports] == ["ok", "ok"]


def test_a_sync_check_listed_twice_is_not_a_timeout(engine: Engine) -> None:
    check = Check("fine", lambda: time.sleep(0.05))
    assert engine.run_sync([check, check]).status == "ok"


@pytest.mark.skipif(not hasattr(atexit, "_ncallbacks"), reason="CPython only")
def test_run_checks_does_not_leak_exit_hooks(registry: None) -> None:
    checks = [("fine", ok)]
    run_checks(checks)
    before = atexit._ncallbacks()
    for _ in range(10):
        run_checks(checks)
    assert atexit._ncallbacks() <= before + 1


def test_def_returning_a_coroutine_is_awaited_within_its_timeout(engine: Engine) -> None:
    async def nap(seconds: float) -> list[CheckMessage]:
        await anyio.sleep(seconds)
        return [Info("napped", id="x.I1")]

    checks = [
        Check("quick", lambda: nap(0.05)),
        Check("sleepy", lambda: nap(5), timeout=0.2),
    ]
    started = time.perf_counter()
    report = engine.run_sync(checks)
    assert time.perf_counter() - started < 0.2 + PROMPT  # not the 5 s of the nap
    assert report.checks == {"quick": "info", "sleepy": "error"}
    assert message_ids(report, "sleepy") == [health.ERROR_CHECK_TIMEOUT]


def test_checks_run_in_a_fresh_context_not_the_callers(engine: Engine) -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []
    var.set("caller")
    engine.run_sync([Check("reads", lambda: seen.append(var.get()))])

    async def reads_async() -> None:
        seen.append(var.get())

    engine.run_sync(
        [Check("reads_async", reads_async), Check("reads_too", lambda: seen.append(var.get()))]
    )
    # The caller's context (a Flask request's, say) never travels to the check's thread or task.
    assert seen == ["unset", "unset", "unset"]


def test_async_checks_ending_in_their_first_step_each_have_a_context_of_their_own(
    engine: Engine,
) -> None:
    # Python 3.12+ starts a sync caller's async runs eagerly: those that never suspend end
    # one after another in the hand-off to the loop, before the batch's timer is set.
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []
    cancelled = threading.Event()

    def writer(name: str) -> Callable[[], Any]:
        async def check() -> None:
            seen.append(var.get())
            var.set(name)

        return check

    async def hangs() -> None:
        try:
            await anyio.sleep(30)
        finally:
            cancelled.set()

    checks = [Check(f"w{i}", writer(f"w{i}")) for i in range(3)]
    checks.insert(1, Check("hangs", hangs, timeout=0.1))
    started = time.perf_counter()
    report = engine.run_sync(checks)
    assert time.perf_counter() - started < 0.1 + PROMPT
    assert report.checks == {"w0": "ok", "hangs": "error", "w1": "ok", "w2": "ok"}
    assert message_ids(report, "hangs") == [E011]
    assert seen == ["unset"] * 3
    # The batch's timer cancelled the run that hung, though the others ended before it was set.
    assert cancelled.wait(10)
    # Its task's step ends before the loop takes this heartbeat's hand-off: the run has ended.
    assert engine.run_sync(checks[:1]).checks == {"w0": "ok"}
    assert engine.stuck_runs() == {}
