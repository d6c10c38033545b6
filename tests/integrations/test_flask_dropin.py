"""Code written for python-dockerflow, run against the real PostgreSQL and Redis servers.

The built-in checks given as ``Dockerflow(app, db=..., redis=..., migrate=...)`` are listed in
``dockerflow.checks.get_checks()``, can be removed there, and are run only by their own app.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, abort, g
from flask_login import LoginManager, UserMixin, login_user
from flask_redis import FlaskRedis

from dockerflow import checks, health
from dockerflow.flask import Dockerflow

from .helpers import url_with
from .test_alembic_checks import flask_app

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def extensions() -> Iterator[list[Dockerflow]]:
    made: list[Dockerflow] = []
    yield made
    for ext in made:
        ext.close()
    checks.clear_checks()


def redis_app(redis_url: str) -> tuple[Flask, Any]:
    app = Flask("redis_app")
    app.config["REDIS_URL"] = redis_url
    return app, FlaskRedis(app)


def test_builtin_checks_are_listed_and_run(
    database: str,
    redis_url: str,
    extensions: list[Dockerflow],
) -> None:
    app, db, migrate = flask_app(database)
    app.config["REDIS_URL"] = redis_url
    store = FlaskRedis(app)
    extensions.append(Dockerflow(app, db=db, redis=store, migrate=migrate))
    registered = checks.get_checks()
    assert list(registered) == [
        "check_database_connected",
        "check_redis_connected",
        "check_migrations_applied",
    ]
    body = app.test_client().get("/__heartbeat__").json
    assert body["checks"] == {
        "check_database_connected": "ok",
        "check_redis_connected": "ok",
        "check_migrations_applied": "warning",  # the scratch database has no migration applied
    }
    # Editing the live registry is how python-dockerflow code drops a check.
    del registered["check_migrations_applied"]
    body = app.test_client().get("/__heartbeat__").json
    assert body == {
        "status": "ok",
        "checks": {"check_database_connected": "ok", "check_redis_connected": "ok"},
        "details": {},
    }
    checks.clear_checks()
    assert app.test_client().get("/__heartbeat__").json["checks"] == {}


def test_two_apps_each_run_their_own_database_check(
    postgres_url: str, refused_port: int, extensions: list[Dockerflow]
) -> None:
    # Flask-SQLAlchemy works with SQLAlchemy 2 from 3.0.3 on, which needs Flask 2.2: the
    # lowest-versions job (make test-min, Flask 2.0) has none.
    SQLAlchemy = pytest.importorskip("flask_sqlalchemy").SQLAlchemy
    good, bad = Flask("good"), Flask("bad")
    good.config["SQLALCHEMY_DATABASE_URI"] = url_with(
        postgres_url, drivername="postgresql+psycopg2"
    )
    bad.config["SQLALCHEMY_DATABASE_URI"] = url_with(
        postgres_url, drivername="postgresql+psycopg2", host="127.0.0.1", port=refused_port
    )
    good_ext = Dockerflow(good, db=SQLAlchemy(good))
    bad_ext = Dockerflow(bad, db=SQLAlchemy(bad))
    extensions.extend([good_ext, bad_ext])
    # One name in the registry (the later one), but each app keeps its own check.
    assert list(checks.get_checks()) == ["check_database_connected"]
    good_response = good.test_client().get("/__heartbeat__")
    bad_response = bad.test_client().get("/__heartbeat__")
    assert (good_response.status_code, good_response.json["status"]) == (200, "ok")
    assert bad_response.status_code == 500
    # The built-in check tells a refused connection apart from other DB-API errors.
    assert list(bad_response.json["details"]["check_database_connected"]["messages"]) == [
        health.ERROR_CANNOT_CONNECT_DATABASE
    ]


def test_redis_failure_silenced_after_init(
    redis_url: str, refused_port: int, extensions: list[Dockerflow]
) -> None:
    app, store = redis_app(url_with(redis_url, host="127.0.0.1", port=refused_port))
    ext = Dockerflow(app, redis=store)
    extensions.append(ext)
    client = app.test_client()
    failing = client.get("/__heartbeat__")
    assert failing.status_code == 500
    assert list(failing.json["details"]["check_redis_connected"]["messages"]) == [
        health.ERROR_CANNOT_CONNECT_REDIS
    ]
    ext.silenced_checks.append(health.ERROR_CANNOT_CONNECT_REDIS)
    assert client.get("/__heartbeat__").status_code == 200


class User(UserMixin):
    def __init__(self, user_id: int) -> None:
        self.id = user_id

    def get_id(self) -> int:  # type: ignore[override]  # an int, as some services return
        return self.id


def test_request_summary_of_a_logged_in_user_and_an_early_answer(
    database: str,
    redis_url: str,
    extensions: list[Dockerflow],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, db, _ = flask_app(database)
    app.secret_key = "test"
    app.config["REDIS_URL"] = redis_url
    store = FlaskRedis(app)
    login = LoginManager(app)
    login.user_loader(lambda user_id: User(int(user_id)))
    limit = 2

    # A rate limiter on the real Redis, registered before the extension, as services do.
    @app.before_request
    def rate_limit() -> Any:
        key = f"dockerflow-test-rate-{id(app)}"
        if store.incr(key) > limit:
            return "slow down", 429
        store.expire(key, 60)
        return None

    @app.route("/me")
    def me() -> str:
        login_user(User(7))
        return str(db.session.execute(db.text("SELECT 1")).scalar())

    extensions.append(Dockerflow(app, db=db, redis=store))
    client = app.test_client()
    with caplog.at_level(logging.INFO, logger="request.summary"):
        responses = [client.get("/me", headers={"X-Request-ID": f"req-{i}"}) for i in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert [r.headers["X-Request-ID"] for r in responses] == ["req-0", "req-1", "req-2"]
    records = [r for r in caplog.records if r.name == "request.summary"]
    assert [(r.rid, r.code) for r in records] == [("req-0", 200), ("req-1", 200), ("req-2", 429)]
    # get_id()'s int, not its str; the session cookie names the user on the 429 too.
    assert [r.uid for r in records] == [7, 7, 7]
    assert all(isinstance(r.t, int) for r in records)


def test_abort_in_an_earlier_hook_is_logged(
    redis_url: str, extensions: list[Dockerflow], caplog: pytest.LogCaptureFixture
) -> None:
    app, store = redis_app(redis_url)
    switch = f"dockerflow-test-maintenance-{id(app)}"

    @app.before_request
    def maintenance() -> None:
        if store.get(switch):
            abort(503)

    @app.route("/")
    def index() -> str:
        return str(g._start_timestamp)

    extensions.append(Dockerflow(app))
    client = app.test_client()
    try:
        store.set(switch, "1", ex=60)
        with caplog.at_level(logging.INFO, logger="request.summary"):
            closed = client.get("/")
        store.delete(switch)
        opened = client.get("/")
    finally:
        store.delete(switch)
    assert closed.status_code == 503
    assert closed.headers["X-Request-ID"]
    (record,) = [r for r in caplog.records if r.name == "request.summary"]
    assert (record.code, record.rid, record.path) == (503, closed.headers["X-Request-ID"], "/")
    assert opened.status_code == 200
    assert float(opened.get_data(as_text=True)) > 0
