"""The engine for every caller (issue 20 items 6-10): several apps in one process, async callers
each on a loop of their own, and messages that say what happened.

Concurrency is proven with barriers, never with sleeps: a check that waits on a barrier of three
passes only if three runs of it are in progress at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask

from dockerflow import health
from dockerflow.checks import Error, clear_checks, register
from dockerflow.engine import Check, Engine, Report, _fork
from dockerflow.flask import Dockerflow

E011 = health.ERROR_CHECK_TIMEOUT
E016 = health.ERROR_CHECK_NOT_STARTED
#: Seconds a barrier waits for the other runs: far under the checks' timeout, far over what a
#: loaded machine takes to start three threads.
BARRIER_WAIT = 4.0
TIMEOUT = 8.0


def ids(report: Report, name: str) -> list[str]:
    return list(report.results[name].messages)


def text(report: Report, name: str) -> str:
    return " ".join(report.results[name].messages.values())


# --- 6. the bound counts stuck runs only -------------------------------------------------------


def test_three_flask_apps_run_one_registered_check_at_once() -> None:
    """python-dockerflow's module-level check, run by three apps of one process at the same
    time: three runs in progress together, each in its own app's context, all passing."""
    barrier = threading.Barrier(3, timeout=BARRIER_WAIT)
    apps_seen: list[str] = []

    def shared() -> list[Any]:
        import flask

        apps_seen.append(flask.current_app.name)
        barrier.wait()  # raises BrokenBarrierError unless three runs are in progress at once
        return []

    clear_checks()
    register(shared)
    try:
        apps = []
        extension = Dockerflow()
        for name in ("one", "two", "three"):
            app = Flask(name)
            app.config["DOCKERFLOW_CHECK_TIMEOUT"] = TIMEOUT
            extension.init_app(app)
            apps.append(app)
        with ThreadPoolExecutor(3) as pool:
            responses = list(pool.map(lambda app: app.test_client().get("/__heartbeat__"), apps))
    finally:
        clear_checks()
        extension._bridge.stop()
    assert [r.status_code for r in responses] == [200, 200, 200], [r.json for r in responses]
    assert sorted(apps_seen) == ["one", "three", "two"]


def test_async_callers_each_on_their_own_loop_run_a_check_at_once(engine: Engine) -> None:
    barrier = threading.Barrier(3, timeout=BARRIER_WAIT)

    async def meets_the_others() -> list[Any]:
        await asyncio.to_thread(barrier.wait)
        return []

    check = Check("meets", meets_the_others, timeout=TIMEOUT)
    with ThreadPoolExecutor(3) as pool:
        reports = list(pool.map(lambda _: asyncio.run(engine.run([check])), range(3)))
    assert [report.status for report in reports] == ["ok", "ok", "ok"], [
        text(report, "meets") for report in reports
    ]


def test_a_refusal_has_its_own_id_says_why_and_is_logged(
    engine: Engine, release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    entered = threading.Semaphore(0)

    def hangs() -> None:
        entered.release()
        release.wait()

    # Started again beside a stuck run as soon as a heartbeat finds it past its timeout.
    check = Check("hangs", hangs, timeout=0.2, restart_after=0.2)
    first = engine.run_sync([check])
    assert ids(first, "hangs") == [E011]
    assert entered.acquire(timeout=10)
    engine.run_sync([check])  # starts the second run beside the first
    assert entered.acquire(timeout=10)
    with caplog.at_level(logging.WARNING, logger="dockerflow.engine"):
        deadline = time.monotonic() + 10
        report = engine.run_sync([check])
        while "not started again" not in text(report, "hangs") and time.monotonic() < deadline:
            report = engine.run_sync([check])  # the second run is not past its restart yet
        # Its own runs are stuck: E011, without the promise of a restart that cannot come.
        message = text(report, "hangs")
        assert ids(report, "hangs") == [E011], message
        assert "not started again: 2 runs of it are stuck" in message
        assert "started again once" not in message
        # Another app's engine has no run of it: refused, and saying so.
        other = Engine(bridge=engine.bridge)
        refused = other.run_sync([Check("hangs", hangs, timeout=0.2)])
    message = text(refused, "hangs")
    assert ids(refused, "hangs") == [E016], message
    assert "timed out" not in message
    assert "2 runs of it are stuck" in message
    assert any("not started again" in r.getMessage() for r in caplog.records)
    assert engine.stuck_runs() == {"hangs": 2}
    assert entered.acquire(timeout=0.01) is False  # no third thread


def test_a_refusal_is_not_counted_as_a_timeout() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from dockerflow.metrics import HeartbeatMetrics

    registry = prometheus_client.CollectorRegistry()
    metrics = HeartbeatMetrics(registry)
    refused = Report(
        40,
        {
            "db": _detail(E016, "Check not started: 2 runs of it are stuck"),
        },
    )
    metrics.observe(refused)
    value = registry.get_sample_value("dockerflow_check_timeouts_total", {"check": "db"})
    assert value in (None, 0.0)


def _detail(msg_id: str, msg: str) -> Any:
    from dockerflow.engine import CheckDetail

    return CheckDetail(40, {msg_id: msg}, 0.0)


# --- 7. async callers leak nothing ------------------------------------------------------------


def _alive(refs: list[weakref.ref[Any]]) -> int:
    gc.collect()
    return sum(1 for ref in refs if ref() is not None)


def test_heartbeats_sharing_a_stuck_run_from_many_loops_keep_no_loop_alive(
    engine: Engine, release: threading.Event
) -> None:
    check = Check("stuck", release.wait, timeout=0.05)
    engine.run_sync([check])  # the run is past its timeout: later heartbeats share it
    loops: list[weakref.ref[Any]] = []

    async def heartbeat() -> Report:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        return await engine.run([check])

    for _ in range(300):
        assert ids(asyncio.run(heartbeat()), "stuck") == [E011]
    assert _alive(loops) <= 2


def test_loops_closed_without_cancelling_their_tasks_leave_no_host_behind(
    engine: Engine,
) -> None:
    async def fine() -> None:
        return None

    check = Check("fine", fine)
    loops: list[weakref.ref[Any]] = []
    for _ in range(300):
        loop = asyncio.new_event_loop()
        loops.append(weakref.ref(loop))
        report = loop.run_until_complete(engine.run([check]))
        assert report.status == "ok"
        loop.close()  # no asyncio.run: its tasks are never cancelled
        del loop
    assert len(engine.scheduler._hosts) <= 2
    assert _alive(loops) <= 2


# --- 9. at-fork hooks go with their owners ----------------------------------------------------


def test_the_at_fork_hooks_of_an_app_go_with_it() -> None:
    gc.collect()
    before = _fork.registered()
    for _ in range(20):
        app = Flask("transient")
        Dockerflow(app)
        del app
    gc.collect()
    assert _fork.registered() <= before + 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_an_owner_still_alive_is_reset_in_a_forked_child() -> None:
    class Owner:
        reset_in = 0

    owner = Owner()
    _fork.after_fork_in_child(owner, lambda o: setattr(o, "reset_in", os.getpid()))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, b"1" if owner.reset_in == os.getpid() else b"0")
        os._exit(0)
    os.close(write)
    got = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert got == b"1"


