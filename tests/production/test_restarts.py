"""Dependencies restart under a running app: heartbeats go red with the right IDs, stay fast,
and go green again by themselves, without restarting the app.

Redis and PostgreSQL are private servers (see conftest.py), stopped and started again on the
same ports while background threads keep calling ``/__heartbeat__``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from flask import Flask

from dockerflow import health
from dockerflow.flask import Dockerflow
from dockerflow.integrations import AsyncpgCheck, database_check, redis_check

if TYPE_CHECKING:
    from .conftest import PrivatePostgres, RestartableRedis

CHECK_TIMEOUT = 2.0
#: Seconds a heartbeat may take on top of the check timeout: room for a machine with every core
#: busy; a hang on a stopped or restarting server would go on far longer.
SLACK = 1.5
#: Pause between one background heartbeat and the next, per thread.
BEAT_EVERY = 0.1
#: Background threads calling the heartbeat; more than one, so that runs overlap.
BEATERS = 2

#: The ID each check must report while its server is down: the code's mapping (asyncpg's own
#: check reports a refused connection as E001; SQLAlchemy wraps psycopg2's OperationalError
#: in a DBAPIError, E008; redis-py raises ConnectionError, E004).
DOWN_IDS = {
    "redis_sync": health.ERROR_CANNOT_CONNECT_REDIS,
    "redis_async": health.ERROR_CANNOT_CONNECT_REDIS,
    "postgres_asyncpg": health.ERROR_CANNOT_CONNECT_DATABASE,
    "postgres_sqlalchemy": health.ERROR_CANNOT_CONNECT_DATABASE,
}


@dataclass(frozen=True)
class Beat:
    """One heartbeat a background thread made."""

    started: float
    elapsed: float
    status: int | None = None
    body: Any = None
    error: BaseException | None = None

    @property
    def answered(self) -> float:
        return self.started + self.elapsed

    @property
    def green(self) -> bool:
        return self.status == 200 and self.body["checks"] == dict.fromkeys(DOWN_IDS, "ok")

    @property
    def red(self) -> bool:
        """Every check failing, each with exactly its expected message ID."""
        if self.status != 500 or self.body["checks"] != dict.fromkeys(DOWN_IDS, "error"):
            return False
        details = self.body["details"]
        return all(list(details[name]["messages"]) == [want] for name, want in DOWN_IDS.items())


class Heartbeats:
    """Threads that call ``/__heartbeat__`` every :data:`BEAT_EVERY` seconds and keep every beat."""

    def __init__(self, app: Flask) -> None:
        self._app = app
        self._beats: list[Beat] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"heartbeats-{n}", daemon=True)
            for n in range(BEATERS)
        ]

    def _run(self) -> None:
        client = self._app.test_client()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                response = client.get("/__heartbeat__")
                beat = Beat(
                    started, time.monotonic() - started, response.status_code, response.get_json()
                )
            except BaseException as exc:  # recorded, and the test fails on it
                beat = Beat(started, time.monotonic() - started, error=exc)
            with self._lock:
                self._beats.append(beat)
            self._stop.wait(BEAT_EVERY)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(CHECK_TIMEOUT + 5)

    def beats(self) -> list[Beat]:
        with self._lock:
            return list(self._beats)

    def wait_for(
        self, what: str, predicate: Callable[[list[Beat]], bool], since: float, timeout: float
    ) -> list[Beat]:
        """Wait until ``predicate`` holds for the beats started at or after ``since``.

        :returns: those beats.
        """
        deadline = time.monotonic() + timeout
        while True:
            beats = [beat for beat in self.beats() if beat.started >= since]
            if predicate(beats):
                return beats
            if time.monotonic() > deadline:
                last = beats[-1] if beats else None
                pytest.fail(f"no {what} within {timeout:g}s; last beat: {last}")
            time.sleep(0.02)


@dataclass
class Dependencies:
    redis: RestartableRedis
    postgres: PrivatePostgres

    def stop(self, postgres_mode: str) -> None:
        self.redis.stop()
        self.postgres.stop(postgres_mode)

    def start(self) -> None:
        if not self.redis.running:
            self.redis.start()
        if not self.postgres.running:
            self.postgres.start()


@pytest.fixture
def dependencies(
    restartable_redis: RestartableRedis, private_postgres: PrivatePostgres
) -> Iterator[Dependencies]:
    deps = Dependencies(restartable_redis, private_postgres)
    deps.start()  # the session's server may have been left stopped by a failed test
    try:
        yield deps
    finally:
        deps.start()


@pytest.fixture
def app(dependencies: Dependencies) -> Iterator[Flask]:
    """An app whose four checks talk to the private servers; their clients closed at teardown."""
    import redis
    import redis.asyncio
    import redis.asyncio.retry
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    from sqlalchemy import create_engine

    port = dependencies.redis.port
    # redis-py 8 retries a failed command up to 10 times with backoff by default: no retries,
    # so that a stopped server fails the check at once.
    sync_client = redis.Redis(
        port=port, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    async_client = redis.asyncio.Redis(
        port=port,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
    )
    asyncpg_check = AsyncpgCheck(dsn=dependencies.postgres.dsn, timeout=1.5)
    engine = create_engine(
        dependencies.postgres.dsn.replace("postgresql://", "postgresql+psycopg2://", 1),
        connect_args={"connect_timeout": 1},
    )
    sqlalchemy_check = database_check(engine)

    app = Flask(__name__)
    app.config["DOCKERFLOW_CHECK_TIMEOUT"] = CHECK_TIMEOUT
    dockerflow = Dockerflow(app)
    dockerflow.check(redis_check(sync_client), name="redis_sync")
    dockerflow.check(redis_check(async_client), name="redis_async")
    dockerflow.check(asyncpg_check, name="postgres_asyncpg")
    dockerflow.check(sqlalchemy_check, name="postgres_sqlalchemy")
    try:
        yield app
    finally:
        # The asyncio client's connections belong to the extension's loop: closed there.
        dockerflow.call_in_loop(async_client.aclose)
        dockerflow.close()  # the asyncpg pool and the SQLAlchemy check's own engine
        sync_client.close()
        engine.dispose()


@pytest.fixture
def heartbeats(app: Flask) -> Iterator[Heartbeats]:
    beats = Heartbeats(app)
    beats.start()
    try:
        yield beats
    finally:
        beats.stop()


# fast: PostgreSQL ends its sessions cleanly; immediate: a crash, then recovery at start-up.
@pytest.mark.parametrize("postgres_mode", ["fast", "immediate"])
def test_checks_go_red_and_recover_when_dependencies_restart(
    dependencies: Dependencies, heartbeats: Heartbeats, postgres_mode: str
) -> None:
    began = time.monotonic()
    heartbeats.wait_for("green heartbeat", lambda beats: any(b.green for b in beats), began, 10)

    stopped = time.monotonic()
    dependencies.stop(postgres_mode)
    down = time.monotonic()
    # Every check red with its own ID, within a few heartbeats; then staying red, and exactly
    # so (no timeout, no crash), for a few more heartbeats, while both servers are down.
    red = heartbeats.wait_for("red heartbeat", lambda beats: any(b.red for b in beats), down, 5)
    # Ordered by answers: a heartbeat joining a run in progress answers at once with the
    # check's latest result, so one asked while the first red heartbeat waited for its runs
    # may still be green; every heartbeat asked after a red (green) answer is red (green).
    first_red = min(beat.answered for beat in red if beat.red)
    outage = heartbeats.wait_for(
        "3 more heartbeats during the outage", lambda beats: len(beats) >= 3, first_red, 5
    )

    restarted = time.monotonic()
    dependencies.start()
    up = time.monotonic()
    recovered = heartbeats.wait_for(
        "3 green heartbeats in a row",
        lambda beats: len(beats) >= 3 and all(b.green for b in beats[-3:]),
        up,
        10,
    )

    beats = heartbeats.beats()
    assert [beat.error for beat in beats if beat.error is not None] == []
    slow = [beat for beat in beats if beat.elapsed > CHECK_TIMEOUT + SLACK]
    assert slow == [], f"heartbeats slower than {CHECK_TIMEOUT + SLACK}s"
    assert {beat.status for beat in beats} <= {200, 500}
    not_red = [beat for beat in outage if beat.started < restarted and not beat.red]
    assert not_red == [], "a heartbeat during the outage was not red with the expected IDs"
    # While a server is down or starting up, a check may only report its own ID.
    expected = {name: {want} for name, want in DOWN_IDS.items()}
    for beat in (b for b in beats if stopped <= b.started and b.status == 500):
        for name, detail in beat.body["details"].items():
            assert set(detail["messages"]) <= expected[name], beat
    # Recovered for good: no heartbeat after the first green one fails again.
    first_green = min(beat.answered for beat in recovered if beat.green)
    assert all(beat.green for beat in beats if beat.started >= first_green)
