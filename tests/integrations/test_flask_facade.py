"""``Dockerflow(app, db=..., redis=..., migrate=...)`` end to end, against the real servers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from flask import Flask
from sqlalchemy.ext.asyncio import create_async_engine

from dockerflow import health
from dockerflow.flask import Dockerflow
from dockerflow.integrations import AsyncpgCheck

from .helpers import SECRET, asyncpg_dsn, url_with
from .test_alembic_checks import flask_app, migrate_to

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def stop() -> Iterator[list[Dockerflow]]:
    extensions: list[Dockerflow] = []
    yield extensions
    for ext in extensions:
        ext.close()


def test_flask_sqlalchemy_migrate_and_redis(
    database: str,
    redis_url: str,
    stop: list[Dockerflow],
) -> None:
    app, db, migrate = flask_app(database)
    client = redis.Redis.from_url(redis_url)
    ext = Dockerflow(app, db=db, redis=client, migrate=migrate)
    stop.append(ext)
    web = app.test_client()
    try:
        first = web.get("/__heartbeat__")
        assert first.status_code == 200  # an unapplied migration is a warning
        assert first.json["checks"] == {
            "check_database_connected": "ok",
            "check_redis_connected": "ok",
            "check_migrations_applied": "warning",
        }
        assert list(first.json["details"]["check_migrations_applied"]["messages"]) == [
            health.WARNING_UNAPPLIED_MIGRATION
        ]
        migrate_to(database, "head")
        second = web.get("/__heartbeat__")
        assert second.json == {
            "status": "ok",
            "checks": dict.fromkeys(first.json["checks"], "ok"),
            "details": {},
        }
    finally:
        client.close()
        ext.close()
        with app.app_context():
            db.engine.dispose()


def test_async_clients_and_a_broken_database(
    postgres_url: str, redis_url: str, stop: list[Dockerflow]
) -> None:
    app = Flask("async_facade")
    app.config["DOCKERFLOW_CHECK_TIMEOUT"] = 2.0
    engine = create_async_engine(url_with(postgres_url, drivername="postgresql+asyncpg"))
    client = redis.asyncio.Redis.from_url(redis_url)
    ext = Dockerflow(app, db=engine, redis=client)
    stop.append(ext)
    broken = AsyncpgCheck(
        dsn=url_with(asyncpg_dsn(postgres_url), database="no_such_db", password=SECRET)
    )
    ext.check(broken, name="reporting_db")
    pool_check = AsyncpgCheck(dsn=asyncpg_dsn(postgres_url))
    ext.check(pool_check, name="pool")
    try:
        for _ in range(3):
            response = app.test_client().get("/__heartbeat__")
        body: dict[str, Any] = response.json
        assert response.status_code == 500
        assert body["checks"] == {
            "check_database_connected": "ok",
            "check_redis_connected": "ok",
            "reporting_db": "error",
            "pool": "ok",
        }
        assert list(body["details"]["reporting_db"]["messages"]) == [
            health.ERROR_CANNOT_CONNECT_DATABASE
        ]
        assert SECRET not in response.get_data(as_text=True)
    finally:
        ext.call_in_loop(client.aclose)
        ext.call_in_loop(engine.dispose)
