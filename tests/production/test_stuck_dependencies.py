"""Every dependency hangs: heartbeats still answer within the timeout, and threads stay bounded.

Three black holes (servers that accept and never answer) stand in for PostgreSQL behind asyncpg,
Redis behind ``redis.asyncio`` and PostgreSQL behind a sync SQLAlchemy engine (psycopg2 without
``connect_timeout``, which blocks until the socket closes); a fourth check blocks on an event.
The async built-in checks give up a little before the timeout on every heartbeat and report their
own "cannot connect" IDs; each sync check occupies one thread (libpq's connect timeout is at least
2 s, longer than this timeout), started once and reported as still running after that, never
started again.
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
from dockerflow.integrations import AsyncpgCheck

TIMEOUT = 0.8
#: How long past the timeout a heartbeat may take to answer.
SLACK = 0.2
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
    dockerflow = Dockerflow(app, db=engine, redis=client)
    dockerflow.check(
        AsyncpgCheck(dsn=f"postgresql://postgres@127.0.0.1:{holes[0].port}/test"), name="asyncpg"
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

    slow = [elapsed for elapsed, _, _ in results if elapsed > TIMEOUT + SLACK]
    assert not slow, f"{len(slow)} heartbeats took over {TIMEOUT + SLACK:g}s: {sorted(slow)[-5:]}"
    for _, status, body in results:
        assert status == 500, body
        assert body["checks"] == dict.fromkeys((*SYNC_CHECKS, *ASYNC_CHECKS), "error"), body
        for name in (*SYNC_CHECKS, *ASYNC_CHECKS):
            assert list(body["details"][name]["messages"]) == [EXPECTED_IDS[name]], body
    # Every sync check was started once and then reported as still running, not started again.
    last = results[-1][2]["details"]
    for name in SYNC_CHECKS:
        assert "still running" in last[name]["messages"][E011], last[name]
    # The client threads, the loop thread, one thread per stuck sync check, and a few spare.
    allowed = baseline + CLIENT_THREADS + 1 + len(SYNC_CHECKS) + 3
    assert max(peak) <= allowed, f"peak {max(peak)} threads, baseline {baseline}"
    # The async checks are cancelled, not left behind: their connections were closed.
    assert threading.active_count() <= baseline + 1 + len(SYNC_CHECKS) + 3
