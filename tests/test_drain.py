"""Draining: /__heartbeat__ answers 503 at once, and SIGTERM reaches the server's handler late.

The SIGTERM tests install a handler of their own in the test process (as a server would) and
send SIGTERM to it; the fixture puts the previous handler back. Tests that end in the default
action (the process ends) run in a child interpreter. The same under real gunicorn is in
tests/production/test_drain_gunicorn.py.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from flask import Flask

from dockerflow import health
from dockerflow.checks import CRITICAL
from dockerflow.engine import ConfigurationError
from dockerflow.flask import Dockerflow, DrainError, signals
from dockerflow.health_json import MEDIA_TYPE

#: Seconds within which something the test waits for must happen (loose: a loaded machine).
WAIT = 10.0


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    app = Flask("drainapp", root_path=str(tmp_path / "app"))
    app.config["TESTING"] = True
    return app


class ServerHandler:
    """A SIGTERM handler such as a server installs; records when it is called."""

    def __init__(self) -> None:
        self.called = threading.Event()
        self.calls: list[float] = []

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.calls.append(time.monotonic())
        self.called.set()


@pytest.fixture
def server() -> Iterator[ServerHandler]:
    """A server's SIGTERM handler, installed for the test; the previous one is put back."""
    handler = ServerHandler()
    previous = signal.signal(signal.SIGTERM, handler.handle)
    try:
        yield handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_until_draining(dockerflow: Dockerflow) -> None:
    """Wait until the drain thread has started the drain (it runs apart from this thread)."""
    deadline = time.monotonic() + WAIT
    while not dockerflow.draining and time.monotonic() < deadline:
        time.sleep(0.01)
    assert dockerflow.draining


def counting_check(dockerflow: Dockerflow) -> list[int]:
    runs: list[int] = []

    @dockerflow.check
    def database() -> list[Any]:
        runs.append(1)
        return []

    return runs


# -- start_draining -----------------------------------------------------------------------------


def test_start_draining_fails_the_heartbeat_at_once_without_running_checks(app: Flask) -> None:
    dockerflow = Dockerflow(app)
    runs = counting_check(dockerflow)

    @app.get("/work")
    def work() -> str:
        return "done"

    client = app.test_client()
    assert client.get("/__heartbeat__").status_code == 200
    assert runs == [1] and not dockerflow.draining

    dockerflow.start_draining()
    assert dockerflow.draining
    response = client.get("/__heartbeat__")
    assert response.status_code == 503
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["status"] == "error"
    assert body["checks"] == {"draining": "error"}
    (message,) = body["details"]["draining"]["messages"].items()
    assert message[0] == health.ERROR_DRAINING
    assert "start_draining() was called" in message[1]
    assert runs == [1]  # no check ran
    # Everything else is served as before.
    assert client.get("/__lbheartbeat__").status_code == 200
    assert client.get("/__version__").status_code in (200, 404)
    assert client.get("/work").get_data(as_text=True) == "done"
    dockerflow.start_draining()  # again: nothing changes
    assert client.get("/__heartbeat__").status_code == 503


def test_the_drain_is_a_failing_health_json_too(app: Flask) -> None:
    dockerflow = Dockerflow(app)
    dockerflow.start_draining()
    response = app.test_client().get("/__heartbeat__", headers={"Accept": MEDIA_TYPE})
    assert response.status_code == 503
    assert response.mimetype == MEDIA_TYPE
    body = response.get_json()
    assert body["status"] == "fail"
    (entry,) = body["checks"]["draining:responseTime"]
    assert entry["status"] == "fail"
    assert entry["output"].startswith(f"{health.ERROR_DRAINING}: Draining for ")


def test_the_drain_fails_whatever_the_fail_level(app: Flask) -> None:
    app.config["DOCKERFLOW_HEARTBEAT_FAIL_LEVEL"] = "critical"
    dockerflow = Dockerflow(app)
    dockerflow.start_draining()
    body = app.test_client().get("/__heartbeat__").get_json()
    assert body["details"]["draining"]["level"] == CRITICAL
    assert body["status"] == "critical"


def test_no_heartbeat_signal_is_sent_while_draining(app: Flask) -> None:
    dockerflow = Dockerflow(app)
    counting_check(dockerflow)
    seen: list[Any] = []

    def receiver(sender: Flask, **kwargs: Any) -> None:
        seen.append(kwargs)

    signals.heartbeat_checked.connect(receiver, app)
    try:
        dockerflow.start_draining()
        app.test_client().get("/__heartbeat__")
    finally:
        signals.heartbeat_checked.disconnect(receiver, app)
    assert seen == []


