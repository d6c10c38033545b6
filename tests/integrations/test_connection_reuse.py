"""A hundred heartbeats of the async checks open a handful of server connections, once."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio
from sqlalchemy.ext.asyncio import create_async_engine

from dockerflow.engine import Check, Engine
from dockerflow.integrations import AsyncpgCheck, builtin_checks, release

from .helpers import asyncpg_dsn, count_backends, unique_name, url_with

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
        Check("asyncpg", asyncpg_check),
        Check("db", named["check_database_connected"]),
        Check("redis", named["check_redis_connected"]),
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
