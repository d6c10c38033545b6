"""The startup grace: failing checks that have not passed yet count as warnings, for a while."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dockerflow import health
from dockerflow.checks import ERROR, WARNING, Error, Info
from dockerflow.engine import (
    CheckResult,
    ConfigurationError,
    Report,
    StartupGrace,
    aggregate,
)
from dockerflow.flask import Dockerflow
from dockerflow.health_json import MEDIA_TYPE
from dockerflow.metrics import HeartbeatMetrics

DOWN = (Error("db is down", id="x.E1"),)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def report(**checks: tuple[Any, ...]) -> Report:
    return aggregate([CheckResult(name, messages) for name, messages in checks.items()])


# -- the policy alone ---------------------------------------------------------------------------


def test_a_failing_check_that_never_passed_counts_as_a_warning_marked_starting() -> None:
    grace = StartupGrace(30, clock=Clock())
    raw = report(db=DOWN, cache=())
    graced = grace.apply(raw, ERROR, ["db", "cache"])
    assert (graced.level, graced.status) == (WARNING, "warning")
    assert graced.results["db"].raw_level == ERROR
    assert graced.details == {
        "db": {
            "status": "warning",
            "level": WARNING,
            "messages": {"x.E1": "db is down"},
            "starting": True,
        }
    }
    # Still failing for whatever looks at the real levels (logs, signals, metrics).
    assert graced.failing(ERROR) == ["db"]
    assert raw.level == ERROR  # the engine's report is not changed


def test_a_check_that_passed_once_fails_for_real_even_during_the_grace() -> None:
    grace = StartupGrace(30, clock=Clock())
    grace.apply(report(db=(), cache=DOWN), ERROR, ["db", "cache"])
    graced = grace.apply(report(db=DOWN, cache=DOWN), ERROR, ["db", "cache"])
    assert graced.checks == {"db": "error", "cache": "warning"}
    assert not graced.results["db"].starting
    assert graced.results["cache"].starting
    assert not grace.over


def test_the_grace_ends_when_its_seconds_have_passed_and_never_comes_back() -> None:
    clock = Clock()
    grace = StartupGrace(30, clock=clock)
    assert grace.apply(report(db=DOWN), ERROR, ["db"]).status == "warning"
    clock.now += 29.9
    assert grace.apply(report(db=DOWN), ERROR, ["db"]).status == "warning"
    clock.now += 0.1
    assert grace.over
    assert grace.apply(report(db=DOWN), ERROR, ["db"]).status == "error"
    clock.now -= 20  # a clock cannot go back, but the grace would not either
    assert grace.apply(report(db=DOWN), ERROR, ["db"]).status == "error"


def test_the_grace_ends_once_every_check_has_passed_once() -> None:
    grace = StartupGrace(30, clock=Clock())
    # Each check passes in a different heartbeat (subsets, or a flapping start).
    grace.apply(report(db=(), cache=DOWN), ERROR, ["db", "cache"])
    assert not grace.over
    grace.apply(report(cache=()), ERROR, ["db", "cache"])
    assert grace.over
    # A check registered afterwards never starts.
    assert grace.apply(report(late=DOWN), ERROR, ["db", "cache", "late"]).status == "error"


def test_a_check_added_during_the_grace_starts_until_it_passes() -> None:
    grace = StartupGrace(30, clock=Clock())
    grace.apply(report(db=()), ERROR, ["db"])  # every check passed: over
    assert grace.over
    grace = StartupGrace(30, clock=Clock())
    grace.apply(report(db=(), late=DOWN), ERROR, ["db", "late"])
    graced = grace.apply(report(db=(), late=DOWN), ERROR, ["db", "late"])
    assert graced.results["late"].starting and graced.status == "warning"


def test_a_damped_failure_is_not_a_pass() -> None:
    grace = StartupGrace(30, clock=Clock())
    damped = (Info("failing, not reported yet", id=health.INFO_FAILURE_DAMPED),)
    grace.apply(report(db=damped), ERROR, ["db"])
    assert not grace.over
    assert grace.apply(report(db=DOWN), ERROR, ["db"]).results["db"].starting


def test_strict_mode_excuses_nothing_a_warning_would_not() -> None:
    # fail_level=warning: a starting check is capped at warning, which still fails.
    grace = StartupGrace(30, clock=Clock())
    graced = grace.apply(report(db=DOWN), WARNING, ["db"])
    assert graced.level == WARNING and graced.results["db"].starting


def test_the_same_report_served_again_gets_the_same_graced_report() -> None:
    grace = StartupGrace(30, clock=Clock())
    raw = report(db=DOWN, cache=())
    first = grace.apply(raw, ERROR, ["db", "cache"])
    assert grace.apply(raw, ERROR, ["db", "cache"]) is first
    assert grace.apply(report(db=DOWN, cache=()), ERROR, ["db", "cache"]) is not first
    passing = report(db=(), cache=())
    assert grace.apply(passing, ERROR, ["db", "cache"]) is passing


def test_zero_seconds_is_off() -> None:
    grace = StartupGrace(0)
    assert grace.over
    raw = report(db=DOWN)
    assert grace.apply(raw, ERROR, ["db"]) is raw


@pytest.mark.parametrize("seconds", [-1, float("nan"), float("inf"), True, "5"])
def test_bad_seconds_are_refused(seconds: Any) -> None:
    with pytest.raises(ConfigurationError, match="startup grace"):
        StartupGrace(seconds)


# -- in the Flask extension ---------------------------------------------------------------------


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    app = Flask("graceapp", root_path=str(tmp_path / "app"))
    app.config.update(TESTING=True, DOCKERFLOW_STARTUP_GRACE_SECONDS=600)
    return app


def make(app: Flask, state: dict[str, bool], **kwargs: Any) -> Dockerflow:
    dockerflow = Dockerflow(app, **kwargs)

    @dockerflow.check
    def database() -> list[Error]:
        down = Error("cannot connect", id=health.ERROR_CANNOT_CONNECT_DATABASE)
        return [] if state["up"] else [down]

    @dockerflow.check
    def other() -> list[Error]:
        return []

    return dockerflow


def test_the_heartbeat_passes_while_a_check_that_never_passed_fails(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    state = {"up": False}
    make(app, state)
    client = app.test_client()
    with caplog.at_level(logging.INFO, logger="dockerflow.checks.registry"):
        response = client.get("/__heartbeat__")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "warning"
    assert body["checks"] == {"database": "warning", "other": "ok"}
    assert body["details"]["database"]["starting"] is True
    assert "critical" not in body["details"]["database"]
    # Logged at its real level.
    assert [r.levelno for r in caplog.records if health.ERROR_CANNOT_CONNECT_DATABASE in r.message]
    assert {r.levelno for r in caplog.records if "cannot connect" in r.getMessage()} == {
        logging.ERROR
    }

    state["up"] = True
    assert client.get("/__heartbeat__").status_code == 200  # every check has passed: over
    state["up"] = False
    response = client.get("/__heartbeat__")
    assert response.status_code == 500
    assert "starting" not in response.get_json()["details"]["database"]


def test_health_json_and_metrics_show_a_starting_check(app: Flask) -> None:
    registry = CollectorRegistry()
    make(app, {"up": False}, metrics=HeartbeatMetrics(registry))
    response = app.test_client().get("/__heartbeat__", headers={"Accept": MEDIA_TYPE})
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "warn"
    (entry,) = body["checks"]["database:responseTime"]
    assert entry["status"] == "warn" and entry["starting"] is True
    assert health.ERROR_CANNOT_CONNECT_DATABASE in entry["output"]
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    assert samples[("dockerflow_check_starting", (("check", "database"),))] == 1
    assert samples[("dockerflow_check_level", (("check", "database"),))] == ERROR
    assert ("dockerflow_check_starting", (("check", "other"),)) not in samples


def test_the_metric_goes_back_to_zero_when_the_check_passes(app: Flask) -> None:
    registry = CollectorRegistry()
    state = {"up": False}
    make(app, state, metrics=HeartbeatMetrics(registry))
    client = app.test_client()
    client.get("/__heartbeat__")
    state["up"] = True
    client.get("/__heartbeat__")
    text = generate_latest(registry).decode()
    assert 'dockerflow_check_starting{check="database"} 0.0' in text


def test_run_checks_and_the_cli_see_the_real_levels(app: Flask) -> None:
    dockerflow = make(app, {"up": False})
    with app.app_context():
        assert dockerflow.run_checks().status == "error"
    result = app.test_cli_runner().invoke(args=["dockerflow", "heartbeat"])
    assert result.exit_code == 1


def test_the_grace_is_off_by_default(app: Flask) -> None:
    del app.config["DOCKERFLOW_STARTUP_GRACE_SECONDS"]
    make(app, {"up": False})
    response = app.test_client().get("/__heartbeat__")
    assert response.status_code == 500
    assert "starting" not in response.get_json()["details"]["database"]


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_a_bad_setting_fails_at_init_app_naming_key_and_value(app: Flask, value: str) -> None:
    app.config["DOCKERFLOW_STARTUP_GRACE_SECONDS"] = value
    with pytest.raises(ConfigurationError, match=f"DOCKERFLOW_STARTUP_GRACE_SECONDS='{value}'"):
        Dockerflow(app)
