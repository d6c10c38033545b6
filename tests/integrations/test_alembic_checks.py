"""The migrations checks against a real PostgreSQL database of this test run's own.

The scripts are ``alembic_app/`` (revisions ``0001`` then ``0002``); each test starts from an
empty database (downgraded to base).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dockerflow import health
from dockerflow.checks import Warning
from dockerflow.engine import Check, Engine
from dockerflow.integrations import builtin_checks
from dockerflow.integrations.alembic import check_migrations_applied, migrations_check

from .helpers import ALEMBIC_APP, ANSWER, SECRET, SLACK, BlackHole, only_message, timed, url_with

pytestmark = pytest.mark.postgres


def alembic_config(version_table: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_APP))
    if version_table:
        config.attributes["version_table"] = version_table
    return config


def migrate_to(url: str, revision: str, version_table: str | None = None) -> None:
    """Upgrade the database at ``url`` to ``revision`` with the test scripts."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.begin() as connection:
            config = alembic_config(version_table)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


@pytest.fixture
def make_engine() -> Iterator[Callable[..., sqlalchemy.Engine]]:
    engines: list[sqlalchemy.Engine] = []

    def make(url: str, **kwargs: Any) -> sqlalchemy.Engine:
        engines.append(sqlalchemy.create_engine(url, **kwargs))
        return engines[-1]

    yield make
    for made in engines:
        made.dispose()


@pytest.fixture
def make_async_engine(engine: Engine) -> Iterator[Callable[..., AsyncEngine]]:
    engines: list[AsyncEngine] = []

    def make(url: str) -> AsyncEngine:
        engines.append(create_async_engine(url_with(url, drivername="postgresql+asyncpg")))
        return engines[-1]

    yield make
    for made in engines:
        engine.bridge.call(made.dispose)


def dispose(engine: Engine, func: Any) -> None:
    """Close the pool of the CheckEngine behind a check made by migrations_check()."""
    check_engine = func.args[1]
    result = check_engine.dispose()
    if inspect.iscoroutine(result):
        result.close()
        engine.bridge.call(check_engine.dispose)


def run(engine: Engine, func: Any) -> tuple[str, str] | None:
    """Run the migrations check once; return its one message, or None when it is ok."""
    report = engine.run_sync([Check("migrations", func, timeout=ANSWER)])
    if report.checks == {"migrations": "ok"}:
        return None
    return only_message(report, "migrations")


@pytest.mark.parametrize("variant", ["sync", "async"])
def test_unapplied_then_applied(
    engine: Engine,
    database: str,
    make_engine: Callable[..., sqlalchemy.Engine],
    make_async_engine: Callable[..., AsyncEngine],
    variant: str,
) -> None:
    db = make_engine(database) if variant == "sync" else make_async_engine(database)
    func = migrations_check(script_location=ALEMBIC_APP, engine=db)
    assert inspect.iscoroutinefunction(func) == (variant == "async")

    warning = health.WARNING_UNAPPLIED_MIGRATION
    assert run(engine, func) == (warning, "Unapplied migrations found: 0001, 0002")
    assert database_head(engine, func) is None  # the value the check reports beside
    migrate_to(database, "0001")
    assert run(engine, func) == (warning, "Unapplied migrations found: 0002")
    migrate_to(database, "head")
    assert run(engine, func) is None
    assert database_head(engine, func) == "0002"
    dispose(engine, func)


def database_head(engine: Engine, func: Any) -> object:
    """Run the migrations check once; return the revision it reports as ``database_head``."""
    data = engine.run_sync([Check("migrations", func)]).results["migrations"].data
    return data["database_head"].value


def test_alembic_config_and_a_renamed_version_table(
    engine: Engine, database: str, make_engine: Callable[..., sqlalchemy.Engine]
) -> None:
    migrate_to(database, "head", version_table="dockerflow_versions")
    renamed = migrations_check(
        config=alembic_config(), engine=make_engine(database), version_table="dockerflow_versions"
    )
    assert run(engine, renamed) is None
    default = migrations_check(config=alembic_config(), engine=make_engine(database))
    assert run(engine, default) == (
        health.WARNING_UNAPPLIED_MIGRATION,
        "Unapplied migrations found: 0001, 0002",
    )
    dispose(engine, renamed)
    dispose(engine, default)


def test_database_ahead_of_the_scripts(
    engine: Engine, database: str, make_engine: Callable[..., sqlalchemy.Engine]
) -> None:
    migrate_to(database, "head")
    db = make_engine(database)
    with db.begin() as connection:
        connection.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = 'f00d'"))
    func = migrations_check(script_location=ALEMBIC_APP, engine=db)
    assert run(engine, func) == (
        health.WARNING_UNAPPLIED_MIGRATION,
        "Database has migrations that the scripts do not know: f00d",
    )
    dispose(engine, func)


