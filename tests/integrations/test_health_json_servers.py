"""application/health+json from the built-in checks, against the real PostgreSQL and Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis
import sqlalchemy
from flask import Flask

from dockerflow import health
from dockerflow.flask import Dockerflow

from .helpers import SECRET, url_with
from .test_alembic_checks import flask_app, migrate_to

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

SCHEMA = json.loads(
    (Path(__file__).parent.parent / "schemas" / "health-json.schema.json").read_text()
)
ACCEPT = {"Accept": "application/health+json"}


@pytest.fixture
def stop() -> Iterator[list[Dockerflow]]:
    extensions: list[Dockerflow] = []
    yield extensions
    for ext in extensions:
        ext.close()


def health_body(response: Any) -> dict[str, Any]:
    assert response.headers["Content-Type"] == "application/health+json"
    body: dict[str, Any] = json.loads(response.get_data(as_text=True))
    jsonschema.validate(body, SCHEMA)
    return body


def statuses(body: dict[str, Any]) -> dict[str, str]:
    return {key: entries[0]["status"] for key, entries in body["checks"].items()}


def test_flask_sqlalchemy_migrate_and_redis_warn_then_pass(
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
        first = web.get("/__heartbeat__", headers=ACCEPT)
        assert first.status_code == 200  # an unapplied migration is a warning
        body = health_body(first)
        assert body["status"] == "warn"
        assert statuses(body) == {
            "check_database_connected:responseTime": "pass",
            "check_redis_connected:responseTime": "pass",
            "check_migrations_applied:responseTime": "warn",
            # The round trip of SELECT 1 and of PING: values the checks report, in seconds.
            "check_database_connected:round_trip": "pass",
            "check_redis_connected:round_trip": "pass",
        }
        (migrations,) = body["checks"]["check_migrations_applied:responseTime"]
        assert migrations["output"].startswith(f"{health.WARNING_UNAPPLIED_MIGRATION}: ")
        # A real round trip to each server took some time, well under the timeout.
        for (entry,) in body["checks"].values():
            assert 0 < entry["observedValue"] < 3
        migrate_to(database, "head")
        second = health_body(web.get("/__heartbeat__", headers=ACCEPT))
        assert second["status"] == "pass"
        assert set(statuses(second).values()) == {"pass"}
    finally:
        client.close()
        with app.app_context():
            db.engine.dispose()


def test_unreachable_servers_fail_with_masked_output(
    postgres_url: str, refused_port: int, stop: list[Dockerflow]
) -> None:
    app = Flask("health_json_down")
    app.config["DOCKERFLOW_CHECK_TIMEOUT"] = 2.0
    engine = sqlalchemy.create_engine(url_with(postgres_url, port=refused_port, password=SECRET))
    client = redis.Redis.from_url(f"redis://nobody:{SECRET}@127.0.0.1:{refused_port}/0")
    ext = Dockerflow(app, db=engine, redis=client)
    stop.append(ext)
    try:
        response = app.test_client().get("/__heartbeat__", headers=ACCEPT)
        assert response.status_code == 500
        assert SECRET not in response.get_data(as_text=True)
        body = health_body(response)
        assert body["status"] == "fail"
        assert statuses(body) == {
            "check_database_connected:responseTime": "fail",
            "check_redis_connected:responseTime": "fail",
        }
        (db_entry,) = body["checks"]["check_database_connected:responseTime"]
        (redis_entry,) = body["checks"]["check_redis_connected:responseTime"]
        assert db_entry["output"].startswith(f"{health.ERROR_CANNOT_CONNECT_DATABASE}: ")
        assert redis_entry["output"].startswith(f"{health.ERROR_CANNOT_CONNECT_REDIS}: ")
    finally:
        client.close()
        engine.dispose()
