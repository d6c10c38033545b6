"""Which connections the database checks use, as an app with Flask-SQLAlchemy and Flask-Migrate
sees them: SQLite's in-memory database is the app's own, and on PostgreSQL the checks hold a
fixed number of connections of their own per worker process, counted in pg_stat_activity."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy
from alembic import command
from alembic.config import Config

from .helpers import ALEMBIC_APP, count_backends, unique_name, url_with

flask = pytest.importorskip("flask")
flask_sqlalchemy = pytest.importorskip("flask_sqlalchemy")
flask_migrate = pytest.importorskip("flask_migrate")

from dockerflow import checks  # noqa: E402 - after the skips above
from dockerflow.flask import Dockerflow  # noqa: E402


def make_app(
    database_url: str, *, with_migrate: bool = True, **engine_options: Any
) -> tuple[Any, Any, Dockerflow]:
    """A service as users write it: Flask-SQLAlchemy, Flask-Migrate and the built-in checks."""
    app = flask.Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=database_url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options,
        # Strict: an unapplied migration (what a copy of an in-memory database sees) fails.
        DOCKERFLOW_HEARTBEAT_FAIL_LEVEL="warning",
    )
    db = flask_sqlalchemy.SQLAlchemy(app)
    migrate = flask_migrate.Migrate(app, db, directory=str(ALEMBIC_APP)) if with_migrate else None
    dockerflow = Dockerflow(app, db=db, migrate=migrate)

    @app.post("/widgets")
    def add_widget() -> Any:
        db.session.execute(sqlalchemy.text("INSERT INTO widgets (name) VALUES ('made by the app')"))
        db.session.commit()
        return {"added": 1}

    @app.get("/widgets")
    def count_widgets() -> Any:
        return {
            "count": db.session.execute(sqlalchemy.text("SELECT count(*) FROM widgets")).scalar()
        }

    return app, db, dockerflow


@pytest.fixture
def closing() -> Iterator[list[tuple[Any, Any, Dockerflow]]]:
    """Apps whose pools (the app's and the checks') are closed at teardown."""
    apps: list[tuple[Any, Any, Dockerflow]] = []
    yield apps
    for app, db, dockerflow in apps:
        dockerflow.close()
        with app.app_context():
            db.engine.dispose()
    # The built-in checks are listed in python-dockerflow's process-wide registry too.
    checks.clear_checks()


def test_sqlite_in_memory_database_is_the_apps_own(
    closing: list[tuple[Any, Any, Dockerflow]],
) -> None:
    """The checks see the tables and rows the app made; a copy would open an empty database."""
    app, db, dockerflow = make_app("sqlite://")
    closing.append((app, db, dockerflow))
    # The app migrates its database (the test scripts' env.py takes the app's connection).
    with app.app_context(), db.engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(ALEMBIC_APP))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    client = app.test_client()
    assert client.post("/widgets").status_code == 200
    assert client.get("/widgets").get_json() == {"count": 1}

    response = client.get("/__heartbeat__")

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["checks"] == {
        "check_database_connected": "ok",
        "check_migrations_applied": "ok",
    }
    # The migrations were applied to the app's own in-memory database only, and the check's
    # runs (in threads of their own) did not replace it with an empty one.
    assert client.get("/widgets").get_json() == {"count": 1}


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("with_migrate", "expected"),
    [(False, 1), (True, 2)],
    ids=["database-check", "database-and-migrations-checks"],
)
def test_postgres_checks_hold_connections_of_their_own_per_worker(
    postgres_url: str,
    closing: list[tuple[Any, Any, Dockerflow]],
    with_migrate: bool,
    expected: int,
) -> None:
    """Counted in pg_stat_activity: the app's connection, then the checks' on top of it.

    At most one connection per built-in database check of the app: the database check's, plus
    the migrations check's when it shares the pool (when both run at the same time).
    """
    name = unique_name("conn-count")
    url = url_with(postgres_url, drivername="postgresql+psycopg2")
    app, db, dockerflow = make_app(
        url, with_migrate=with_migrate, connect_args={"application_name": name}
    )
    closing.append((app, db, dockerflow))
    with app.app_context():
        db.session.execute(sqlalchemy.text("SELECT 1"))  # the app's own pool: one connection
        db.session.commit()
    app_only = count_backends(postgres_url, name)
    client = app.test_client()

    # Sequential heartbeats, then bursts from several threads (one process, like a gthread
    # worker's threads).
    statuses = [client.get("/__heartbeat__").status_code for _ in range(20)]
    after_sequential = count_backends(postgres_url, name)

    def burst() -> None:
        own = app.test_client()
        statuses.extend(own.get("/__heartbeat__").status_code for _ in range(10))

    threads = [threading.Thread(target=burst) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    after_concurrent = count_backends(postgres_url, name)

    # With Flask-Migrate the shared test database has no migrations applied: the strict
    # heartbeat fails on W001, beside the point here; what matters is that both checks ran.
    assert len(statuses) == 20 + 8 * 10
    assert set(statuses) == ({500} if with_migrate else {200})
    assert app_only == 1
    counts = (after_sequential - app_only, after_concurrent - app_only)
    # At most one connection per check, however many heartbeats; fewer when a heartbeat's quick
    # checks ran one after the other in one thread (its batch) and shared the pool's connection.
    assert all(1 <= count <= expected for count in counts), (
        app_only,
        after_sequential,
        after_concurrent,
    )


def test_plain_engine_on_in_memory_sqlite_made_as_the_docs_say(
    closing: list[tuple[Any, Any, Dockerflow]],
) -> None:
    """A plain engine made as Flask-SQLAlchemy makes it: one connection, usable from any thread."""
    from dockerflow.integrations import migrations_check

    engine = sqlalchemy.create_engine(
        "sqlite://",
        poolclass=sqlalchemy.pool.StaticPool,
        connect_args={"check_same_thread": False},
    )
    with engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(ALEMBIC_APP))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    app = flask.Flask(__name__)
    app.config["DOCKERFLOW_HEARTBEAT_FAIL_LEVEL"] = "warning"
    dockerflow = Dockerflow(app, db=engine)
    dockerflow.check(
        migrations_check(script_location=str(ALEMBIC_APP), engine=engine), name="migrations"
    )
    try:
        response = app.test_client().get("/__heartbeat__")
        assert response.status_code == 200, response.get_json()
    finally:
        dockerflow.close()
        engine.dispose()
        checks.clear_checks()
