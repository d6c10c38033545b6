"""The Flask extension's per-app locks in a forked child: never inherited held.

A lock that a thread of the parent holds at the moment of ``os.fork()`` stays held for good in
the child, which has no such thread to release it. The extension's per-app state re-creates its
locks in the child, so that a worker forked at a bad moment still answers its heartbeats.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from dockerflow.flask import Dockerflow

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _fork() -> int:
    with warnings.catch_warnings():
        # Python 3.12+ warns when a process with threads forks; that is what we test here.
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _wait_for_child(pid: int, seconds: float = 20.0) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child did not finish within {seconds}s")


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = Flask(__name__, root_path=str(tmp_path))
    # Cached reports: a health+json heartbeat then remembers when each report was made.
    app.config["DOCKERFLOW_HEARTBEAT_CACHE_TTL"] = 5
    dockerflow = Dockerflow(app)

    @dockerflow.check
    def fine() -> None:
        return None

    yield app
    dockerflow.close()


def _hold(locks: list[threading.Lock]) -> threading.Event:
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        taken.set()
        done.wait(60)
        for lock in locks:
            lock.release()

    threading.Thread(target=hold, daemon=True).start()
    assert taken.wait(10)
    return done


def _in_child(app: Flask, locks: list[threading.Lock]) -> int:
    """Exit code of the child: 0, else 2 for a lock still held, 3 for a heartbeat stuck."""
    state = app.extensions["dockerflow"]._apps[app]
    for lock in (state.status_lock, state.report_times._lock):
        if lock in locks or not lock.acquire(timeout=5):
            return 2
        lock.release()
    answers: list[int] = []

    def heartbeat() -> None:
        response = app.test_client().get(
            "/__heartbeat__", headers={"Accept": "application/health+json"}
        )
        answers.append(response.status_code)

    thread = threading.Thread(target=heartbeat, daemon=True)
    thread.start()
    thread.join(10)
    return 0 if answers == [200] else 3


def test_locks_held_by_a_parent_thread_at_fork_are_free_in_the_child(app: Flask) -> None:
    client = app.test_client()
    headers = {"Accept": "application/health+json"}
    assert client.get("/__heartbeat__", headers=headers).status_code == 200
    state = app.extensions["dockerflow"]._apps[app]
    locks = [state.status_lock, state.report_times._lock]
    release = _hold(locks)
    try:
        pid = _fork()
        if pid == 0:  # the child: report through the exit code only, never return into pytest
            code = 1
            try:
                code = _in_child(app, locks)
            finally:
                os._exit(code)
        exit_code = _wait_for_child(pid)
    finally:
        release.set()
    assert exit_code == 0
    # The parent's own locks are the ones it had, released by their thread.
    assert state.status_lock is locks[0] and state.report_times._lock is locks[1]
    assert client.get("/__heartbeat__", headers=headers).status_code == 200


def test_the_drain_startup_grace_and_metrics_locks_are_free_in_the_child(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from dockerflow.metrics import HeartbeatMetrics

    app = Flask(__name__, root_path=str(tmp_path))
    app.config["DOCKERFLOW_STARTUP_GRACE_SECONDS"] = 30
    metrics = HeartbeatMetrics(CollectorRegistry())
    dockerflow = Dockerflow(app, metrics=metrics)

    @dockerflow.check
    def fine() -> None:
        return None

    client = app.test_client()
    try:
        assert client.get("/__heartbeat__").status_code == 200
        state = dockerflow._apps[app]
        locks = [dockerflow._drain._lock, state.startup._lock, metrics._lock]
        release = _hold(locks)
        try:
            pid = _fork()
            if pid == 0:  # the child: report through the exit code only
                code = 1
                try:
                    answers: list[int] = []

                    def heartbeats() -> None:
                        answers.append(app.test_client().get("/__heartbeat__").status_code)
                        dockerflow.start_draining()
                        answers.append(app.test_client().get("/__heartbeat__").status_code)

                    thread = threading.Thread(target=heartbeats, daemon=True)
                    thread.start()
                    thread.join(10)
                    code = 0 if answers == [200, 503] else 3
                finally:
                    os._exit(code)
            exit_code = _wait_for_child(pid)
        finally:
            release.set()
        assert exit_code == 0
    finally:
        dockerflow.close()
