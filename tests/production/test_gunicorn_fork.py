"""The async checks under a forking server: gunicorn ``--preload``, sync and gthread workers.

``--preload`` builds the app in the arbiter, before the fork. Every worker must then run its async
checks on a loop thread of its own (one per process), with asyncpg pools and Redis connections
of its own: never the arbiter's loop, and never a connection shared with another process. The
hazardous variant runs a heartbeat in the arbiter while it builds the app, so the arbiter has a
running loop thread, an open asyncpg pool and a Redis connection when it forks.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from integrations.helpers import asyncpg_dsn, count_backends, unique_name

from .gunicorn_helpers import (
    APPS,
    REPO,
    START_TIMEOUT,
    Gunicorn,
    get,
    postgres_url,
    redis_url,
    start_gunicorn,
)

HEARTBEATS = 200
#: Rounds of 20 debug queries at most, to hear from every worker.
DEBUG_ROUNDS = 10
CLIENT_THREADS = 8
WORKERS = 2
CHECKS = {"check_postgres", "check_redis_connected", "loop_probe"}


@dataclass(frozen=True)
class Variant:
    worker_args: tuple[str, ...]
    heartbeat_in_arbiter: bool


VARIANTS = {
    "sync": Variant(("-w", str(WORKERS)), heartbeat_in_arbiter=False),
    "gthread": Variant(("-w", str(WORKERS), "-k", "gthread", "--threads", "4"), False),
    "gthread-arbiter-heartbeat": Variant(
        ("-w", str(WORKERS), "-k", "gthread", "--threads", "4"), heartbeat_in_arbiter=True
    ),
    "sync-arbiter-heartbeat": Variant(("-w", str(WORKERS)), heartbeat_in_arbiter=True),
}


@dataclass
class Served:
    server: Gunicorn
    variant: Variant
    application_name: str
    postgres_url: str


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Served]]:
    pg_url, r_url = postgres_url(), redis_url()
    started: dict[str, Served] = {}
    try:
        for name, variant in VARIANTS.items():
            application_name = unique_name("dockerflow-fork")
            env = {
                "FORK_APP_POSTGRES_DSN": asyncpg_dsn(pg_url),
                "FORK_APP_REDIS_URL": r_url,
                "FORK_APP_NAME": application_name,
                "FORK_APP_HEARTBEAT_AT_IMPORT": "1" if variant.heartbeat_in_arbiter else "0",
            }
            args = ("--preload", "-c", str(APPS / "gunicorn_conf.py"), *variant.worker_args)
            server = start_gunicorn(
                tmp_path_factory.mktemp(name), "fork_app:create_app()", args, env
            )
            started[name] = Served(server, variant, application_name, pg_url)
        # Started together: start-up is most of this module's time.
        deadline = time.monotonic() + START_TIMEOUT
        for served in started.values():
            served.server.wait_until_serving(deadline)
        yield started
    finally:
        for served in started.values():
            served.server.stop()


def _heartbeat(port: int) -> tuple[int, dict[str, str] | None]:
    status, body = get(port, "/__heartbeat__")
    return status, None if body is None else body.get("checks")


def _arbiter_threads(server: Gunicorn) -> list[tuple[int, set[str]]]:
    found = re.findall(r"^ARBITER_THREADS pid=(\d+) names=(.*)$", server.output, re.MULTILINE)
    return [(int(pid), set(names.split(","))) for pid, names in found]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_worker_runs_the_async_checks_on_a_loop_of_its_own(
    servers: dict[str, Served], variant: str
) -> None:
    served = servers[variant]
    server = served.server

    loop_threads: dict[int, set[int]] = defaultdict(set)
    loops: dict[int, set[int]] = defaultdict(set)
    heartbeats: dict[int, int] = {}
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        results = list(pool.map(_heartbeat, [server.port] * HEARTBEATS))
        # Ask until every worker that served a heartbeat has answered (bounded).
        for _ in range(DEBUG_ROUNDS):
            for status, info in pool.map(lambda _: get(server.port, "/_debug/loop"), range(20)):
                assert status == 200, info
                pid = info["pid"]
                assert len(info["loop_threads"]) == 1, f"pid {pid}: {info['loop_threads']}"
                native_id = info["loop_threads"][0]["native_id"]
                loop_threads[pid].add(native_id)
                heartbeats[pid] = info["heartbeats"]
                # The async checks of this process ran on this process's own loop thread.
                assert info["probe"]["pid"] == pid
                assert info["probe"]["native_id"] == native_id
                loops[pid].add(info["probe"]["loop_id"])
            if sum(heartbeats.values()) == HEARTBEATS:
                break

    failed = [result for result in results if result != (200, dict.fromkeys(CHECKS, "ok"))]
    assert not failed, f"{len(failed)} of {HEARTBEATS} heartbeats failed, e.g. {failed[:3]}"
    assert sum(heartbeats.values()) == HEARTBEATS, heartbeats
    assert sum(1 for count in heartbeats.values() if count) > 1, f"one worker served: {heartbeats}"
    assert server.process.pid not in loop_threads
    for pid, native_ids in loop_threads.items():
        assert len(native_ids) == 1, f"pid {pid} ran more than one loop thread: {native_ids}"
        assert len(loops[pid]) == 1, f"pid {pid} ran its checks on several loops: {loops[pid]}"
    all_ids = [native_id for ids in loop_threads.values() for native_id in ids]
    assert len(all_ids) == len(set(all_ids)), f"a loop thread in two processes: {loop_threads}"

    # Each process opened its own asyncpg pool (one connection while heartbeats are
    # single-flight, at most its max_size of 2); the arbiter keeps its own if it ran a heartbeat.
    in_arbiter = 1 if served.variant.heartbeat_in_arbiter else 0
    backends = count_backends(served.postgres_url, served.application_name)
    assert len(loop_threads) + in_arbiter <= backends <= 2 * WORKERS + in_arbiter

    assert server.forbidden_output() == [], server.output


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_arbiter_has_a_loop_thread_only_if_it_ran_a_heartbeat(
    servers: dict[str, Served], variant: str
) -> None:
    served = servers[variant]
    forks = _arbiter_threads(served.server)
    assert len(forks) >= WORKERS, served.server.output
    for pid, names in forks:
        assert pid == served.server.process.pid
        assert ("dockerflow-loop" in names) is served.variant.heartbeat_in_arbiter, names
    if served.variant.heartbeat_in_arbiter:
        assert "FORK_APP import-time heartbeat: 200" in served.server.output


# In a subprocess: the connection left on the stopped loop warns when it is collected, and the
# suite turns warnings into errors.
_NEW_LOOP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import redis.asyncio
    from dockerflow.engine import Check, Engine
    from dockerflow.integrations import redis_check

    client = redis.asyncio.Redis.from_url(sys.argv[1], socket_timeout=2)
    engine = Engine(timeout=3.0)
    check = Check("redis", redis_check(client))
    statuses = [engine.run_sync([check]).status]
    engine.close()  # the loop thread stops; the next heartbeat starts a new loop
    statuses += [engine.run_sync([check]).status for _ in range(2)]
    engine.bridge.call(client.aclose)
    engine.close()
    print(json.dumps(statuses))
    """
)


def test_async_redis_check_passes_on_the_loop_that_replaces_the_one_it_used() -> None:
    """The in-process form of the fork hazard: the client's pooled connection belongs to a loop
    that no longer runs (stopped here; in a forked child, the parent's)."""
    result = subprocess.run(
        [sys.executable, "-c", _NEW_LOOP_SCRIPT, redis_url()],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == ["ok", "ok", "ok"], result.stderr