def test_every_app_of_the_extension_drains(tmp_path: Path) -> None:
    dockerflow = Dockerflow()
    apps = [Flask(f"app{n}", root_path=str(tmp_path / str(n))) for n in range(2)]
    for one in apps:
        dockerflow.init_app(one)
    dockerflow.start_draining()
    assert [one.test_client().get("/__heartbeat__").status_code for one in apps] == [503, 503]


# -- SIGTERM ------------------------------------------------------------------------------------


def test_sigterm_drains_then_reaches_the_server_handler(
    app: Flask, server: ServerHandler, caplog: pytest.LogCaptureFixture
) -> None:
    app.config["DOCKERFLOW_DRAIN_SECONDS"] = 0.5
    dockerflow = Dockerflow(app)  # init_app wraps the server's handler, in the main thread
    client = app.test_client()
    assert client.get("/__heartbeat__").status_code == 200
    sent = time.monotonic()
    with caplog.at_level(logging.INFO, logger="dockerflow.flask"):
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until_draining(dockerflow)
        assert server.called.wait(WAIT)
    # One line at SIGTERM (the drain's length and what comes after it), one when it is over.
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("Draining (SIGTERM) for 0.5s: /__heartbeat__ answers 503")
    assert warnings[0].endswith("then SIGTERM goes on to test_drain.ServerHandler.handle")
    assert any(r.getMessage().startswith("Drain over after 0.5") for r in caplog.records)
    assert server.calls[0] - sent >= 0.5
    response = client.get("/__heartbeat__")
    assert response.status_code == 503
    assert (
        "(SIGTERM)" in response.get_json()["details"]["draining"]["messages"][health.ERROR_DRAINING]
    )
    assert client.get("/__lbheartbeat__").status_code == 200
    # Once handed over, a SIGTERM goes straight to the server's handler.
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + WAIT
    while len(server.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # the handler runs in this thread, between two bytecodes
    assert len(server.calls) == 2


def test_a_repeated_sigterm_does_not_end_the_drain(
    app: Flask, server: ServerHandler, caplog: pytest.LogCaptureFixture
) -> None:
    # dumb-init and tini -g signal the whole group: a worker gets its SIGTERM, then the
    # arbiter's.
    app.config["DOCKERFLOW_DRAIN_SECONDS"] = 1.0
    dockerflow = Dockerflow(app)
    with caplog.at_level(logging.INFO, logger="dockerflow.flask"):
        sent = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until_draining(dockerflow)
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGTERM)
        assert server.called.wait(WAIT)
    assert server.calls[0] - sent >= 1.0
    assert len(server.calls) == 1
    again = [r for r in caplog.records if r.getMessage().startswith("SIGTERM again")]
    assert again and all(r.levelno == logging.INFO for r in again)
    assert "SIGINT or SIGQUIT stop at once" in again[0].getMessage()


#: read()'s system call number, as /proc/<pid>/task/<tid>/syscall shows it.
READ_SYSCALL = {"x86_64": "0", "aarch64": "63"}.get(platform.machine())


def in_read(tid: int) -> bool:
    """Whether the thread ``tid`` of this process is blocked in read()."""
    with open(f"/proc/self/task/{tid}/syscall") as stat:
        return stat.read().split()[0] == READ_SYSCALL


@pytest.mark.skipif(READ_SYSCALL is None, reason="read()'s system call number is not known here")
def test_sigterm_leaves_a_blocking_c_call_of_a_request_alone(
    app: Flask, server: ServerHandler
) -> None:
    # gunicorn's workers call siginterrupt(SIGTERM, False): SIGTERM restarts a system call it
    # interrupts. signal.signal() alone would make libc's read() fail with EINTR.
    signal.siginterrupt(signal.SIGTERM, False)
    app.config["DOCKERFLOW_DRAIN_SECONDS"] = 0.2
    dockerflow = Dockerflow(app)
    libc = ctypes.CDLL(None, use_errno=True)
    read_end, write_end = os.pipe()
    reading = threading.Event()
    result: list[tuple[int, int]] = []

    def request() -> None:
        buffer = ctypes.create_string_buffer(1)
        reading.set()
        got = libc.read(read_end, buffer, 1)  # releases the GIL, blocks in the kernel
        result.append((got, ctypes.get_errno()))

    thread = threading.Thread(target=request)
    thread.start()
    try:
        assert reading.wait(WAIT)
        deadline = time.monotonic() + WAIT
        while not in_read(thread.native_id or 0):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # The kernel would hand a process-directed signal to the main thread: aimed at the
        # reading thread instead, as the drain's own SIGTERM may land on any thread.
        signal.pthread_kill(thread.ident or 0, signal.SIGTERM)
        wait_until_draining(dockerflow)
        assert server.called.wait(WAIT)
        thread.join(0.2)
        assert thread.is_alive(), result  # still in read(), not failed with EINTR
    finally:
        os.write(write_end, b"x")
        thread.join(WAIT)
        os.close(read_end)
        os.close(write_end)
    assert result == [(1, 0)], result