# --- 9. messages that are true ----------------------------------------------------------------


def test_damping_counts_a_run_once_however_long_it_overruns(
    engine: Engine, release: threading.Event
) -> None:
    check = Check("damped", release.wait, timeout=0.05, failure_threshold=50, restart_after=60)
    first = engine.run_sync([check])
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # the one run overruns its timeout several times over
        report = engine.run_sync([check])
    assert first.results["damped"].level < 40
    message = text(report, "damped")
    assert "Failing for 1 run(s)" in message, message


def test_an_error_check_message_is_reported_as_the_check_said(engine: Engine) -> None:
    # Guard: a check failing at once is reported as it is, not held back or retried.
    check = Check("err", lambda: [Error("down", id="x.E001")])
    assert ids(engine.run_sync([check]), "err") == ["x.E001"]


# --- 8. a background-refreshed async check stays on its async caller's loop ----------------


def test_an_async_callers_refreshed_check_runs_on_that_callers_loop(engine: Engine) -> None:
    async def heartbeats() -> tuple[list[Report], list[Any], Any]:
        loop = asyncio.get_running_loop()
        seen: list[Any] = []
        lock = asyncio.Lock()  # bound to the loop it is first used on, as clients are

        async def probe() -> list[Any]:
            seen.append(asyncio.get_running_loop())
            async with lock:
                await asyncio.sleep(0)
            return []

        check = Check("probe", probe, interval=0.02)
        reports = [await engine.run([check])]
        deadline = time.monotonic() + 10
        while len(seen) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the refresh runs meanwhile
        reports.append(await engine.run([check]))
        return reports, seen, loop

    reports, seen, loop = asyncio.run(heartbeats())
    assert [report.status for report in reports] == ["ok", "ok"], [
        text(report, "probe") for report in reports
    ]
    assert len(seen) >= 4
    assert all(ran_on is loop for ran_on in seen)


def test_the_blocker_is_reported_with_the_step_start_it_read(engine: Engine) -> None:
    """The loop thread may end the blocking step between two reads of its start: the heartbeat
    must use the one it read, not a later ``None`` (which printed "blocked for 3536.7s")."""
    from dockerflow.engine._runs import Run

    class EndsItsStepWhenRead(Run):
        reads = 0

        @property  # type: ignore[override]
        def step_started(self) -> float | None:
            type(self).reads += 1
            return self._started_at if type(self).reads == 1 else None

        @step_started.setter
        def step_started(self, value: float | None) -> None:
            self._started_at = value

        _started_at: float | None = None

    host = engine.scheduler.bridge_host
    run = EndsItsStepWhenRead(Check("blocks", lambda: None), 1.0, host, engine.scheduler)
    run.step_started = time.monotonic() - 0.5
    engine.scheduler._stepping[host] = run
    try:
        found = engine.scheduler.blocker(host)
    finally:
        engine.scheduler._stepping.pop(host, None)
    assert found is not None
    blocking, started = found
    assert blocking is run
    assert 0.4 < time.monotonic() - started < 60
