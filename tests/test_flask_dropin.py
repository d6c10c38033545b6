"""Code written for python-dockerflow's Flask integration keeps working unchanged.

Initialising twice, signal receivers with python-dockerflow's signature, settings changed after
``init_app``, ``request.summary`` details, its module paths, and the warning when both
distributions are installed. (The built-in checks against real servers are in
``tests/integrations/test_flask_dropin.py``.)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response, g
from flask_login import LoginManager, UserMixin, login_user

from dockerflow import checks
from dockerflow.checks import Error, Warning
from dockerflow.flask import AlreadyInitializedError, Dockerflow, signals


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    app = Flask("dropin", root_path=str(tmp_path / "app"))

    @app.route("/")
    def index() -> str:
        return "hello"

    return app


@pytest.fixture
def dockerflow(app: Flask) -> Iterator[Dockerflow]:
    ext = Dockerflow(app)
    yield ext
    ext.close()


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    checks.clear_checks()
    yield
    checks.clear_checks()


def summaries(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "request.summary"]


# -- initialising twice -------------------------------------------------------------------------


def test_init_app_again_on_the_same_app_does_nothing(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    # dependency-observatory's create_app: Dockerflow(app, ...) and later init_app(app).
    ext = Dockerflow(app)
    hooks = (len(app.before_request_funcs[None]), len(app.after_request_funcs[None]))
    with caplog.at_level(logging.DEBUG, logger="dockerflow.flask"):
        ext.init_app(app)
    assert any("already initialised" in r.getMessage() for r in caplog.records)
    assert (len(app.before_request_funcs[None]), len(app.after_request_funcs[None])) == hooks
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="request.summary"):
        assert app.test_client().get("/").status_code == 200
    assert len(summaries(caplog)) == 1  # hooks not registered twice
    ext.close()


def test_second_extension_raises_an_assertion_error(app: Flask, dockerflow: Dockerflow) -> None:
    # redash-stmo loads the extension a second time and catches AssertionError.
    try:
        Dockerflow(app)
    except AssertionError as exc:
        assert isinstance(exc, AlreadyInitializedError)
        assert isinstance(exc, RuntimeError)
        assert "dropin" in str(exc)
    else:
        pytest.fail("a second extension on one app was accepted")
    assert app.extensions["dockerflow"] is dockerflow


def test_exceptions_have_public_module() -> None:
    assert AlreadyInitializedError.__module__ == "dockerflow.flask"
    from dockerflow.flask import NotInitializedError

    assert NotInitializedError.__module__ == "dockerflow.flask"


# -- /__lbheartbeat__ ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_lbheartbeat_is_an_empty_200_as_in_python_dockerflow(
    app: Flask, dockerflow: Dockerflow, method: str
) -> None:
    """Services' own tests assert ``not r.data`` and ``r.text == ""``.

    python-dockerflow 2026.3.4's view returns ``"", 200``: Flask makes it an HTML response with
    an empty body. Ours adds only the request id and ``Cache-Control: no-store``.
    """
    response = app.test_client().open("/__lbheartbeat__", method=method)
    assert response.status_code == 200
    assert not response.data
    assert response.get_data(as_text=True) == ""
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Content-Length"] == "0"
    assert set(response.headers.keys()) == {
        "Content-Type",
        "Content-Length",
        "Cache-Control",
        "X-Request-ID",
    }
    assert response.headers["Cache-Control"] == "no-store"


# -- signals ------------------------------------------------------------------------------------


def test_receivers_written_for_python_dockerflow(app: Flask, dockerflow: Dockerflow) -> None:
    state = {"up": True}

    @checks.register
    def flappy() -> list[Any]:
        return [] if state["up"] else [Error("down", id="t.E1")]

    counts = {"passed": 0, "failed": 0}
    levels: list[int] = []

    # python-dockerflow's documented receivers: exactly (sender, level).
    def count_passed(sender, level):  # type: ignore[no-untyped-def]
        counts["passed"] += 1
        levels.append(level)

    def count_failed(sender, level):  # type: ignore[no-untyped-def]
        counts["failed"] += 1
        levels.append(level)

    signals.heartbeat_passed.connect(count_passed, app)
    signals.heartbeat_failed.connect(count_failed, app)
    try:
        client = app.test_client()
        assert client.get("/__heartbeat__").status_code == 200
        state["up"] = False
        failing = client.get("/__heartbeat__")
    finally:
        signals.heartbeat_passed.disconnect(count_passed, app)
        signals.heartbeat_failed.disconnect(count_failed, app)
    assert failing.status_code == 500
    assert failing.json["status"] == "error"
    assert counts == {"passed": 1, "failed": 1}
    assert levels == [0, checks.ERROR]


def test_heartbeat_checked_carries_the_report(app: Flask, dockerflow: Dockerflow) -> None:
    checks.register(lambda: [Warning("meh", id="t.W1")], name="warns")
    seen: list[tuple[int, Any, bool]] = []

    @signals.heartbeat_checked.connect_via(app)
    def record(sender: Flask, level: int, report: Any, passed: bool, **extra: Any) -> None:
        assert sender is app
        seen.append((level, report.checks, passed))

    app.test_client().get("/__heartbeat__")
    app.test_client().get("/__heartbeat__?check=warns")
    assert seen == [(checks.WARNING, {"warns": "warning"}, True)] * 2


@pytest.mark.parametrize("failing", [False, True])
def test_a_raising_receiver_changes_nothing(
    app: Flask, dockerflow: Dockerflow, caplog: pytest.LogCaptureFixture, failing: bool
) -> None:
    if failing:
        checks.register(lambda: [Error("down", id="t.E1")], name="down")
    after: list[str] = []

    def broken(sender, level):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("receiver bug")

    def later(sender: Flask, **kwargs: Any) -> None:
        after.append("ran")

    signal = signals.heartbeat_failed if failing else signals.heartbeat_passed
    signal.connect(broken, app)
    signal.connect(later, app)
    signals.heartbeat_checked.connect(broken, app)
    try:
        with caplog.at_level(logging.ERROR, logger="dockerflow.flask"):
            response = app.test_client().get("/__heartbeat__")
    finally:
        signal.disconnect(broken, app)
        signal.disconnect(later, app)
        signals.heartbeat_checked.disconnect(broken, app)
    assert response.status_code == (500 if failing else 200)
    assert response.is_json
    assert response.json["status"] == ("error" if failing else "ok")
    assert after == ["ran"]
    logged = [r for r in caplog.records if r.name == "dockerflow.flask"]
    # Its own error, and the TypeError of a (sender, level) receiver on heartbeat_checked.
    assert sorted(r.exc_info[0].__name__ for r in logged if r.exc_info and r.exc_info[0]) == [
        "TypeError",
        "ZeroDivisionError",
    ]


# -- settings changed after init_app ------------------------------------------------------------


def test_querystring_setting_changed_later(
    app: Flask, dockerflow: Dockerflow, caplog: pytest.LogCaptureFixture
) -> None:
    client = app.test_client()
    with caplog.at_level(logging.INFO, logger="request.summary"):
        client.get("/?a=1")
        app.config["DOCKERFLOW_SUMMARY_LOG_QUERYSTRING"] = True
        client.get("/?b=2")
        app.config["DOCKERFLOW_SUMMARY_LOG_QUERYSTRING"] = "false"
        client.get("/?c=3")
    assert [r.__dict__.get("querystring") for r in summaries(caplog)] == [None, "b=2", None]


def test_silenced_checks_appended_later(app: Flask, dockerflow: Dockerflow) -> None:
    checks.register(lambda: [Error("known", id="t.E1")], name="known")
    checks.register(lambda: [Error("other", id="t.E2")], name="other")
    client = app.test_client()
    assert client.get("/__heartbeat__").status_code == 500
    dockerflow.silenced_checks.append("t.E1")
    assert client.get("/__heartbeat__").json["checks"] == {"known": "ok", "other": "error"}
    app.config["DOCKERFLOW_SILENCED_CHECKS"] = ["t.E2"]
    assert client.get("/__heartbeat__").status_code == 200
    app.config["DOCKERFLOW_SILENCED_CHECKS"].remove("t.E2")  # changed in place
    assert client.get("/__heartbeat__").status_code == 500


def test_status_code_and_header_changed_later(app: Flask, dockerflow: Dockerflow) -> None:
    checks.register(lambda: [Error("down", id="t.E1")], name="down")
    client = app.test_client()
    app.config["DOCKERFLOW_HEARTBEAT_FAILED_STATUS_CODE"] = "503"
    assert client.get("/__heartbeat__").status_code == 503
    app.config["DOCKERFLOW_REQUEST_ID_HEADER_NAME"] = "X-Trace"
    response = client.get("/", headers={"X-Trace": "trace-1"})
    assert response.headers["X-Trace"] == "trace-1"
    assert "X-Request-ID" not in response.headers


def test_bad_value_set_later_is_logged_once_and_ignored(
    app: Flask, dockerflow: Dockerflow, caplog: pytest.LogCaptureFixture
) -> None:
    checks.register(lambda: [Error("down", id="t.E1")], name="down")
    client = app.test_client()
    app.config["DOCKERFLOW_HEARTBEAT_FAILED_STATUS_CODE"] = "teapot"
    with caplog.at_level(logging.ERROR, logger="dockerflow.flask"):
        statuses = [client.get("/__heartbeat__").status_code for _ in range(3)]
    assert statuses == [500, 500, 500]
    (record,) = [r for r in caplog.records if r.name == "dockerflow.flask"]
    assert "DOCKERFLOW_HEARTBEAT_FAILED_STATUS_CODE='teapot' is not valid" in record.getMessage()


def test_a_value_is_parsed_once(
    app: Flask, dockerflow: Dockerflow, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="request.summary")
    live = dockerflow._state(app).live
    calls: list[object] = []
    setting = live._settings["summary_log_querystring"]

    def counting(value: object) -> Any:
        calls.append(value)
        return setting.parse(value)

    live._settings["summary_log_querystring"] = dataclasses.replace(setting, parse=counting)
    client = app.test_client()
    for _ in range(3):
        client.get("/")
    app.config["DOCKERFLOW_SUMMARY_LOG_QUERYSTRING"] = "yes"
    for _ in range(3):
        client.get("/")
    assert calls == ["yes"]


def test_version_path_is_the_path_in_use(app: Flask, tmp_path: Path) -> None:
    ext = Dockerflow()
    assert ext.version_path is None
    ext.init_app(app)
    assert ext.version_path == str(tmp_path)  # the parent of app.root_path
    (tmp_path / "version.json").write_text('{"version": "1"}')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "version.json").write_text('{"version": "2"}')
    client = app.test_client()
    assert client.get("/__version__").json == {"version": "1"}
    ext.version_path = str(elsewhere)
    assert client.get("/__version__").json == {"version": "2"}
    ext.close()


# -- request.summary ----------------------------------------------------------------------------


class IntIdUser(UserMixin):
    def get_id(self) -> int:  # type: ignore[override]
        return 42


def test_start_timestamp_and_uid_as_returned(
    app: Flask, dockerflow: Dockerflow, caplog: pytest.LogCaptureFixture
) -> None:
    app.secret_key = "test"
    LoginManager(app).user_loader(lambda user_id: IntIdUser())
    with caplog.at_level(logging.INFO, logger="request.summary"), app.test_request_context("/"):
        login_user(IntIdUser())
        app.preprocess_request()
        assert isinstance(g._start_timestamp, float)
        app.process_response(Response(""))
    (record,) = summaries(caplog)
    assert record.uid == 42


def test_has_flask_login_switch(
    app: Flask, dockerflow: Dockerflow, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    app.secret_key = "test"
    LoginManager(app).user_loader(lambda user_id: IntIdUser())
    monkeypatch.setattr("dockerflow.flask.app.has_flask_login", False)
    with caplog.at_level(logging.INFO, logger="request.summary"), app.test_request_context("/"):
        login_user(IntIdUser())
        app.preprocess_request()
        app.process_response(Response(""))
    (record,) = summaries(caplog)
    assert record.uid == ""


@pytest.mark.parametrize("code", [429, 400, 503])
def test_answered_by_an_earlier_hook(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    app = Flask("early", root_path=str(tmp_path))

    @app.before_request
    def gatekeeper() -> Any:  # registered before the extension
        return "no", code

    ext = Dockerflow(app)
    with caplog.at_level(logging.INFO, logger="request.summary"):
        response = app.test_client().get("/anything", headers={"X-Request-ID": "early-1"})
    ext.close()
    assert response.status_code == code
    assert response.headers["X-Request-ID"] == "early-1"
    (record,) = summaries(caplog)
    assert (record.code, record.rid, record.path) == (code, "early-1", "/anything")
    assert isinstance(record.t, int)


def test_response_made_without_dispatch(
    app: Flask, dockerflow: Dockerflow, caplog: pytest.LogCaptureFixture
) -> None:
    # app.process_response without app.preprocess_request: still an id and a summary line.
    context = app.test_request_context("/", headers={"X-Request-ID": "bare-1"})
    with caplog.at_level(logging.INFO, logger="request.summary"), context:
        response = app.process_response(Response(""))
    assert response.headers["X-Request-ID"] == "bare-1"
    (record,) = summaries(caplog)
    assert record.rid == "bare-1"
    assert "t" not in record.__dict__


# -- python-dockerflow's module paths -----------------------------------------------------------


def test_module_paths() -> None:
    from werkzeug.exceptions import InternalServerError

    from dockerflow.checks import registry
    from dockerflow.flask import app as app_module
    from dockerflow.flask.checks import messages

    assert app_module.Dockerflow is Dockerflow
    assert issubclass(app_module.HeartbeatFailure, InternalServerError)
    assert isinstance(app_module.has_flask_login, bool)
    assert messages.level_to_text is checks.level_to_text
    assert messages.Error is Error
    assert registry.get_checks is checks.get_checks


# -- python-dockerflow installed too ------------------------------------------------------------

PROBE = textwrap.dedent(
    """
    import warnings
    warnings.simplefilter("default")
    import dockerflow, dockerflow.flask, dockerflow.logging
    print("imported")
    """
)


def run_probe(extra_path: Path | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_warns_once_when_python_dockerflow_is_installed_too(tmp_path: Path) -> None:
    # What pip leaves behind for python-dockerflow: its metadata next to ours.
    info = tmp_path / "dockerflow-2026.3.4.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dockerflow\nVersion: 2026.3.4\n")
    result = run_probe(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported"
    assert result.stderr.count("ConflictingInstallWarning") == 1
    assert "python-dockerflow 2026.3.4" in result.stderr
    assert "pip uninstall" in result.stderr
    # The repair keeps the extras in use (this venv has Flask, SQLAlchemy, redis-py...).
    assert "pip install 'dockerflow-async[flask,sqlalchemy," in result.stderr


def test_no_warning_when_only_ours_is_installed() -> None:
    result = run_probe(None)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
