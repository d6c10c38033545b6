"""The built-in checks' locks in a forked child: never inherited held.

A lock that a thread of the parent holds at the moment of ``os.fork()`` stays held for good in
the child. The checks' own locks (the database check's copies, its watchdog, the Redis check's
own client) are made anew in the child, which then runs the checks against the real servers.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from typing import Any

import pytest
import redis
import sqlalchemy

from dockerflow.integrations import database_check, redis_check
from dockerflow.integrations.redis import RedisCheck
from dockerflow.integrations.sqlalchemy import CheckEngine

from .helpers import messages_of, url_with

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    pytest.mark.postgres,
    pytest.mark.redis,
]


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


def _hold(locks: list[Any]) -> threading.Event:
    """Take ``locks`` in a thread of their own, until the returned event is set."""
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


def _in_child(checks: dict[str, Any], locks: dict[str, Any]) -> int:
    """Exit code: 0, else 10 + i for the i-th lock still held, 20 for a check that failed."""
    for i, get_lock in enumerate(locks.values()):
        if not get_lock().acquire(timeout=5):
            return 10 + i
        get_lock().release()
    results: dict[str, Any] = {}

    def run() -> None:
        for name, check in checks.items():
            results[name] = check()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(15)
    passed = len(results) == len(checks) and not any(map(messages_of, results.values()))
    return 0 if passed else 20


def test_locks_held_by_a_parent_thread_at_fork_are_free_in_the_child(
    postgres_url: str, redis_url: str
) -> None:
    app = sqlalchemy.create_engine(url_with(postgres_url, drivername="postgresql+psycopg2"))
    client = redis.Redis.from_url(redis_url)
    db = database_check(app)
    cache = redis_check(client)
    check_engine: CheckEngine = db.args[0]
    assert isinstance(cache, RedisCheck)
    try:
        assert messages_of(db()) == [] and messages_of(cache()) == []
        locks = {
            "CheckEngine._lock": lambda: check_engine._lock,
            "Watchdog._lock": lambda: check_engine.watchdog._lock,
            "RedisCheck._lock": lambda: cache._lock,
        }
        # The watchdog's condition too, made by the parent's first deadline: the child makes
        # its own on first use.
        condition = check_engine.watchdog._condition
        assert condition is not None
        release_them = _hold([*(get_lock() for get_lock in locks.values()), condition])
        try:
            pid = _fork()
            if pid == 0:  # the child: report through the exit code only, never return
                code = 1
                try:
                    code = _in_child({"db": db, "cache": cache}, locks)
                finally:
                    os._exit(code)
            exit_code = _wait_for_child(pid)
        finally:
            release_them.set()
        assert exit_code == 0, list(locks)[exit_code - 10] if 10 <= exit_code < 20 else exit_code
        assert (
            messages_of(db()) == [] and messages_of(cache()) == []
        )  # the parent's checks go on as before
    finally:
        check_engine.dispose()
        cache.close()
        client.close()
        app.dispose()
