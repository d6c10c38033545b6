"""A ``BaseException`` that a driver raises of itself fails the built-in check; a cancellation
of the check's own task still goes through.

``asyncio.CancelledError`` is a ``BaseException``: a driver that raises one of itself (it does
happen, from a connection's internals) must not make the check escape as if it were cancelled.
Each built-in check is called directly here (the engine's own handling is tested apart), with
the ``CancelledError`` raised from the driver's side: a ``do_connect`` hook of the application's
engine, asyncpg's ``init`` callback, a Redis client's ``ping``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio
import sqlalchemy
from sqlalchemy.ext.asyncio import create_async_engine

from dockerflow import health
from dockerflow.integrations import (
    AsyncpgCheck,
    check_database_connected,
    check_database_connected_async,
    check_redis_connected,
    check_redis_connected_async,
    database_check,
    migrations_check,
    redis_check,
    release,
)

from .helpers import ALEMBIC_APP, asyncpg_dsn, url_with


def ids(messages: Any) -> list[str]:
    return [message.id for message in messages]


def cancel_from_the_driver(*args: Any) -> None:
    raise asyncio.CancelledError("raised by the driver itself")


@pytest.fixture
def sync_app(postgres_url: str) -> Iterator[sqlalchemy.Engine]:
    """An application engine whose driver raises CancelledError when connecting."""
    app = sqlalchemy.create_engine(url_with(postgres_url, drivername="postgresql+psycopg2"))
    sqlalchemy.event.listen(app, "do_connect", cancel_from_the_driver)
    yield app
    app.dispose()


@pytest.mark.postgres
def test_sqlalchemy_sync(sync_app: sqlalchemy.Engine) -> None:
    check = database_check(sync_app)
    assert ids(check()) == [health.ERROR_CANNOT_CONNECT_DATABASE]
    assert ids(check_database_connected(sync_app)) == [health.ERROR_DB_API_EXCEPTION]
    check.args[0].dispose()


@pytest.mark.postgres
def test_alembic_sync(sync_app: sqlalchemy.Engine) -> None:
    check = migrations_check(script_location=ALEMBIC_APP, engine=sync_app)
    assert ids(check()) == [health.INFO_CANT_CHECK_MIGRATIONS]


@pytest.mark.postgres
@pytest.mark.anyio
async def test_sqlalchemy_and_alembic_async(postgres_url: str) -> None:
    app = create_async_engine(url_with(postgres_url, drivername="postgresql+asyncpg"))
    sqlalchemy.event.listen(app.sync_engine, "do_connect", cancel_from_the_driver)
    try:
        check = database_check(app)
        assert ids(await check()) == [health.ERROR_CANNOT_CONNECT_DATABASE]
        assert ids(await check_database_connected_async(app)) == [health.ERROR_DB_API_EXCEPTION]
        migrations = migrations_check(script_location=ALEMBIC_APP, engine=app)
        assert ids(await migrations()) == [health.INFO_CANT_CHECK_MIGRATIONS]
        await release(check)
        await release(migrations)
    finally:
        await app.dispose()


@pytest.mark.postgres
@pytest.mark.anyio
async def test_asyncpg(postgres_url: str) -> None:
    async def init(connection: Any) -> None:
        raise asyncio.CancelledError("raised by the driver itself")

    check = AsyncpgCheck(asyncpg_dsn(postgres_url), init=init)
    try:
        assert ids(await check()) == [health.ERROR_DB_API_EXCEPTION]
    finally:
        await check.close()


class CancelledPing(redis.Redis):
    def ping(self, **kwargs: Any) -> Any:
        raise asyncio.CancelledError("raised by the driver itself")


class AsyncCancelledPing(redis.asyncio.Redis):
    async def ping(self, **kwargs: Any) -> Any:
        raise asyncio.CancelledError("raised by the driver itself")


class HangingPing(redis.asyncio.Redis):
    async def ping(self, **kwargs: Any) -> Any:
        await anyio.sleep_forever()


def test_redis_sync() -> None:
    client = CancelledPing()
    assert ids(redis_check(client)()) == [health.ERROR_REDIS_EXCEPTION]
    assert ids(check_redis_connected(client)) == [health.ERROR_REDIS_EXCEPTION]


@pytest.mark.anyio
async def test_redis_async() -> None:
    client = AsyncCancelledPing()
    assert ids(await redis_check(client)()) == [health.ERROR_REDIS_EXCEPTION]
    assert ids(await check_redis_connected_async(client)) == [health.ERROR_REDIS_EXCEPTION]
    await client.aclose()


@pytest.mark.anyio
async def test_a_cancellation_of_the_checks_task_goes_through() -> None:
    """The engine's timeout cancels the check's task: the check must not report it as its
    failure and carry on."""
    client = HangingPing()
    outcomes: list[Any] = []
    for check in (redis_check(client, timeout=30), lambda: check_redis_connected_async(client)):
        with anyio.move_on_after(0.1) as scope:
            outcomes.append(await check())
        assert scope.cancelled_caught
    assert outcomes == []
    await client.aclose()
