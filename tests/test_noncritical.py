"""Non-critical checks: a failure counts as a warning, and is still seen as failing."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from dockerflow import checks as compat_checks
from dockerflow import health
from dockerflow.checks import ERROR, WARNING, Error
from dockerflow.engine import Check, CheckRegistrationError, CheckResult, Engine, aggregate
from dockerflow.flask import Dockerflow, signals


def test_aggregate_caps_a_noncritical_failure_at_warning() -> None:
    results = [
        CheckResult("cache", (Error("down", id="x.E1"),)),
        CheckResult("db", ()),
    ]
    report = aggregate(results, noncritical={"cache"})
    assert (report.level, report.status) == (WARNING, "warning")
    assert report.results["cache"].raw_level == ERROR
    assert report.details == {
        "cache": {
            "status": "warning",
            "level": WARNING,
            "messages": {"x.E1": "down"},
            "critical": False,
        }
    }
    assert report.failing(ERROR) == ["cache"]
    # The same result, critical, fails.
    assert aggregate(results).level == ERROR


def test_a_noncritical_check_that_passes_or_warns_is_unchanged() -> None:
    from dockerflow.checks import Warning

    results = [CheckResult("cache", (Warning("slow", id="x.W1"),)), CheckResult("ok", ())]
    report = aggregate(results, noncritical={"cache", "ok"})
    assert report.checks == {"cache": "warning", "ok": "ok"}
    assert report.failing(ERROR) == []


def test_critical_must_be_a_bool() -> None:
    with pytest.raises(CheckRegistrationError, match="critical must be True or False"):
        Check("x", lambda: None, critical="no")  # type: ignore[arg-type]


def test_engine_reports_checks_made_noncritical_or_named() -> None:
    engine = Engine(noncritical=["named"])
    try:

        def down() -> list[Error]:
            return [Error("down", id="x.E1")]

        report = engine.run_sync(
            [Check("flagged", down, critical=False), Check("named", down), Check("core", down)]
        )
        assert report.checks == {"flagged": "warning", "named": "warning", "core": "error"}
        assert report.failing(ERROR) == ["flagged", "named", "core"]
    finally:
        engine.close()


@pytest.fixture
def app() -> Iterator[tuple[Flask, Dockerflow]]:
    compat_checks.clear_checks()
    app = Flask("noncritical")
    ext = Dockerflow(app)
    yield app, ext
    ext.close()
    compat_checks.clear_checks()


def test_a_failing_noncritical_check_keeps_the_heartbeat_passing(
    app: tuple[Flask, Dockerflow], caplog: pytest.LogCaptureFixture
) -> None:
    flask_app, ext = app

    @ext.check(critical=False)
    def recommendations() -> list[Error]:
        return [Error("recommendations API is down", id="myapp.health.E007")]

    @ext.check
    def database() -> None:
        return None

    seen: dict[str, Any] = {}

    def passed(sender: Flask, level: int) -> None:
        seen["passed"] = level

    def checked(sender: Flask, level: int, report: Any, passed: bool) -> None:
        seen["failing"] = report.failing(ERROR)

    with (
        signals.heartbeat_passed.connected_to(passed, flask_app),
        signals.heartbeat_checked.connected_to(checked, flask_app),
        caplog.at_level(logging.ERROR, logger="dockerflow.checks.registry"),
    ):
        response = flask_app.test_client().get("/__heartbeat__")
    assert response.status_code == 200
    body = response.json
    assert body["status"] == "warning"
    assert body["checks"] == {"recommendations": "warning", "database": "ok"}
    assert body["details"]["recommendations"] == {
        "status": "warning",
        "level": WARNING,
        "messages": {"myapp.health.E007": "recommendations API is down"},
        "critical": False,
    }
    # Signals and logs still see it failing.
    assert seen == {"passed": WARNING, "failing": ["recommendations"]}
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (ERROR, "myapp.health.E007: recommendations API is down")
    ]


def test_a_noncritical_failure_still_fails_a_strict_heartbeat() -> None:
    flask_app = Flask("strict")
    flask_app.config["DOCKERFLOW_HEARTBEAT_FAIL_LEVEL"] = "warning"
    ext = Dockerflow(flask_app)
    try:
        ext.check(lambda: [Error("down", id="x.E1")], name="optional", critical=False)
        assert flask_app.test_client().get("/__heartbeat__").status_code == 500
    finally:
        ext.close()


def test_register_takes_critical(app: tuple[Flask, Dockerflow]) -> None:
    flask_app, _ = app

    @compat_checks.register(critical=False)
    def legacy_optional() -> list[Error]:
        return [Error("down", id="x.E1")]

    response = flask_app.test_client().get("/__heartbeat__")
    assert (response.status_code, response.json["checks"]) == (
        200,
        {"legacy_optional": "warning"},
    )


@pytest.mark.redis
def test_builtin_redis_check_made_noncritical_by_the_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import redis

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens: connections are refused
    flask_app = Flask("builtin")
    flask_app.config["DOCKERFLOW_NONCRITICAL_CHECKS"] = "check_redis_connected"
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    ext = Dockerflow(flask_app, redis=client)
    try:
        response = flask_app.test_client().get("/__heartbeat__")
        assert response.status_code == 200
        detail = response.json["details"]["check_redis_connected"]
        assert detail["status"] == "warning"
        assert detail["critical"] is False
        assert list(detail["messages"]) == [health.ERROR_CANNOT_CONNECT_REDIS]
    finally:
        ext.close()
        client.close()


def test_unknown_names_in_the_setting_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    flask_app = Flask("typo")
    flask_app.config["DOCKERFLOW_NONCRITICAL_CHECKS"] = "check_redis"
    ext = Dockerflow(flask_app)
    try:
        ext.check(lambda: None, name="check_redis_connected")
        with caplog.at_level(logging.WARNING, logger="dockerflow.flask"):
            flask_app.test_client().get("/__heartbeat__")
            flask_app.test_client().get("/__heartbeat__")
        warned = [r.getMessage() for r in caplog.records if "NONCRITICAL" in r.getMessage()]
        assert warned == ["DOCKERFLOW_NONCRITICAL_CHECKS names no registered check: check_redis"]
    finally:
        ext.close()


@pytest.mark.parametrize("value", ["a,,b", ",", "a b"])
def test_malformed_name_lists_are_refused(value: str) -> None:
    from dockerflow.engine import ConfigurationError

    flask_app = Flask("bad")
    flask_app.config["DOCKERFLOW_NONCRITICAL_CHECKS"] = value
    with pytest.raises(ConfigurationError, match="DOCKERFLOW_NONCRITICAL_CHECKS"):
        Dockerflow(flask_app)
