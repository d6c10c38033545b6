"""The hard deadline, blocked loops, stuck checks that recover, and masking in every log line."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from test_engine import threads_inside

from dockerflow import health
from dockerflow.engine import Check, Engine
from dockerflow.flask import Dockerflow
from dockerflow.logging import MozlogFormatter
from dockerflow.masking import mask_secrets

E011 = health.ERROR_CHECK_TIMEOUT


@pytest.fixture
def app() -> Iterator[tuple[Flask, Dockerflow]]:
    app = Flask("deadline")
    ext = Dockerflow(app)
    yield app, ext
    ext.close()


def test_an_async_check_that_blocks_the_loop_cannot_hold_up_heartbeats(
    app: tuple[Flask, Dockerflow], caplog: pytest.LogCaptureFixture
) -> None:
    flask_app, ext = app

    @ext.check(timeout=0.5)
    async def blocking_http_client() -> None:
        time.sleep(3)  # a sync client called from an async def: the loop stops for 3 s

    @ext.check(timeout=0.5)
    async def innocent() -> None:
        return None

    timings: list[float] = []
    bodies: list[dict[str, Any]] = []

    def heartbeat() -> None:
        started = time.perf_counter()
        response = flask_app.test_client().get("/__heartbeat__")
        timings.append(time.perf_counter() - started)
        bodies.append(response.json)

    with caplog.at_level(logging.WARNING):
        threads = [threading.Thread(target=heartbeat) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(timings) == 3
        # At the 0.5 s timeout, with room for a loaded machine: waiting for the loop takes 3 s.
        assert max(timings) <= 2.0, timings
        # The innocent check could not run either; its message says why.
        messages = [body["details"]["innocent"]["messages"][E011] for body in bodies]
        assert any("blocked by check 'blocking_http_client'" in m for m in messages), messages
        # Logged while the loop is still blocked (the check may never give it back).
        # Only this check's warning while it blocks: on a loaded machine the one logged when it
        # stops blocking (3 s), or a late one of an earlier test's engine, may be there too.
        warnings = [r.getMessage() for r in caplog.records if r.name == "dockerflow.engine"]
        blocking = [w for w in warnings if "'blocking_http_client' is blocking the event loop" in w]
        assert len(blocking) == 1, warnings  # once per run, not once per heartbeat


def test_a_check_stuck_forever_is_started_again_and_the_heartbeat_recovers(
    app: tuple[Flask, Dockerflow], release: threading.Event
) -> None:
    flask_app, ext = app
    calls: list[float] = []

    @ext.check(timeout=0.2, restart_after=1.5)
    def half_open_socket() -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            release.wait(60)  # the first call never returns on its own

    web = flask_app.test_client()
    started = time.monotonic()
    first = web.get("/__heartbeat__")
    assert first.status_code == 500
    # The run started a moment after the heartbeat (later on a loaded machine): once it has
    # been going for longer than its timeout, the next heartbeat finds it stuck.
    time.sleep(max(0.0, calls[0] + 0.2 - time.monotonic()))
    second = web.get("/__heartbeat__")
    message = second.json["details"]["half_open_socket"]["messages"][E011]
    assert "still running from an earlier heartbeat, stuck for" in message
    while time.monotonic() - started < 10:
        response = web.get("/__heartbeat__")
        if response.status_code == 200:
            break
        time.sleep(0.05)
    assert response.status_code == 200
    assert time.monotonic() - started <= 1.5 + 2.5  # soon after its restart delay
    assert len(calls) == 2


def test_a_stuck_check_never_holds_more_than_two_threads(release: threading.Event) -> None:
    engine = Engine(restart_after=0.05)

    def stuck() -> None:
        release.wait(60)

    check = Check("stuck", stuck, timeout=0.01)
    seen = set()
    try:
        for beat in range(1000):
            report = engine.run_sync([check])
            assert list(report.details["stuck"]["messages"]) == [E011], beat
            inside = threads_inside(stuck.__code__)
            assert inside <= 2, beat
            seen.add(inside)
            if beat % 100 == 0:
                time.sleep(0.06)  # let the restart delay pass now and then
        assert 2 in seen  # a second run was started beside the stuck one, never a third
        assert 1 <= engine.stuck_runs()["stuck"] <= 2
        release.set()
        deadline = time.monotonic() + 5
        while engine.stuck_runs() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stuck_runs() == {}
    finally:
        release.set()
        engine.close()


def test_masking_a_megabyte_is_linear_and_quick() -> None:
    token = "sk_live_" + "x" * 1_000_000
    texts = {
        "one long token": f"api_key={token}",
        "word characters": "a" * 1_000_000,
        "repeated key words": "token" * 200_000,
        # A secret or two in every kilobyte of ordinary log text.
        "log-like text": (
            "GET /search?q=flask HTTP/1.1 200 from 10.0.0.7 in 12 ms; " * 16
            + "retry with password=hunter2 via postgresql://u:pw@db/x; "
        )
        * 1_000,
    }
    for what, text in texts.items():
        best = min(_timed(mask_secrets, text) for _ in range(5))
        # Linear: a few milliseconds (benchmarks/ has the figures); a quadratic pattern on a
        # megabyte takes minutes. The bound leaves room for a loaded machine.
        assert best < 0.5, (what, best)
    assert "hunter2" not in mask_secrets(texts["log-like text"])


def _timed(func: Any, *args: Any) -> float:
    started = time.perf_counter()
    func(*args)
    return time.perf_counter() - started


def test_no_secret_from_a_check_reaches_any_log_line(
    app: tuple[Flask, Dockerflow],
) -> None:
    flask_app, ext = app
    secrets = ["sk_live_abc123", "hunter2", "tok3n"]

    @ext.check
    def payments() -> None:
        raise ConnectionError(
            "connect to postgresql://admin:hunter2@db.internal/x failed; "
            "retry with api_key=sk_live_abc123 token: tok3n"
        )

    @ext.check
    async def custom_message() -> list[Any]:
        from dockerflow.checks import Error

        return [Error("login with password=hunter2 failed", id="app.E001")]

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(MozlogFormatter(logger_name="test"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        response = flask_app.test_client().get("/__heartbeat__")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    output = stream.getvalue()
    assert "Traceback" in output  # the exception's traceback is logged, masked
    assert "E012" in output and "app.E001" in output
    body = response.get_data(as_text=True)
    for secret in secrets:
        assert secret not in output
        assert secret not in body


def test_no_traceback_at_interpreter_exit() -> None:
    code = textwrap.dedent(
        """
        from dockerflow.engine import Check, Engine

        async def check():
            return None

        engine = Engine()
        assert engine.run_sync([Check("c", check), Check("d", lambda: None)]).status == "ok"
        """
    )
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-c", code], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
