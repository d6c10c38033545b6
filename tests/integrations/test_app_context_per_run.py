"""Checks written as python-dockerflow users write them (``db.session``, ``current_app``), run
inside a real Flask-SQLAlchemy app against the real PostgreSQL: each run of a check gets an app
context of its own, and nothing of the request or of the app's pool is left behind."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import flask
import pytest
from flask import Flask, current_app
from sqlalchemy import create_engine, text

from dockerflow import health
from dockerflow.checks import Error
from dockerflow.flask import Dockerflow

from .helpers import url_with, wait_until

pytestmark = pytest.mark.postgres

# Not installed by make test-min (Flask 2.0): Flask-SQLAlchemy needs Flask 2.2 with SQLAlchemy 2.
SQLAlchemy = pytest.importorskip("flask_sqlalchemy").SQLAlchemy


class App:
    """A Flask app with Flask-SQLAlchemy on the shared PostgreSQL and the Dockerflow extension."""

    def __init__(self, postgres_url: str, **config: Any) -> None:
        self.flask = Flask(f"ctx_{time.monotonic_ns()}")
        self.flask.config["SQLALCHEMY_DATABASE_URI"] = url_with(
            postgres_url, drivername="postgresql+psycopg2"
        )
        self.flask.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_size": 5, "max_overflow": 0}
        self.flask.config.update(config)
        self.db = SQLAlchemy(self.flask)
        self.dockerflow = Dockerflow(self.flask)

    def checked_out(self) -> int:
        with self.flask.app_context():
            return int(self.db.engine.pool.checkedout())

    def sessions(self) -> int:
        """Sessions alive in Flask-SQLAlchemy's scoped registry (one per app context scope)."""
        return len(self.db.session.registry.registry)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.dockerflow.close()
        with self.flask.app_context():
            self.db.engine.dispose()


@pytest.fixture
def app(postgres_url: str) -> Iterator[App]:
    made = App(postgres_url)
    yield made
    made.close()


def test_concurrent_db_session_checks_never_share_a_session(app: App) -> None:
    db = app.db
    for index in range(4):

        def sync_check(index: int = index) -> list[Error]:
            assert current_app.name == app.flask.name
            db.session.execute(text("select pg_sleep(0.02)"))
            return []

        app.dockerflow.check(sync_check, name=f"sync_{index}")

    for index in range(2):

        async def async_check(index: int = index) -> list[Error]:
            # current_app works in an async check too: its own app context, in its own task.
            return [] if current_app.name == app.flask.name else [Error("wrong app", id="x.E1")]

        app.dockerflow.check(async_check, name=f"async_{index}")

    web = app.flask.test_client()
    failures = []
    for _ in range(100):
        response = web.get("/__heartbeat__")
        if response.status_code != 200:
            failures.append(response.json)
        # Every check's app context was popped when it returned: its session is removed and
        # its connection is back in the pool before the heartbeat answers.
        assert app.checked_out() == 0
    assert failures == []
    assert app.sessions() == 0


def test_a_db_session_check_that_overruns_its_timeout_gives_its_connection_back(
    app: App, postgres_url: str
) -> None:
    db = app.db
    finished = threading.Event()
    # The check's query waits on an advisory lock this test holds: it overruns its timeout
    # for as long as the test wants, however slow the machine (the lock is released below;
    # lock_timeout only bounds the wait if the heartbeat wrongly waited for the check).
    key = secrets.randbits(62)
    holder = create_engine(url_with(postgres_url, drivername="postgresql+psycopg2"))

    first = [True]

    @app.dockerflow.check(timeout=0.2)
    def slow_query() -> None:
        # Slow the first time only: the run retried in the background after it passes.
        try:
            if first:
                first.pop()
                db.session.execute(text("set local lock_timeout = '20s'"))
                db.session.execute(text("select pg_advisory_xact_lock_shared(:key)"), {"key": key})
            else:
                db.session.execute(text("select 1"))
        finally:
            finished.set()

    try:
        with holder.connect() as lock:
            lock.execute(text("select pg_advisory_lock(:key)"), {"key": key})
            started = time.perf_counter()
            response = app.flask.test_client().get("/__heartbeat__")
            # Answered at the check's timeout, not at the end of the check's query.
            assert time.perf_counter() - started < 10
            assert response.status_code == 500
            messages = response.json["details"]["slow_query"]["messages"]
            assert list(messages) == [health.ERROR_CHECK_TIMEOUT]
            # The request is over, the check still runs in its thread with its own app context.
            assert not finished.is_set()
            assert app.checked_out() == 1
            lock.execute(text("select pg_advisory_unlock(:key)"), {"key": key})
        assert finished.wait(10)
        # Also once the background retry (if any) is over.
        wait_until(lambda: app.checked_out() == 0 and app.sessions() == 0)
    finally:
        holder.dispose()


def test_a_background_check_gets_a_fresh_app_context_per_run(app: App) -> None:
    db = app.db
    seen: list[dict[str, Any]] = []

    @app.dockerflow.check(interval=0.05)
    def refreshed() -> None:
        db.session.execute(text("select 1"))
        seen.append(
            {
                "request": flask.has_request_context(),
                "g": dict(flask.g.__dict__),
                "app": current_app.name,
            }
        )

    @app.flask.before_request
    def mark_request() -> None:
        flask.g.user = "alice"

    web = app.flask.test_client()
    assert web.get("/__heartbeat__", headers={"X-Secret": "1"}).status_code == 200
    wait_until(lambda: len(seen) >= 3)
    # No request data, no g of any request, the right app, and a new g in each run.
    assert all(s == {"request": False, "g": {}, "app": app.flask.name} for s in seen)
    # Between runs nothing is held: no connection checked out, no session in the registry.
    # A run leaking its connection shows as 2 or more (one per run), a connection kept
    # across runs as never 0; how often a run is caught in progress depends on the load.
    holding = [app.checked_out()]
    deadline = time.monotonic() + 10
    while (len(holding) < 20 or 0 not in holding) and time.monotonic() < deadline:
        time.sleep(0.01)
        holding.append(app.checked_out())
    assert max(holding) <= 1  # at most the one run that may be in progress
    assert 0 in holding


def test_the_request_context_is_never_visible_to_a_check(app: App) -> None:
    seen: list[tuple[bool, bool]] = []

    @app.dockerflow.check
    def sync_reader() -> None:
        seen.append((flask.has_request_context(), flask.has_app_context()))

    @app.dockerflow.check
    async def async_reader() -> None:
        seen.append((flask.has_request_context(), flask.has_app_context()))

    assert app.flask.test_client().get("/__heartbeat__").status_code == 200
    assert seen == [(False, True), (False, True)]
