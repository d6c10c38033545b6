"""Built-in checks recover with their dependency: real servers behind a proxy that goes silent.

Each test runs the check through a :class:`~.helpers.Proxy` in front of the shared server: healthy,
then black-holed (connections accepted and never answered, pooled ones silent for good), then
forwarding again. While silent, the check must report its "cannot connect" ID within its timeout,
and at once on later heartbeats; once the proxy forwards, the check must pass again within its
timeout + 1 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import sqlalchemy
from sqlalchemy.ext.asyncio import create_async_engine

from dockerflow import health
from dockerflow.engine import Check, Engine
from dockerflow.integrations import AsyncpgCheck, database_check, redis_check, release

from .helpers import SLACK, Proxy, asyncpg_dsn, only_message, timed, url_with

pytestmark = pytest.mark.postgres


@pytest.fixture
def released(engine: Engine) -> Iterator[Callable[[Any], Any]]:
    """Register check functions to be released on the checks' loop at teardown."""
    made: list[Any] = []

    def keep(func: Any) -> Any:
        made.append(func)
        return func

    yield keep
    for func in made:
        engine.bridge.call(release, func)


def recovers(engine: Engine, check: Check, proxy: Proxy, cannot_connect: str) -> None:
    """Healthy; silent: reported within the timeout, then at once by the next heartbeats while
    the check retries in the background; healthy again within the timeout + 1 s of the proxy
    forwarding again (issue 21)."""
    timeout = check.timeout or engine.timeout
    assert engine.run_sync([check]).checks == {check.name: "ok"}
    proxy.black_hole()
    for beat in range(3):
        report, took = timed(engine, check)
        msg_id, text = only_message(report, check.name)
        assert msg_id == cannot_connect, text
        assert took < (timeout + SLACK if beat == 0 else timeout / 2), (beat, took)
    proxy.forward()
    started = time.monotonic()
    while engine.run_sync([check]).checks != {check.name: "ok"}:
        assert time.monotonic() - started < timeout + 1.0 + SLACK, "did not recover in time"
        time.sleep(0.05)


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_sqlalchemy_sync(
    engine: Engine,
    postgres_url: str,
    postgres_proxy: Proxy,
    released: Callable[[Any], Any],
    driver: str,
) -> None:
    """libpq counts its connect timeout in whole seconds, at least 2: a 2.5 s timeout here."""
    pytest.importorskip(driver)
    app_engine = sqlalchemy.create_engine(
        url_with(postgres_proxy.url(postgres_url), drivername=f"postgresql+{driver}")
    )
    try:
        func = released(database_check(app_engine, timeout=2.5))
        recovers(
            engine,
            Check("db", func, timeout=2.5),
            postgres_proxy,
            health.ERROR_CANNOT_CONNECT_DATABASE,
        )
    finally:
        app_engine.dispose()


def test_sqlalchemy_async(
    engine: Engine, postgres_url: str, postgres_proxy: Proxy, released: Callable[[Any], Any]
) -> None:
    url = url_with(postgres_proxy.url(postgres_url), drivername="postgresql+asyncpg")
    app_engine = create_async_engine(url)
    func = released(database_check(app_engine, timeout=engine.timeout))
    recovers(engine, Check("db", func), postgres_proxy, health.ERROR_CANNOT_CONNECT_DATABASE)
    engine.bridge.call(app_engine.dispose)


def test_asyncpg(
    engine: Engine, postgres_url: str, postgres_proxy: Proxy, released: Callable[[Any], Any]
) -> None:
    dsn = asyncpg_dsn(postgres_proxy.url(postgres_url))
    func = released(AsyncpgCheck(dsn, timeout=engine.timeout))
    recovers(engine, Check("pg", func), postgres_proxy, health.ERROR_CANNOT_CONNECT_DATABASE)


@pytest.mark.redis
def test_redis_sync(
    engine: Engine, redis_url: str, redis_proxy: Proxy, released: Callable[[Any], Any]
) -> None:
    """The application's client has redis-py's defaults: 5 s timeouts and retries."""
    client = redis.Redis.from_url(redis_proxy.url(redis_url))
    try:
        func = released(redis_check(client, timeout=engine.timeout))
        recovers(engine, Check("redis", func), redis_proxy, health.ERROR_CANNOT_CONNECT_REDIS)
    finally:
        client.close()


@pytest.mark.redis
def test_redis_asyncio(
    engine: Engine, redis_url: str, redis_proxy: Proxy, released: Callable[[Any], Any]
) -> None:
    client = redis.asyncio.Redis.from_url(redis_proxy.url(redis_url))
    func = released(redis_check(client, timeout=engine.timeout))
    recovers(engine, Check("redis", func), redis_proxy, health.ERROR_CANNOT_CONNECT_REDIS)
    engine.bridge.call(client.aclose)
