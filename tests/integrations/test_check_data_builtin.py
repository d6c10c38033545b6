"""The values the built-in checks report beside their messages (``CheckData``): what each
knows at no extra cost, against the real servers."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.asyncio
import sqlalchemy

from dockerflow.engine import Check, Engine
from dockerflow.integrations import database_check, redis_check, release
from dockerflow.integrations.sqlalchemy import check_database_connected

from .helpers import ANSWER, url_with


def values(engine: Engine, func: Any) -> dict[str, Any]:
    detail = engine.run_sync([Check("c", func, timeout=ANSWER)]).results["c"]
    assert detail.level == 0, detail.messages
    return {name: item.as_dict() for name, item in detail.data.items()}


@pytest.mark.postgres
@pytest.mark.parametrize("driver", ["postgresql+psycopg2", "postgresql+asyncpg"])
def test_database_check_reports_its_round_trip(
    engine: Engine, postgres_url: str, driver: str
) -> None:
    url = url_with(postgres_url, drivername=driver)
    if driver.endswith("asyncpg"):
        from sqlalchemy.ext.asyncio import create_async_engine

        app: Any = create_async_engine(url)
    else:
        app = sqlalchemy.create_engine(url)
    func = database_check(app)
    try:
        data = values(engine, func)
        assert data["round_trip"]["unit"] == "s"
        assert 0 < data["round_trip"]["value"] < 1
    finally:
        engine.bridge.call(release, func)
        if driver.endswith("asyncpg"):
            engine.bridge.call(app.dispose)
        else:
            app.dispose()


@pytest.mark.postgres
def test_python_dockerflows_database_check_returns_messages_only(postgres_url: str) -> None:
    app = sqlalchemy.create_engine(url_with(postgres_url, drivername="postgresql+psycopg2"))
    try:
        assert check_database_connected(app) == []
    finally:
        app.dispose()


@pytest.mark.redis
@pytest.mark.parametrize("variant", ["sync", "async"])
def test_redis_check_reports_its_round_trip_and_the_servers_version(
    engine: Engine, redis_url: str, variant: str
) -> None:
    client: Any = (redis.Redis if variant == "sync" else redis.asyncio.Redis).from_url(redis_url)
    with redis.Redis.from_url(redis_url) as plain:
        version = plain.info("server")["redis_version"]
    func = redis_check(client)
    try:
        data = values(engine, func)
        assert data["server_version"] == {"value": version}
        assert data["round_trip"]["unit"] == "s" and 0 < data["round_trip"]["value"] < 1
    finally:
        engine.bridge.call(release, func)
