"""The demo service: a Flask app with every kind of Dockerflow check.

Serve it with ``make demo``, or apply the migrations, then start the server::

    flask --app examples.demo.app:create_app db upgrade
    gunicorn -c examples/gunicorn.conf.py 'examples.demo.app:create_app()'

The migrations are a step of their own, run once per deployment before the server starts (a
release command, a Kubernetes Job, the container's command before ``exec gunicorn``), never in
``create_app()``: every worker, every ``flask`` command and every ``HEALTHCHECK`` probe
(``flask dockerflow heartbeat``) calls the factory.

Checks:

``check_database_connected``
    ``SELECT 1`` on a SQLite file through SQLAlchemy (``Dockerflow(app, db=engine)``).
``check_migrations_applied``
    The database's Alembic revision against ``examples/demo/migrations``: a warning
    (``dockerflow.health.W001``, which does not fail the heartbeat) until ``flask db upgrade``
    has run.
``event_loop_lag``
    An ``async def`` check: how late a short sleep wakes up on the checks' event loop.
``slow_dependency``
    A blocking check that sleeps ``$DEMO_SLOW_CHECK_SECONDS`` (default 0.2) under a timeout of
    1 s. Start the demo with ``DEMO_SLOW_CHECK_SECONDS=2`` to see it reported as timed out
    (``dockerflow.health.E011``) while the heartbeat still answers after about one second.
``check_redis_connected``
    Only when ``$REDIS_URL`` is set: ``PING`` through ``redis.Redis``.
``postgres``
    Only when ``$DATABASE_URL`` is set: ``SELECT 1`` through an asyncpg pool.

The SQLite file lives in ``$DEMO_DATA_DIR`` (default: ``dockerflow-demo`` in the temporary
directory).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import alembic.command
import alembic.config
import anyio
import click
import sqlalchemy
from flask import Flask, jsonify, url_for

from dockerflow.checks import CheckMessage
from dockerflow.checks import Warning as CheckWarning
from dockerflow.flask import Dockerflow
from dockerflow.integrations import AsyncpgCheck, migrations_check

HERE = os.path.dirname(os.path.abspath(__file__))
MIGRATIONS = os.path.join(HERE, "migrations")

#: Timeout of the slow check, in seconds.
SLOW_CHECK_TIMEOUT = 1.0


def data_dir() -> str:
    """Return the directory of the demo's SQLite file, creating it if needed."""
    path = os.environ.get("DEMO_DATA_DIR") or os.path.join(tempfile.gettempdir(), "dockerflow-demo")
    os.makedirs(path, exist_ok=True)
    return path


def database_url() -> str:
    """Return the SQLAlchemy URL of the demo's SQLite database."""
    return f"sqlite:///{os.path.join(data_dir(), 'demo.sqlite3')}"


def slow_check_seconds() -> float:
    """Return how long the slow check sleeps, from ``$DEMO_SLOW_CHECK_SECONDS``."""
    raw = os.environ.get("DEMO_SLOW_CHECK_SECONDS", "0.2")
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"DEMO_SLOW_CHECK_SECONDS={raw!r} is not a number of seconds") from None
    if seconds < 0:
        raise ValueError(f"DEMO_SLOW_CHECK_SECONDS={raw!r} must not be negative")
    return seconds


def upgrade_database(engine: sqlalchemy.Engine) -> None:
    """Apply the demo's Alembic migrations to ``engine``'s database (``alembic upgrade head``)."""
    config = alembic.config.Config()
    config.set_main_option("script_location", MIGRATIONS)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        alembic.command.upgrade(config, "head")


@click.group("db", help="The demo's database.")
def db_cli() -> None:
    """``flask db``: the demo's database commands."""


@db_cli.command("upgrade")
def upgrade_command() -> None:
    """Apply the migrations (what Flask-Migrate's ``flask db upgrade`` does for its apps)."""
    engine = sqlalchemy.create_engine(database_url())
    try:
        upgrade_database(engine)
    finally:
        engine.dispose()
    click.echo(f"database at head: {database_url()}", err=True)


def _asyncpg_dsn(url: str) -> str:
    # asyncpg takes postgres:// or postgresql://, not SQLAlchemy's postgresql+driver:// form.
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


def create_app() -> Flask:
    """Create the demo app: Dockerflow and its checks; the migrations are ``flask db upgrade``."""
    app = Flask(__name__)
    app.cli.add_command(db_cli)

    engine = sqlalchemy.create_engine(database_url())

    redis_client = None
    if os.environ.get("REDIS_URL"):
        import redis

        # A socket timeout under the check timeout: a server that stops answering is reported
        # with redis' own error instead of a thread stuck until the OS gives up.
        redis_client = redis.Redis.from_url(
            os.environ["REDIS_URL"], socket_timeout=2.0, socket_connect_timeout=2.0
        )

    dockerflow = Dockerflow(app, db=engine, redis=redis_client, version_path=HERE)
    dockerflow.check(
        migrations_check(script_location=MIGRATIONS, engine=engine),
        name="check_migrations_applied",
    )

    if os.environ.get("DATABASE_URL"):
        dockerflow.check(
            AsyncpgCheck(dsn=_asyncpg_dsn(os.environ["DATABASE_URL"])), name="postgres"
        )

    @dockerflow.check(timeout=0.5)
    async def event_loop_lag() -> list[CheckMessage]:
        """Warn when the checks' event loop wakes up late: something blocks it."""
        started = time.perf_counter()
        await anyio.sleep(0.01)
        lag = time.perf_counter() - started - 0.01
        if lag > 0.1:
            return [CheckWarning(f"event loop woke up {lag:.3f}s late", id="demo.health.W001")]
        return []

    delay = slow_check_seconds()

    @dockerflow.check(timeout=SLOW_CHECK_TIMEOUT)
    def slow_dependency() -> list[CheckMessage]:
        """Stand in for a slow dependency: block for $DEMO_SLOW_CHECK_SECONDS."""
        time.sleep(delay)
        return []

    @app.route("/")
    def index() -> Any:
        # An application log line: examples/gunicorn.conf.py sends the app's INFO records to stdout.
        app.logger.info("index served")
        return jsonify(
            {
                "service": "dockerflow-async demo",
                "endpoints": {
                    "lbheartbeat": url_for("dockerflow.lbheartbeat", _external=True),
                    "heartbeat": url_for("dockerflow.heartbeat", _external=True),
                    "version": url_for("dockerflow.version", _external=True),
                },
                "checks": sorted(dockerflow.checks),
                "slow_check_seconds": delay,
                "slow_check_timeout": SLOW_CHECK_TIMEOUT,
            }
        )

    return app
