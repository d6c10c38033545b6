"""The demo service: a Flask app with every kind of Dockerflow check.

Serve it with ``make demo``, or apply the migrations, then start the server::

    flask --app examples.demo.app:create_app db upgrade
    gunicorn -c examples/gunicorn.conf.py 'examples.demo.app:create_app()'

The migrations are a step of their own, run once per deployment before the server starts (a
release command, a Kubernetes Job, the container's command before ``exec gunicorn``), never in
``create_app()``: every worker, every ``flask`` command and every ``HEALTHCHECK`` probe
(``flask dockerflow heartbeat``) calls the factory.

It follows each point of the Dockerflow guide (docs/checklist.rst): its own settings come from
``DEMO_*`` environment variables with types (:mod:`examples.demo.settings`), it listens on
``$PORT`` (examples/gunicorn.conf.py, examples/uwsgi.ini), and WhiteNoise serves its static files,
those with a content hash in their name (:mod:`examples.demo.static_build`) with far-future cache
headers.

Checks:

``check_database_connected``
    ``SELECT 1`` on a SQLite file through SQLAlchemy (``Dockerflow(app, db=engine)``).
``check_migrations_applied``
    The database's Alembic revision against ``examples/demo/migrations``: a warning
    (``dockerflow.health.W001``, which does not fail the heartbeat) until ``flask db upgrade``
    has run.
``event_loop_lag``
    An ``async def`` check: how late a short sleep wakes up on the checks' event loop.
    Non-critical: a busy process (a loaded host, a fresh ``flask dockerflow heartbeat`` still
    importing its checks' drivers) makes it late or time out, which is a warning, not a reason
    to take the service out of rotation.
``slow_dependency``
    A blocking check that sleeps ``$DEMO_SLOW_CHECK_SECONDS`` (default 0.2) under a timeout of
    1 s. Start the demo with ``DEMO_SLOW_CHECK_SECONDS=2`` to see it reported as timed out
    (``dockerflow.health.E011``) while the heartbeat still answers after about one second; add
    ``DEMO_SLOW_CHECK_CRITICAL=false`` and the timeout is a warning: the heartbeat stays 200.
``check_redis_connected``
    Only when ``$REDIS_URL`` is set: ``PING`` through ``redis.Redis``.
``postgres``
    Only when ``$DATABASE_URL`` is set: ``SELECT 1`` through an asyncpg pool.

The SQLite file lives in ``$DEMO_DATA_DIR`` (default: ``dockerflow-demo`` in the temporary
directory).
"""

from __future__ import annotations

import os
import time
from typing import Any

import alembic.command
import alembic.config
import anyio
import click
import sqlalchemy
from flask import Flask, current_app, jsonify, url_for
from flask.cli import with_appcontext
from whitenoise import WhiteNoise

from dockerflow.checks import CheckMessage
from dockerflow.checks import Warning as CheckWarning
from dockerflow.flask import Dockerflow
from dockerflow.integrations import AsyncpgCheck, migrations_check

from . import settings, static_build

HERE = os.path.dirname(os.path.abspath(__file__))
MIGRATIONS = os.path.join(HERE, "migrations")

#: Timeout of the slow check, in seconds.
SLOW_CHECK_TIMEOUT = 1.0
#: The group of checks that the readiness probe asks for: /__heartbeat__/ready.
READY = "ready"


#: ``Cache-Control: max-age`` of static files without a hash in their name, in seconds: short,
#: since their content changes under the same URL.
STATIC_MAX_AGE = 60


def database_url() -> str:
    """Return the SQLAlchemy URL of the demo's SQLite database, from ``$DEMO_DATA_DIR``.

    For code that runs without the app (Alembic's own command line in ``migrations/env.py``).
    """
    config: dict[str, Any] = {}
    settings.load(config)
    return settings.database_url(config["DATA_DIR"])


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
@with_appcontext  # Flask 2.2+ pushes it for every command; Flask 2.0 only with this.
def upgrade_command() -> None:
    """Apply the migrations (what Flask-Migrate's ``flask db upgrade`` does for its apps)."""
    url = settings.database_url(current_app.config["DATA_DIR"])
    engine = sqlalchemy.create_engine(url)
    try:
        upgrade_database(engine)
    finally:
        engine.dispose()
    click.echo(f"database at head: {url}", err=True)


