"""What stopped a python-dockerflow service moving here (issue 22, items 1 and 2).

An application factory with module-level extensions (``Migrate()`` bound later by
``migrate.init_app(app, db)``), SQLAlchemy 2.1 without ``greenlet``, and errors that name the
argument, the module that failed and the extra to install.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from dockerflow import health
from dockerflow.integrations import MissingDependencyError, builtin_checks
from dockerflow.integrations._support import requires

from .helpers import ALEMBIC_APP

flask = pytest.importorskip("flask")
flask_sqlalchemy = pytest.importorskip("flask_sqlalchemy")
flask_migrate = pytest.importorskip("flask_migrate")

from dockerflow.flask import Dockerflow  # noqa: E402


def test_a_missing_dependency_of_a_driver_is_named() -> None:
    with pytest.raises(MissingDependencyError) as caught, requires("sqlalchemy", "sqlalchemy"):
        raise ModuleNotFoundError("No module named 'greenlet'", name="greenlet")
    assert caught.value.package == "greenlet"
    assert "'greenlet' is not installed" in str(caught.value)
    assert "pip install 'dockerflow-async[sqlalchemy]'" in str(caught.value)


def test_an_import_that_fails_for_another_reason_quotes_it() -> None:
    # SQLAlchemy 2.1's asyncio module without greenlet: a plain ImportError, no name.
    with pytest.raises(MissingDependencyError) as caught, requires("sqlalchemy", "sqlalchemy"):
        raise ImportError("The SQLAlchemy asyncio module requires ... 'greenlet' library")
    text = str(caught.value)
    assert "'sqlalchemy' cannot be imported" in text
    assert "greenlet" in text
    assert "dockerflow-async[sqlalchemy]" in text
    assert "is not installed" not in text


def test_the_argument_is_named_in_a_missing_driver_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(MissingDependencyError) as caught:
        Dockerflow(redis=object())
    assert "Dockerflow(redis=...) needs it" in str(caught.value)
    assert "pip install 'dockerflow-async[redis]'" in str(caught.value)


def test_the_argument_is_named_in_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"^Dockerflow\(db=\.\.\.\): a database check takes"):
        Dockerflow(db="postgresql://localhost/db")


def test_metrics_without_prometheus_client_names_the_argument(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(MissingDependencyError) as caught:
        Dockerflow(metrics=True)
    text = str(caught.value)
    assert "Dockerflow(metrics=True) needs it" in text
    assert "needed for this check" not in text
    assert "dockerflow-async[prometheus]" in text


SYNC_WITHOUT_GREENLET = textwrap.dedent(
    """
    import sys
    sys.modules["greenlet"] = None  # SQLAlchemy 2.1 installed without its asyncio extra
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy
    from dockerflow.flask import Dockerflow

    db = SQLAlchemy()
    dockerflow = Dockerflow(db=db)

    def create_app():
        app = Flask(__name__)
        app.config["SQLALCHEMY_DATABASE_URI"] = sys.argv[1]
        db.init_app(app)
        dockerflow.init_app(app)
        return app

    response = create_app().test_client().get("/__heartbeat__")
    print(response.status_code, response.get_json()["checks"])
    assert "sqlalchemy.ext.asyncio" not in sys.modules
    """
)


def test_a_sync_database_check_needs_no_greenlet(tmp_path: Any) -> None:
    """Before: "'sqlalchemy' is not installed" while SQLAlchemy was, and greenlet was not."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    result = subprocess.run(
        [sys.executable, "-c", SYNC_WITHOUT_GREENLET, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "200 {'check_database_connected': 'ok'}"


# The application factory of the trial's service: every extension made unbound at import time.
def make_factory(database: str) -> tuple[Any, Any, Any, Any]:
    db = flask_sqlalchemy.SQLAlchemy()
    migrate = flask_migrate.Migrate(directory=str(ALEMBIC_APP))
    dockerflow = Dockerflow(db=db, migrate=migrate)

    def create_app() -> Any:
        app = flask.Flask(__name__)
        app.config["SQLALCHEMY_DATABASE_URI"] = database
        db.init_app(app)
        migrate.init_app(app, db)
        dockerflow.init_app(app)
        return app

    return create_app, db, migrate, dockerflow


@pytest.mark.postgres
def test_an_unbound_migrate_is_bound_in_init_app(database: str) -> None:
    """Before: TypeError at import, "a database check takes ...; got None"."""
    create_app, db, _, dockerflow = make_factory(database)
    app = create_app()
    try:
        response = app.test_client().get("/__heartbeat__")
        body = response.get_json()
        assert body["checks"] == {
            "check_database_connected": "ok",
            "check_migrations_applied": "warning",
        }
        assert body["details"]["check_migrations_applied"]["messages"] == {
            health.WARNING_UNAPPLIED_MIGRATION: "Unapplied migrations found: 0001, 0002"
        }
        # Both checks share one CheckEngine, as with a Migrate(app, db).
        checks = dockerflow.checks
        bound = checks["check_migrations_applied"].bound  # type: ignore[attr-defined]
        assert bound.args[1] is checks["check_database_connected"].args[0]
    finally:
        dockerflow.close()
        with app.app_context():
            db.engine.dispose()


@pytest.mark.postgres
def test_a_migrate_bound_after_init_app_is_bound_at_the_first_run(database: str) -> None:
    db = flask_sqlalchemy.SQLAlchemy()
    migrate = flask_migrate.Migrate(directory=str(ALEMBIC_APP))
    app = flask.Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database
    dockerflow = Dockerflow(app, db=db, migrate=migrate)
    try:
        client = app.test_client()
        # Before migrate.init_app(app, db): the check says what to do.
        db.init_app(app)
        details = client.get("/__heartbeat__").get_json()["details"]
        (text,) = details["check_migrations_applied"]["messages"].values()
        assert "call migrate.init_app(app, db)" in text
        migrate.init_app(app, db)
        body = client.get("/__heartbeat__").get_json()
        assert body["checks"]["check_migrations_applied"] == "warning"
    finally:
        dockerflow.close()
        with app.app_context():
            db.engine.dispose()


def test_builtin_checks_take_an_unbound_migrate() -> None:
    migrate = flask_migrate.Migrate()
    ((name, func),) = builtin_checks(migrate=migrate)
    assert name == "check_migrations_applied"
    assert func.bound is None  # type: ignore[attr-defined]
