"""A hundred heartbeats of the async checks open a handful of server connections, once."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio
from sqlalchemy.ext.asyncio import create_async_engine

from dockerflow.engine import Check, Engine
from dockerflow.integrations import AsyncpgCheck, builtin_checks, release

from .helpers import ANSWER, asyncpg_dsn, count_backends, unique_name, url_with

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def test_hundred_heartbeats_reuse_their_connections(
    engine: Engine, postgres_url: str, redis_url: str
) -> None:
    pg_name, sa_name, redis_name = unique_name("pg"), unique_name("sa"), unique_name("redis")
    asyncpg_check = AsyncpgCheck(
        asyncpg_dsn(postgres_url), server_settings={"application_name": pg_name}
    )
    app_engine = create_async_engine(
        url_with(postgres_url, drivername="postgresql+asyncpg"),
        connect_args={"server_settings": {"application_name": sa_name}},
    )
    client = redis.asyncio.Redis.from_url(redis_url, client_name=redis_name)
    named = dict(builtin_checks(db=app_engine, redis=client))
    check_engine = named["check_database_connected"].args[0]
    checks = [
        Check("asyncpg", asyncpg_check, timeout=ANSWER),
        Check("db", named["check_database_connected"], timeout=ANSWER),
        Check("redis", named["check_redis_connected"], timeout=ANSWER),
    ]
    admin = redis.Redis.from_url(redis_url)
    try:
        assert engine.run_sync(checks).status == "ok"
        pools = (
            engine.bridge.call(asyncpg_check.get_pool),
            engine.bridge.call(_sync_pool_of, check_engine),
            client.connection_pool,
        )
        for _ in range(99):
            assert engine.run_sync(checks).status == "ok"

        assert count_backends(postgres_url, pg_name) == 1
        assert count_backends(postgres_url, sa_name) == 1
        assert [c["name"] for c in admin.client_list()].count(redis_name) == 1
        assert pools == (
            engine.bridge.call(asyncpg_check.get_pool),
            engine.bridge.call(_sync_pool_of, check_engine),
            client.connection_pool,
        )
    finally:
        admin.close()
        engine.bridge.call(asyncpg_check.close)
        engine.bridge.call(check_engine.dispose)
        engine.bridge.call(release, named["check_redis_connected"])
        engine.bridge.call(app_engine.dispose)
        engine.bridge.call(client.aclose)


async def _sync_pool_of(check_engine: object) -> object:
    return check_engine.engine.sync_engine.pool  # type: ignore[attr-defined]


def test_pools_of_the_async_checks_end_with_their_loop(postgres_url: str, redis_url: str) -> None:
    """Five ``asyncio.run(run_checks_async(...))`` calls leave no pool and no connection."""
    import asyncio

    from dockerflow.checks import run_checks_async

    pg_name, sa_name, redis_name = unique_name("pg"), unique_name("sa"), unique_name("redis")
    asyncpg_check = AsyncpgCheck(
        asyncpg_dsn(postgres_url), server_settings={"application_name": pg_name}
    )
    app_engine = create_async_engine(
        url_with(postgres_url, drivername="postgresql+asyncpg"),
        connect_args={"server_settings": {"application_name": sa_name}},
    )
    named = dict(builtin_checks(db=app_engine))
    pairs = [("asyncpg", asyncpg_check), ("db", named["check_database_connected"])]
    admin = redis.Redis.from_url(redis_url)
    during: list[tuple[int, int, int]] = []

    async def heartbeat() -> None:
        # A fresh client on each loop, as an async app makes one per loop.
        client = redis.asyncio.Redis.from_url(redis_url, client_name=redis_name)
        redis_check = dict(builtin_checks(redis=client))["check_redis_connected"]
        results = await run_checks_async([*pairs, ("redis", redis_check)])
        assert results.level == 0, results.details
        during.append(
            (
                count_backends(postgres_url, pg_name),
                count_backends(postgres_url, sa_name),
                [c["name"] for c in admin.client_list()].count(redis_name),
            )
        )
        await client.aclose()

    try:
        for _ in range(5):
            asyncio.run(heartbeat())
        # Each loop had its pools while it ran, and closed them when it ended.
        assert all(pg >= 1 and sa >= 1 for pg, sa, _ in during), during
        assert count_backends(postgres_url, pg_name) == 0
        assert count_backends(postgres_url, sa_name) == 0
        assert [c["name"] for c in admin.client_list()].count(redis_name) == 0
    finally:
        admin.close()
