"""The Redis checks, sync (redis.Redis) and async (redis.asyncio), against real Redis servers."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from dockerflow import health
from dockerflow.engine import DEFAULT_TIMEOUT, Check, Engine
from dockerflow.integrations import driver_timeout, release
from dockerflow.integrations.redis import (
    check_redis_connected,
    check_redis_connected_async,
    redis_check,
)

from .helpers import (
    ANSWER,
    SECRET,
    SLACK,
    BlackHole,
    PrivateRedis,
    only_message,
    timed,
    unique_name,
    wait_until,
)

pytestmark = pytest.mark.redis

NO_RETRY = Retry(NoBackoff(), 0)


@pytest.fixture(autouse=True)
def released_checks(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close the connections of every check a test makes, on the checks' loop, at teardown."""
    made: list[Any] = []
    make = redis_check

    def tracked(client: Any, **kwargs: Any) -> Any:
        func = make(client, **kwargs)
        made.append(func)
        return func

    monkeypatch.setitem(globals(), "redis_check", tracked)
    yield
    for func in made:
        engine.bridge.call(release, func)


@pytest.fixture
def make_client() -> Iterator[Callable[..., redis.Redis]]:
    """Make sync clients from URLs; closed at teardown."""
    clients: list[redis.Redis] = []

    def make(url: str, **kwargs: Any) -> redis.Redis:
        client = redis.Redis.from_url(url, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def make_async_client(engine: Engine) -> Iterator[Callable[..., redis.asyncio.Redis]]:
    """Make asyncio clients from URLs; closed on the checks' loop at teardown."""
    clients: list[redis.asyncio.Redis] = []

    def make(url: str, **kwargs: Any) -> redis.asyncio.Redis:
        client = redis.asyncio.Redis.from_url(url, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        engine.bridge.call(client.aclose)


def port_url(port: int, password: str | None = None) -> str:
    auth = f"nobody:{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{port}/0"


# Sync.


def test_sync_healthy(engine: Engine, make_client: Callable[..., Any], redis_url: str) -> None:
    func = redis_check(make_client(redis_url))
    assert not inspect.iscoroutinefunction(func)
    assert engine.run_sync([Check("redis", func, timeout=ANSWER)]).checks == {"redis": "ok"}


def test_sync_refused(engine: Engine, make_client: Callable[..., Any], refused_port: int) -> None:
    client = make_client(port_url(refused_port), retry=NO_RETRY)
    report, took = timed(engine, Check("redis", redis_check(client)))
    msg_id, text = only_message(report, "redis")
    assert msg_id == health.ERROR_CANNOT_CONNECT_REDIS
    assert "Connection refused" in text
    assert took < engine.timeout + SLACK


class Wrapped(redis.Redis):
    """A client whose ping is its own: the check pings it as it is, with its own timeouts."""

    def ping(self, **kwargs: Any) -> Any:
        return super().ping(**kwargs)


def test_sync_unbounded_client_of_its_own_is_bounded_by_the_engine_and_warned_about(
    engine: Engine, black_hole: BlackHole, caplog: pytest.LogCaptureFixture
) -> None:
    client = Wrapped.from_url(port_url(black_hole.port), socket_timeout=None, retry=NO_RETRY)
    check = Check("redis", redis_check(client, timeout=engine.timeout))
    try:
        report, took = timed(engine, check)
        assert only_message(report, "redis")[0] == health.ERROR_CHECK_TIMEOUT
        # The ping never returns while the black hole is open: answering at all is the point.
        assert took < 5 * engine.timeout
        report, took = timed(engine, check)
        # It shares the stuck run (not a new one, not a new wait): answered without waiting.
        assert "still running" in only_message(report, "redis")[1]
        assert took < engine.timeout
        black_hole.close()  # the server hangs up: the thread returns, the check runs again
        wait_until(
            lambda: (
                only_message(engine.run_sync([check]), "redis")[0]
                == health.ERROR_CANNOT_CONNECT_REDIS
            )
        )
    finally:
        client.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "dockerflow.integrations"]
    assert len(warnings) == 1, warnings  # once, however many heartbeats
    assert "socket_timeout (None) is not under the check's timeout (1s)" in warnings[0]


def test_sync_bounded_client_is_not_warned_about(
    engine: Engine, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = Wrapped.from_url(redis_url, socket_timeout=0.5)
    try:
        assert engine.run_sync([Check("redis", redis_check(client, timeout=1))]).checks == {
            "redis": "ok"
        }
    finally:
        client.close()
    assert not [r for r in caplog.records if r.name == "dockerflow.integrations"]


def test_sync_black_hole_is_reported_within_the_timeout(
    engine: Engine, make_client: Callable[..., Any], black_hole: BlackHole
) -> None:
    """The check pings through a client of its own, bounded a little under its timeout.

    Told a 0.5 s timeout, the check bounds its ping at 0.4 s; the engine gives it far longer, so
    that a worker thread started late on a loaded machine cannot make the engine's timeout
    (``E011``) fire before the driver's: that race belongs to production, not to this test.
    """
    client = make_client(port_url(black_hole.port), socket_timeout=None)
    told = 0.5
    check = Check("redis", redis_check(client, timeout=told), timeout=10 * told)
    for _ in range(2):  # the thread returned, so the check runs each time
        report, took = timed(engine, check)
        msg_id, text = only_message(report, "redis")
        assert msg_id == health.ERROR_CANNOT_CONNECT_REDIS
        assert "Timeout" in text
        # Not before its own bound, and by that bound, not by the default timeout's (2.5 s).
        assert driver_timeout(told) <= took < driver_timeout(DEFAULT_TIMEOUT)


def test_sync_wrong_credentials_never_show_the_password(
    engine: Engine,
    make_client: Callable[..., Any],
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = redis_url.replace("redis://", f"redis://nobody:{SECRET}@")
    report = engine.run_sync([Check("redis", redis_check(make_client(url)), timeout=ANSWER)])
    msg_id, text = only_message(report, "redis")
    assert msg_id == health.ERROR_CANNOT_CONNECT_REDIS
    assert "invalid username-password pair" in text
    assert SECRET not in repr(report.as_dict())
    assert SECRET not in caplog.text


def test_sync_other_redis_error(
    engine: Engine, make_client: Callable[..., Any], private_redis: Callable[..., PrivateRedis]
) -> None:
    """A server that does not know PING (renamed away) answers with an error: E010."""
    server = private_redis("--rename-command", "PING", "")
    report = engine.run_sync([Check("redis", redis_check(make_client(server.url)), timeout=ANSWER)])
    msg_id, text = only_message(report, "redis")
    assert msg_id == health.ERROR_REDIS_EXCEPTION
    assert "unknown command" in text


def test_sync_server_stops_and_comes_back(
    engine: Engine, make_client: Callable[..., Any], private_redis: Callable[..., PrivateRedis]
) -> None:
    server = private_redis()
    check = Check("redis", redis_check(make_client(server.url, retry=NO_RETRY)), timeout=ANSWER)
    assert engine.run_sync([check]).checks == {"redis": "ok"}
    server.stop()
    assert only_message(engine.run_sync([check]), "redis")[0] == health.ERROR_CANNOT_CONNECT_REDIS
    server.start()
    assert engine.run_sync([check]).checks == {"redis": "ok"}


def test_falsy_ping_reply(engine: Engine, redis_url: str) -> None:
    """No server answers PING with a falsy reply; a client that reports one stands in."""

    class Muted(redis.Redis):
        def ping(self, **kwargs: Any) -> bool:
            super().ping(**kwargs)
            return False

    client = Muted.from_url(redis_url)
    try:
        report = engine.run_sync([Check("redis", redis_check(client), timeout=ANSWER)])
    finally:
        client.close()
    assert only_message(report, "redis") == (health.ERROR_REDIS_PING_FAILED, "Redis ping failed")


def test_flask_redis_store(engine: Engine, redis_url: str) -> None:
    flask = pytest.importorskip("flask")
    flask_redis = pytest.importorskip("flask_redis")
    app = flask.Flask(__name__)
    app.config["REDIS_URL"] = redis_url
    store = flask_redis.FlaskRedis()
    func = redis_check(store)  # before init_app: the client is looked up at each check
    assert only_message(engine.run_sync([Check("redis", func, timeout=ANSWER)]), "redis")[0] == (
        health.ERROR_MISSING_REDIS_CLIENT
    )
    store.init_app(app)
    try:
        assert engine.run_sync([Check("redis", func, timeout=ANSWER)]).checks == {"redis": "ok"}
        assert check_redis_connected(store) == []
    finally:
        store._redis_client.close()


def test_sync_function_refuses_an_asyncio_client(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    with pytest.raises(TypeError, match="use check_redis_connected_async"):
        check_redis_connected(client)


def test_redis_check_rejects_other_objects() -> None:
    with pytest.raises(TypeError, match=r"redis\.Redis, a redis\.asyncio\.Redis or a Flask-Redis"):
        redis_check("redis://localhost")
    with pytest.raises(TypeError):
        redis_check(None)


# Async.


def test_async_healthy(
    engine: Engine, make_async_client: Callable[..., redis.asyncio.Redis], redis_url: str
) -> None:
    func = redis_check(make_async_client(redis_url))
    assert inspect.iscoroutinefunction(type(func).__call__)
    assert engine.run_sync([Check("redis", func, timeout=ANSWER)]).checks == {"redis": "ok"}


def test_async_refused(
    engine: Engine, make_async_client: Callable[..., redis.asyncio.Redis], refused_port: int
) -> None:
    client = make_async_client(
        port_url(refused_port), retry=redis.asyncio.retry.Retry(NoBackoff(), 0)
    )
    report, took = timed(engine, Check("redis", redis_check(client)))
    msg_id, text = only_message(report, "redis")
    assert msg_id == health.ERROR_CANNOT_CONNECT_REDIS
    assert "Connect call failed" in text or "refused" in text
    assert took < engine.timeout + SLACK


def test_async_black_hole_is_cancelled_at_the_timeout(
    engine: Engine, make_async_client: Callable[..., redis.asyncio.Redis], black_hole: BlackHole
) -> None:
    """A ping bounded far past the engine's timeout (59.5 s) is cancelled at that timeout."""
    check = Check("redis", redis_check(make_async_client(port_url(black_hole.port)), timeout=60))
    for beat in range(2):
        report, took = timed(engine, check)
        msg_id, text = only_message(report, "redis")
        assert msg_id == health.ERROR_CHECK_TIMEOUT
        assert "still running" not in text
        if beat == 0:
            assert engine.timeout <= took < 5 * engine.timeout
        else:  # failing by timeout: answered at once while a run retries in the background
            assert took < engine.timeout / 2
        # Cancelled, each run ends soon after its timeout (within CANCEL_WAIT, unless the
        # machine is loaded); left going, it would run for 59.5 s.
        wait_until(lambda: not engine.stuck_runs())


def test_async_wrong_credentials_never_show_the_password(
    engine: Engine,
    make_async_client: Callable[..., redis.asyncio.Redis],
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = redis_url.replace("redis://", f"redis://nobody:{SECRET}@")
    report = engine.run_sync([Check("redis", redis_check(make_async_client(url)), timeout=ANSWER)])
    msg_id, text = only_message(report, "redis")
    assert msg_id == health.ERROR_CANNOT_CONNECT_REDIS
    assert "invalid username-password pair" in text
    assert SECRET not in repr(report.as_dict())
    assert SECRET not in caplog.text


def test_async_other_redis_error(
    engine: Engine,
    make_async_client: Callable[..., redis.asyncio.Redis],
    private_redis: Callable[..., PrivateRedis],
) -> None:
    server = private_redis("--rename-command", "PING", "")
    report = engine.run_sync(
        [Check("redis", redis_check(make_async_client(server.url)), timeout=ANSWER)]
    )
    assert only_message(report, "redis")[0] == health.ERROR_REDIS_EXCEPTION


def test_async_one_connection_across_heartbeats(
    engine: Engine,
    make_async_client: Callable[..., redis.asyncio.Redis],
    make_client: Callable[..., redis.Redis],
    redis_url: str,
) -> None:
    name = unique_name()
    client = make_async_client(redis_url, client_name=name)
    check = Check("redis", redis_check(client), timeout=ANSWER)
    pool = client.connection_pool
    for _ in range(100):
        assert engine.run_sync([check]).checks == {"redis": "ok"}
    assert client.connection_pool is pool
    admin = make_client(redis_url)
    assert [c["name"] for c in admin.client_list()].count(name) == 1


def test_async_function_with_a_flask_redis_style_wrapper(
    engine: Engine, make_async_client: Callable[..., redis.asyncio.Redis], redis_url: str
) -> None:
    class Store:  # Flask-Redis's FlaskRedis.from_custom_provider(redis.asyncio.Redis) shape
        def __init__(self, client: redis.asyncio.Redis) -> None:
            self._redis_client = client

    store = Store(make_async_client(redis_url))
    func = redis_check(store)
    assert inspect.iscoroutinefunction(type(func).__call__)
    assert engine.run_sync([Check("redis", func, timeout=ANSWER)]).checks == {"redis": "ok"}

    async def direct() -> Any:
        return await check_redis_connected_async(store)

    assert engine.run_sync([Check("redis", direct, timeout=ANSWER)]).checks == {"redis": "ok"}
