"""DOCKERFLOW_SUMMARY_LOG_DOCKERFLOW_ENDPOINTS: probes' request.summary lines, and the ones kept.

true (the default, as python-dockerflow) logs the Dockerflow endpoints like any other at INFO;
debug logs their successful answers at DEBUG; false leaves those out. An answer with an error
status, a failing heartbeat first, is logged at INFO whatever the setting.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from dockerflow import checks as compat_checks
from dockerflow.checks import Error
from dockerflow.engine import ConfigurationError
from dockerflow.flask import Dockerflow
from dockerflow.flask._config import load_settings
from dockerflow.logging import JsonLogFormatter

KEY = "DOCKERFLOW_SUMMARY_LOG_DOCKERFLOW_ENDPOINTS"


@pytest.fixture(autouse=True)
def _clean_compat_registry() -> Iterator[None]:
    compat_checks.clear_checks()
    yield
    compat_checks.clear_checks()


@pytest.fixture
def state() -> dict[str, bool]:
    return {"up": True}


def make_app(tmp_path: Path, state: dict[str, bool], setting: Any = None) -> Flask:
    app = Flask("quiet", root_path=str(tmp_path / "app"))
    if setting is not None:
        app.config[KEY] = setting

    @app.route("/")
    def index() -> str:
        return "hi"

    ext = Dockerflow(app)
    ext.check(lambda: [] if state["up"] else [Error("down", id="x.E1")], name="dependency")
    return app


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[list[Flask]]:
    made: list[Flask] = []
    yield made
    for app in made:
        app.extensions["dockerflow"].close()


def summary_levels(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, int]]:
    """(levelname, path, code) of each request.summary record, in order."""
    return [
        (r.levelname, r.__dict__["path"], r.__dict__["code"])
        for r in caplog.records
        if r.name == "request.summary"
    ]


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (None, True),
        ("true", True),
        (True, True),
        ("0", False),
        (False, False),
        ("debug", "debug"),
        (" DEBUG ", "debug"),
    ],
)
def test_the_setting_takes_a_boolean_or_debug(value: Any, parsed: Any) -> None:
    config = {} if value is None else {KEY: value}
    assert load_settings(config, {}).summary_log_dockerflow_endpoints == parsed


def test_a_bad_value_names_the_choices() -> None:
    with pytest.raises(ConfigurationError, match=r"'quiet' is not valid: .*true/false.* or debug"):
        load_settings({KEY: "quiet"}, {})


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (None, [("INFO", "/__lbheartbeat__", 200), ("INFO", "/__heartbeat__", 200)]),
        ("debug", [("DEBUG", "/__lbheartbeat__", 200), ("DEBUG", "/__heartbeat__", 200)]),
        (False, []),
    ],
    ids=["default", "debug", "false"],
)
def test_passing_probes_by_setting(
    tmp_path: Path,
    state: dict[str, bool],
    apps: list[Flask],
    caplog: pytest.LogCaptureFixture,
    setting: Any,
    expected: list[tuple[str, str, int]],
) -> None:
    app = make_app(tmp_path, state, setting)
    apps.append(app)
    client = app.test_client()
    with caplog.at_level(logging.DEBUG, logger="request.summary"):
        client.get("/__lbheartbeat__")
        client.get("/__heartbeat__")
        client.get("/")
    # The app's own pages stay at INFO whatever the setting.
    assert summary_levels(caplog) == [*expected, ("INFO", "/", 200)]


@pytest.mark.parametrize("setting", [None, "debug", False], ids=["default", "debug", "false"])
def test_a_failing_heartbeat_is_always_logged_at_info(
    tmp_path: Path,
    state: dict[str, bool],
    apps: list[Flask],
    caplog: pytest.LogCaptureFixture,
    setting: Any,
) -> None:
    app = make_app(tmp_path, state, setting)
    apps.append(app)
    state["up"] = False
    client = app.test_client()
    with caplog.at_level(logging.INFO, logger="request.summary"):
        assert client.get("/__heartbeat__").status_code == 500
        assert client.get("/__heartbeat__?check=typo").status_code == 400
        assert client.get("/__version__").status_code == 404  # no version.json
    assert summary_levels(caplog) == [
        ("INFO", "/__heartbeat__", 500),
        ("INFO", "/__heartbeat__", 400),
        ("INFO", "/__version__", 404),
    ]


def test_the_setting_changed_after_init_app_is_honoured(
    tmp_path: Path, state: dict[str, bool], apps: list[Flask], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(tmp_path, state)
    apps.append(app)
    client = app.test_client()
    with caplog.at_level(logging.INFO, logger="request.summary"):
        client.get("/__lbheartbeat__")
        app.config[KEY] = "debug"
        client.get("/__lbheartbeat__")
        app.config[KEY] = True
        client.get("/__lbheartbeat__")
    assert [path for _, path, _ in summary_levels(caplog)] == ["/__lbheartbeat__"] * 2


def lines_per_minute(app: Flask, summary_level: int) -> int:
    """Lines of mozlog JSON that a minute of 1 s probes writes: 60 rounds, without sleeping."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter(logger_name="quiet"))
    loggers = [logging.getLogger(name) for name in ("request.summary", "dockerflow")]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    loggers[0].setLevel(summary_level)
    try:
        client = app.test_client()
        for _ in range(60):
            client.get("/__heartbeat__")
            client.get("/__lbheartbeat__")
    finally:
        for logger, (level, propagate) in zip(loggers, saved, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
    lines = stream.getvalue().splitlines()
    return sum(json.loads(line)["Type"] == "request.summary" for line in lines)


@pytest.mark.parametrize(
    ("setting", "up", "summary_level", "lines"),
    [
        (None, True, logging.INFO, 120),
        (False, True, logging.INFO, 0),
        ("debug", True, logging.INFO, 0),
        ("debug", True, logging.DEBUG, 120),
        (False, False, logging.INFO, 60),  # every failing heartbeat, no liveness probe
        ("debug", False, logging.INFO, 60),
    ],
)
def test_request_summary_lines_per_minute_of_1s_probes(
    tmp_path: Path,
    state: dict[str, bool],
    apps: list[Flask],
    setting: Any,
    up: bool,
    summary_level: int,
    lines: int,
) -> None:
    app = make_app(tmp_path, state, setting)
    apps.append(app)
    state["up"] = up
    assert lines_per_minute(app, summary_level) == lines