def _asyncpg_dsn(url: str) -> str:
    # asyncpg takes postgres:// or postgresql://, not SQLAlchemy's postgresql+driver:// form.
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


def serve_static(app: Flask) -> dict[str, str]:
    """Serve ``app``'s static folder with WhiteNoise; return the URL of each hashed asset.

    WhiteNoise answers ``/static/...`` before Flask sees the request (so those requests have no
    ``request.summary`` line), with ``Cache-Control: max-age=315360000, public, immutable`` for
    names with a content hash and ``max-age=60, public`` for the others. A name it does not know
    (a wrong hash) falls through to Flask, which answers 404.

    :param app: the app.
    :returns: source name -> URL path of its hashed copy, for templates and the index page.
    :raises RuntimeError: if a hashed copy is missing (the build step has not run).
    """
    static = app.static_folder
    assert static is not None and app.static_url_path is not None  # Flask's defaults
    urls = {}
    for source in static_build.SOURCES:
        name = static_build.hashed_name(source, static)
        if not os.path.isfile(os.path.join(static, name)):
            raise RuntimeError(
                f"{name} is missing from {static}: run python -m examples.demo.static_build"
            )
        urls[source] = f"{app.static_url_path}/{name}"
    app.wsgi_app = WhiteNoise(  # type: ignore[method-assign]
        app.wsgi_app,
        root=static,
        prefix=app.static_url_path,
        max_age=STATIC_MAX_AGE,
        immutable_file_test=static_build.HASHED.pattern,
    )
    return urls


def create_app() -> Flask:
    """Create the demo app: Dockerflow and its checks; the migrations are ``flask db upgrade``.

    :raises ValueError: naming the variable, if a ``DEMO_*`` setting has the wrong type.
    """
    app = Flask(__name__)
    settings.load(app.config)
    app.cli.add_command(db_cli)
    assets = serve_static(app)

    engine = sqlalchemy.create_engine(settings.database_url(app.config["DATA_DIR"]))

    redis_client = None
    if os.environ.get("REDIS_URL"):
        import redis

        # A socket timeout under the check timeout: a server that stops answering is reported
        # with redis' own error instead of a thread stuck until the OS gives up.
        redis_client = redis.Redis.from_url(
            os.environ["REDIS_URL"], socket_timeout=2.0, socket_connect_timeout=2.0
        )

    dockerflow = Dockerflow(app, db=engine, redis=redis_client, version_path=HERE)
    # The readiness probe asks /__heartbeat__/ready: the checks that decide whether a pod takes
    # traffic join the group here, the built-in ones by DOCKERFLOW_HEARTBEAT_GROUPS (see
    # examples/kubernetes/demo.yaml). slow_dependency is in no group: only the full heartbeat
    # runs it.
    dockerflow.check(
        migrations_check(script_location=MIGRATIONS, engine=engine),
        name="check_migrations_applied",
        groups=[READY],
    )

    if os.environ.get("DATABASE_URL"):
        dockerflow.check(
            AsyncpgCheck(dsn=_asyncpg_dsn(os.environ["DATABASE_URL"])),
            name="postgres",
            groups=[READY],
        )

    @dockerflow.check(timeout=0.5, critical=False, groups=[READY])
    async def event_loop_lag() -> list[CheckMessage]:
        """Warn when the checks' event loop wakes up late: something blocks it."""
        started = time.perf_counter()
        await anyio.sleep(0.01)
        lag = time.perf_counter() - started - 0.01
        if lag > 0.1:
            return [CheckWarning(f"event loop woke up {lag:.3f}s late", id="demo.health.W001")]
        return []

    delay = app.config["SLOW_CHECK_SECONDS"]

    @dockerflow.check(timeout=SLOW_CHECK_TIMEOUT, critical=app.config["SLOW_CHECK_CRITICAL"])
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
                "slow_check_critical": app.config["SLOW_CHECK_CRITICAL"],
                "assets": assets,
            }
        )

    return app