def test_the_watcher_under_gevent_is_a_greenlet_and_the_process_keeps_running() -> None:
    # gunicorn -k gevent patches threading: a thread blocked in os.read would block the hub.
    done = subprocess.run(
        [sys.executable, "-c", GEVENT_CHILD],
        capture_output=True,
        text=True,
        timeout=WAIT + 20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["before", "200", "during", "503", "ticks", "handed", "on"], (
        done.stdout
    )


GEVENT_CHILD = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    import os, signal, time
    import gevent
    from flask import Flask
    from dockerflow.flask import Dockerflow

    handed = []
    signal.signal(signal.SIGTERM, lambda signum, frame: handed.append(time.monotonic()))
    app = Flask("child")
    app.config["DOCKERFLOW_DRAIN_SECONDS"] = 0.5
    dockerflow = Dockerflow(app)
    client = app.test_client()
    print("before", client.get("/__lbheartbeat__").status_code, flush=True)
    sent = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)
    ticks = 0
    while not handed and time.monotonic() - sent < 10:
        gevent.sleep(0.01)  # the hub runs: the process is not blocked
        ticks += 1
    print("during", 503 if dockerflow.draining else 200, flush=True)
    print("ticks" if ticks > 10 else "blocked", flush=True)
    print("handed on" if handed and handed[0] - sent >= 0.5 else "not handed on", flush=True)
    """
)


def test_two_extensions_share_one_drain_and_the_server_handler_runs_once(
    tmp_path: Path, server: ServerHandler
) -> None:
    extensions = []
    for n, seconds in enumerate((0.2, 0.4)):
        one = Flask(f"app{n}", root_path=str(tmp_path / str(n)))
        one.config["DOCKERFLOW_DRAIN_SECONDS"] = seconds
        extensions.append(Dockerflow(one))
    sent = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)
    assert server.called.wait(WAIT)
    assert server.calls[0] - sent >= 0.4  # the longest drain
    assert all(one.draining for one in extensions)
    assert len(server.calls) == 1


def test_init_app_leaves_the_default_action_alone_and_says_so_at_the_first_heartbeat(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # pytest's, as a CLI's
    app.config["DOCKERFLOW_DRAIN_SECONDS"] = 5
    Dockerflow(app)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="dockerflow.flask"):
        client.get("/__heartbeat__")
        client.get("/__heartbeat__")
    warnings = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    assert len(warnings) == 1
    assert "the default action" in warnings[0]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_handler_installed_after_init_app_is_named_at_the_first_heartbeat(
    app: Flask, server: ServerHandler, caplog: pytest.LogCaptureFixture
) -> None:
    # gunicorn --preload: the app is built before the worker's handler is installed. SIGTERM
    # is made to drain in one place, init_app or drain_on_sigterm(); a heartbeat only says so.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    app.config["DOCKERFLOW_DRAIN_SECONDS"] = 5
    dockerflow = Dockerflow(app)
    signal.signal(signal.SIGTERM, server.handle)
    statuses: list[int] = []
    with caplog.at_level(logging.WARNING, logger="dockerflow.flask"):
        thread = threading.Thread(
            target=lambda: statuses.append(app.test_client().get("/__heartbeat__").status_code)
        )
        thread.start()
        thread.join(WAIT)
        app.test_client().get("/__heartbeat__")
    assert statuses == [200]
    assert signal.getsignal(signal.SIGTERM) == server.handle
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "has no effect in this process: SIGTERM leads to test_drain.ServerHandler.handle" in (
        warning
    )
    assert "post_worker_init" in warning
    dockerflow.drain_on_sigterm()  # as the post_worker_init hook does
    installed = signal.getsignal(signal.SIGTERM)
    assert getattr(installed, "previous", None) == server.handle
    dockerflow.drain_on_sigterm()  # again: nothing changes
    assert signal.getsignal(signal.SIGTERM) is installed


def test_drain_on_sigterm_refuses_what_it_cannot_do(app: Flask, monkeypatch: Any) -> None:
    dockerflow = Dockerflow(app)
    with pytest.raises(ConfigurationError, match="DOCKERFLOW_DRAIN_SECONDS"):
        dockerflow.drain_on_sigterm()
    for bad in (0, -1, True, float("nan"), "5"):
        with pytest.raises(ConfigurationError, match="seconds must be"):
            dockerflow.drain_on_sigterm(bad)  # type: ignore[arg-type]
    errors: list[BaseException] = []

    def in_thread() -> None:
        try:
            dockerflow.drain_on_sigterm(5)
        except DrainError as exc:
            errors.append(exc)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(WAIT)
    assert len(errors) == 1 and "main thread" in str(errors[0])
    monkeypatch.setitem(sys.modules, "uwsgi", object())
    with pytest.raises(DrainError, match="uWSGI"):
        dockerflow.drain_on_sigterm(5)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.parametrize("value", ["-1", "later", "inf"])
def test_a_bad_drain_setting_fails_at_init_app_naming_key_and_value(app: Flask, value: str) -> None:
    app.config["DOCKERFLOW_DRAIN_SECONDS"] = value
    with pytest.raises(ConfigurationError, match=f"DOCKERFLOW_DRAIN_SECONDS='{value}'"):
        Dockerflow(app)


CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from flask import Flask
    from dockerflow.flask import Dockerflow

    app = Flask("child")
    dockerflow = Dockerflow(app)
    dockerflow.drain_on_sigterm(0.5)
    client = app.test_client()
    print("before", client.get("/__heartbeat__").status_code, flush=True)
    sent = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)
    while not dockerflow.draining:
        time.sleep(0.01)
    print("during", client.get("/__heartbeat__").status_code, flush=True)
    while True:  # the default action ends the process once the drain is over
        print("alive", round(time.monotonic() - sent, 3), flush=True)
        time.sleep(0.05)
    """
)