@pytest.mark.parametrize("variant", ["sync", "async"])
def test_unreachable_database_is_only_informative(
    engine: Engine,
    make_engine: Callable[..., sqlalchemy.Engine],
    make_async_engine: Callable[..., AsyncEngine],
    postgres_url: str,
    refused_port: int,
    caplog: pytest.LogCaptureFixture,
    variant: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = url_with(postgres_url, port=refused_port, password=SECRET)
    if variant == "sync":
        db: Any = make_engine(url_with(url, drivername="postgresql+psycopg2"))
    else:
        db = make_async_engine(url)
    func = migrations_check(script_location=ALEMBIC_APP, engine=db)
    report, took = timed(engine, Check("migrations", func))
    msg_id, text = only_message(report, "migrations")
    assert msg_id == health.INFO_CANT_CHECK_MIGRATIONS
    assert text.startswith("Can't connect to database to check migrations: ")
    assert report.status == "info"
    assert took < engine.timeout + SLACK
    assert SECRET not in repr(report.as_dict()) + caplog.text
    dispose(engine, func)


@pytest.mark.parametrize("variant", ["sync", "async"])
def test_black_holed_database_is_bounded(
    engine: Engine,
    make_engine: Callable[..., sqlalchemy.Engine],
    make_async_engine: Callable[..., AsyncEngine],
    postgres_url: str,
    black_hole: BlackHole,
    variant: str,
) -> None:
    url = url_with(postgres_url, port=black_hole.port)
    if variant == "sync":
        db: Any = make_engine(url_with(url, drivername="postgresql+psycopg2"))
    else:
        db = make_async_engine(url)
    func = migrations_check(script_location=ALEMBIC_APP, engine=db)
    report, took = timed(engine, Check("migrations", func))
    assert only_message(report, "migrations")[0] == health.ERROR_CHECK_TIMEOUT
    assert took < engine.timeout + SLACK
    black_hole.close()  # lets a stuck sync thread return before the engine is closed
    if variant == "async":
        dispose(engine, func)


def in_app_context(app: Any, func: Callable[[], Any]) -> Callable[[], Any]:
    """Run ``func`` in an application context, as the Flask facade must for these checks."""

    def run() -> Any:
        with app.app_context():
            return func()

    return run


def flask_app(database: str, **migrate_kwargs: Any) -> tuple[Any, Any, Any]:
    """A Flask app with Flask-SQLAlchemy on ``database`` and Flask-Migrate on the test scripts."""
    flask = pytest.importorskip("flask")
    flask_sqlalchemy = pytest.importorskip("flask_sqlalchemy")
    flask_migrate = pytest.importorskip("flask_migrate")
    app = flask.Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database
    db = flask_sqlalchemy.SQLAlchemy(app)
    migrate = flask_migrate.Migrate(app, db, directory=str(ALEMBIC_APP), **migrate_kwargs)
    return app, db, migrate


def test_flask_migrate(engine: Engine, database: str) -> None:
    app, db, migrate = flask_app(database)
    checks = builtin_checks(db=db, migrate=migrate)
    assert [name for name, _ in checks] == ["check_database_connected", "check_migrations_applied"]
    # One CheckEngine (one pool of the checks' own) serves both checks.
    assert checks[0][1].args[0] is checks[1][1].args[1]
    registered = [Check(name, in_app_context(app, func)) for name, func in checks]
    try:
        report = engine.run_sync(registered)
        assert report.checks == {
            "check_database_connected": "ok",
            "check_migrations_applied": "warning",
        }
        assert report.details["check_migrations_applied"]["messages"] == {
            health.WARNING_UNAPPLIED_MIGRATION: "Unapplied migrations found: 0001, 0002"
        }
        migrate_to(database, "head")
        assert engine.run_sync(registered).status == "ok"
        with app.app_context():  # python-dockerflow's function, called as python-dockerflow did
            assert check_migrations_applied(migrate) == []
    finally:
        checks[0][1].args[0].dispose()
        with app.app_context():
            db.engine.dispose()


def test_python_dockerflow_function_reports_unapplied_migrations(database: str) -> None:
    app, db, migrate = flask_app(database)
    migrate_to(database, "0001")
    with app.app_context():
        assert check_migrations_applied(migrate) == [
            Warning("Unapplied migrations found: 0002", id=health.WARNING_UNAPPLIED_MIGRATION)
        ]
        db.engine.dispose()


def test_flask_sqlalchemy_checks_need_an_application_context(engine: Engine, database: str) -> None:
    """db.engine is per application: a check run outside of any app context cannot find it."""
    _, _, migrate = flask_app(database)
    func = migrations_check(migrate=migrate)  # the scripts are read without a context
    msg_id, text = only_message(
        engine.run_sync([Check("migrations", func, timeout=ANSWER)]), "migrations"
    )
    assert msg_id == health.ERROR_CHECK_EXCEPTION
    assert "Working outside of application context" in text


def test_flask_migrate_version_table_from_migrate_kwargs(engine: Engine, database: str) -> None:
    migrate_to(database, "head", version_table="dockerflow_versions")
    app, db, migrate = flask_app(database, version_table="dockerflow_versions")
    try:
        with app.app_context():
            assert check_migrations_applied(migrate) == []
        func = migrations_check(migrate=migrate)
        check = Check("migrations", in_app_context(app, func), timeout=ANSWER)
        assert engine.run_sync([check]).status == "ok"
        func.args[1].dispose()
    finally:
        with app.app_context():
            db.engine.dispose()


def test_factory_arguments() -> None:
    with pytest.raises(TypeError, match="exactly one of migrate, config or script_location"):
        migrations_check(engine=object())
    with pytest.raises(TypeError, match="exactly one of migrate, config or script_location"):
        migrations_check(config=alembic_config(), script_location=ALEMBIC_APP)
    with pytest.raises(TypeError, match="give the engine"):
        migrations_check(script_location=ALEMBIC_APP)
    with pytest.raises(TypeError, match="a database check takes"):
        migrations_check(script_location=ALEMBIC_APP, engine="postgresql://")
