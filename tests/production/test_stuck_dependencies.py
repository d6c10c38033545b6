"""Every dependency hangs: heartbeats still answer within the timeout, and threads stay bounded.

Three black holes (servers that accept and never answer) stand in for PostgreSQL behind asyncpg,
Redis behind ``redis.asyncio`` and PostgreSQL behind a sync SQLAlchemy engine (psycopg2 without
``connect_timeout``: the check sets libpq's, at least 2 s, longer than this timeout); a fourth
check blocks on an event. The async built-in checks are told a short timeout of their own, so
they give up well before the heartbeat's timeout on every heartbeat and report their own "cannot
connect" IDs, however late a loaded machine starts them. Each sync check occupies one thread:
the blocked one is started once and reported as still running after that, never started again
(the SQLAlchemy one is started again only once libpq gives up).

How fast heartbeats answer is measured by ``benchmarks/stuck_dependencies_bench.py``; here they
only have to answer well before anything that waited for a dependency, or for the checks one
after another, could.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio
import sqlalchemy
from flask import Flask
from integrations.helpers import BlackHole

from dockerflow.flask import Dockerflow
from dockerflow.integrations import AsyncpgCheck, redis_check

#: Under libpq's 2 s, so that the SQLAlchemy check's runs always overrun it.
TIMEOUT = 1.5
#: The timeout the async checks are told: their driver calls give up at 80 % of it, far enough
#: under the heartbeat's timeout that a loop slow to start them cannot make the engine's fire.
ASYNC_TIMEOUT = 0.2
#: Seconds a heartbeat may take: under the 3.4 s the checks' timeouts add up to, and the forever
#: that the blocked check and the black holes take.
LATE = 2 * TIMEOUT
HEARTBEATS = 40
CLIENT_THREADS = 8
E011 = "dockerflow.health.E011"
#: What each check reports: the async built-ins bound their own calls under the timeout.
EXPECTED_IDS = {
    "check_database_connected": E011,
    "blocked_forever": E011,
    "asyncpg": "dockerflow.health.E001",
    "check_redis_connected": "dockerflow.health.E004",
}
SYNC_CHECKS = ("check_database_connected", "blocked_forever")
ASYNC_CHECKS = ("asyncpg", "check_redis_connected")


@dataclass
class Stuck:
    app: Flask
    dockerflow: Dockerflow
    holes: list[BlackHole]
    release: threading.Event


@pytest.fixture
def stuck() -> Iterator[Stuck]:
    holes = [BlackHole(), BlackHole(), BlackHole()]
    release = threading.Event()
    app = Flask(__name__)
    app.config["DOCKERFLOW_CHECK_TIMEOUT"] = TIMEOUT
    client = redis.asyncio.Redis(host="127.0.0.1", port=holes[1].port)
    engine = sqlalchemy.create_engine(
        f"postgresql+psycopg2://postgres@127.0.0.1:{holes[2].port}/test"
    )
    dockerflow = Dockerflow(app, db=engine)
    dockerflow.check(redis_check(client, timeout=ASYNC_TIMEOUT), name="check_redis_connected")
    dockerflow.check(
        AsyncpgCheck(
            dsn=f"postgresql://postgres@127.0.0.1:{holes[0].port}/test", timeout=ASYNC_TIMEOUT
        ),
        name="asyncpg",
    )
    dockerflow.check(release.wait, name="blocked_forever")
    try:
        yield Stuck(app, dockerflow, holes, release)
    finally:
        release.set()
        for hole in holes:  # hang up: psycopg2's connect fails and its thread returns
            hole.close()
        bridge = dockerflow._bridge
        if bridge.running:
            bridge.call(client.aclose)
        bridge.stop()
        engine.dispose()


def test_hung_dependencies_time_out_on_every_heartbeat_with_bounded_threads(
    stuck: Stuck,
) -> None:
    baseline = threading.active_count()
    peak = [baseline]

    def heartbeat(_: int) -> tuple[float, int, Any]:
        started = time.monotonic()
        response = stuck.app.test_client().get("/__heartbeat__")
        elapsed = time.monotonic() - started
        peak.append(threading.active_count())
        return elapsed, response.status_code, response.get_json()

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        results = list(pool.map(heartbeat, range(HEARTBEATS)))

    slow = [elapsed for elapsed, _, _ in results if elapsed >= LATE]
    assert not slow, f"{len(slow)} heartbeats took {LATE:g}s or more: {sorted(slow)[-5:]}"
    for _, status, body in results:
        assert status == 500, body
        assert body["checks"] == dict.fromkeys((*SYNC_CHECKS, *ASYNC_CHECKS), "error"), body
        for name in (*SYNC_CHECKS, *ASYNC_CHECKS):
            assert list(body["details"][name]["messages"]) == [EXPECTED_IDS[name]], body
    # The blocked check was started once, then reported as still running, not started again:
    # the last heartbeat began after the first ones had waited out its run's timeout.
    last = results[-1][2]["details"]["blocked_forever"]
    assert "still running" in last["messages"][E011], last
    # The client threads, the loop thread, one thread per stuck sync check, and a few spare.
    allowed = baseline + CLIENT_THREADS + 1 + len(SYNC_CHECKS) + 3
    assert max(peak) <= allowed, f"peak {max(peak)} threads, baseline {baseline}"
    # The async checks are cancelled, not left behind: their connections were closed.
    assert threading.active_count() <= baseline + 1 + len(SYNC_CHECKS) + 3