def test_with_the_default_action_the_process_ends_when_the_drain_is_over() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=WAIT + 20,
        check=False,
    )
    assert done.returncode == -signal.SIGTERM, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["before 200", "during 503"], done.stdout
    alive = [float(line.split()[1]) for line in lines if line.startswith("alive")]
    # Alive for the drain, and not for long after it (the bound is loose).
    assert alive and max(alive) < 0.5 + WAIT
    assert max(alive) >= 0.4


class FakeGunicornWorker:
    """Has what the extension reads of a gunicorn worker: ``cfg.graceful_timeout``."""

    class cfg:
        graceful_timeout = 5

    def __init__(self) -> None:
        self.exits = 0

    def handle_exit(self, signum: int, frame: FrameType | None) -> None:
        self.exits += 1


def test_a_drain_not_below_gunicorns_graceful_timeout_is_logged(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    worker = FakeGunicornWorker()
    previous = signal.signal(signal.SIGTERM, worker.handle_exit)
    try:
        app.config["DOCKERFLOW_DRAIN_SECONDS"] = 5
        with caplog.at_level(logging.WARNING, logger="dockerflow.flask"):
            Dockerflow(app)
    finally:
        signal.signal(signal.SIGTERM, previous)
    (record,) = [r for r in caplog.records if "graceful_timeout" in r.getMessage()]
    assert "DOCKERFLOW_DRAIN_SECONDS=5 is not below gunicorn's graceful_timeout (5s)" in (
        record.getMessage()
    )


EARLY_END_CHILD = textwrap.dedent(
    """
    import logging, os, signal, sys, time
    from flask import Flask
    from dockerflow.flask import Dockerflow

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # SIGINT stops at once, as gunicorn's handle_quit does.
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(0))
    dockerflow = Dockerflow(Flask("child"))
    dockerflow.drain_on_sigterm(30)
    os.kill(os.getpid(), signal.SIGTERM)
    while not dockerflow.draining:
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)
    """
)


def test_sigint_during_the_drain_stops_at_once_and_says_the_drain_ended_early() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", EARLY_END_CHILD],
        capture_output=True,
        text=True,
        timeout=WAIT + 20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 25  # not the drain's 30 s
    (line,) = [line for line in done.stderr.splitlines() if "ended early" in line]
    assert line.startswith("WARNING The drain ended early, after 0."), line
    assert "of 30s: the process exits before SIGTERM went on to the default action" in line


def test_eventlet_is_refused_with_what_to_do_instead(app: Flask, monkeypatch: Any) -> None:
    # eventlet is deprecated, and gunicorn 26 removed its worker; it installs, but patches
    # threading its own way.
    class Patcher:
        @staticmethod
        def is_monkey_patched(module: str) -> bool:
            return module == "thread"

    monkeypatch.setitem(sys.modules, "eventlet.patcher", Patcher)
    dockerflow = Dockerflow(app)
    with pytest.raises(DrainError, match="eventlet has monkey-patched threading") as raised:
        dockerflow.drain_on_sigterm(5)
    assert "gunicorn -k gevent or -k gthread" in str(raised.value)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
