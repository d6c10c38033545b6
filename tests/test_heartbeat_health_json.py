"""``/__heartbeat__`` with ``Accept: application/health+json``: negotiation and the response."""

from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from flask import Flask

from dockerflow.checks import Error, Info, Warning
from dockerflow.engine import Report
from dockerflow.flask import Dockerflow
from dockerflow.flask._health_json import MAX_REMEMBERED, ReportTimes

SCHEMA = json.loads((Path(__file__).parent / "schemas" / "health-json.schema.json").read_text())
HEALTH_JSON = "application/health+json"
SECRET = "hunter2-s3cr3t"

# Flask 2.0's test client returns werkzeug's plain Response.
Response = Any


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    # version.json is looked for in the parent of root_path: tmp_path.
    return Flask("healthjson", root_path=str(tmp_path / "app"))


@pytest.fixture
def dockerflow(app: Flask) -> Iterator[Dockerflow]:
    ext = Dockerflow(app)
    yield ext
    ext._bridge.stop()


@pytest.fixture
def warning_app(app: Flask, dockerflow: Dockerflow) -> Flask:
    dockerflow.check(lambda: [], name="up")
    dockerflow.check(lambda: [Warning("queue is long", id="x.W1")], name="queue")
    return app


def get(app: Flask, accept: str | None = None, query: str = "") -> Response:
    headers = {} if accept is None else {"Accept": accept}
    return app.test_client().get(f"/__heartbeat__{query}", headers=headers)


def health(response: Response) -> dict[str, Any]:
    """The body of a health+json response, validated against the draft's schema."""
    assert response.headers["Content-Type"] == HEALTH_JSON
    assert response.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = json.loads(response.get_data(as_text=True))
    jsonschema.validate(body, SCHEMA)
    return body


def entry(body: dict[str, Any], name: str) -> dict[str, Any]:
    (only,) = body["checks"][f"{name}:responseTime"]
    return dict(only)


# -- negotiation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "wanted"),
    [
        (None, False),
        ("", False),
        ("*/*", False),
        ("application/*", False),
        ("application/json", False),
        ("text/html", False),
        (HEALTH_JSON, True),
        ("Application/Health+JSON", True),
        (f"{HEALTH_JSON}, application/json;q=0.9", True),
        (f"application/json;q=0.9, {HEALTH_JSON}", True),
        (f"{HEALTH_JSON}, */*;q=0.1", True),
        (f"text/html, {HEALTH_JSON};q=0.2", True),
        # The client prefers plain JSON, or has no preference: the Dockerflow body.
        (f"{HEALTH_JSON};q=0.5, application/json", False),
        (f"application/json, {HEALTH_JSON}", False),
        (f"{HEALTH_JSON};q=0.5, */*", False),
        (f"{HEALTH_JSON};q=0.5, application/*", False),
        # q=0 means "not acceptable".
        (f"{HEALTH_JSON};q=0", False),
        (f"{HEALTH_JSON};q=0, */*", False),
        # Not named: a wildcard preferred to application/json is not a request for health+json.
        ("application/json;q=0.5, */*;q=0.9", False),
    ],
)
def test_only_a_client_preferring_health_json_by_name_gets_it(
    warning_app: Flask, accept: str | None, wanted: bool
) -> None:
    # Between the two JSON bodies; a client preferring text/html gets the status page where it
    # is on (tests/test_status_page.py).
    warning_app.config["DOCKERFLOW_HEARTBEAT_PAGE"] = False
    response = get(warning_app, accept)
    assert response.status_code == 200
    assert response.headers["Vary"] == "Accept"
    assert response.headers["Cache-Control"] == "no-store"
    if wanted:
        assert health(response)["status"] == "warn"
    else:
        assert response.headers["Content-Type"] == "application/json"
        assert response.json == {
            "status": "warning",
            "checks": {"up": "ok", "queue": "warning"},
            "details": {
                "queue": {"status": "warning", "level": 30, "messages": {"x.W1": "queue is long"}}
            },
        }


# -- bodies and status codes --------------------------------------------------------------------


def test_pass(app: Flask, dockerflow: Dockerflow) -> None:
    dockerflow.check(lambda: [], name="up")
    dockerflow.check(lambda: [Info("warming up", id="x.I1")], name="cache")
    before = datetime.now(timezone.utc).replace(microsecond=0)
    response = get(app, HEALTH_JSON)
    assert response.status_code == 200
    body = health(response)
    assert body["status"] == "pass"
    assert sorted(body["checks"]) == ["cache:responseTime", "up:responseTime"]
    up = entry(body, "up")
    assert (up["componentId"], up["status"], up["observedUnit"]) == ("up", "pass", "s")
    assert 0 <= up["observedValue"] < 5
    made = datetime.fromisoformat(up["time"].replace("Z", "+00:00"))
    assert before <= made <= datetime.now(timezone.utc)
    # An Info passes, and its message is shown as the Dockerflow body shows it (issue 22.6).
    assert entry(body, "cache")["output"] == "x.I1: warming up"
    # No version.json: no version fields.
    assert "version" not in body
    assert "releaseId" not in body


def test_warn_is_200_with_the_message_as_output(warning_app: Flask) -> None:
    response = get(warning_app, HEALTH_JSON)
    assert response.status_code == 200
    body = health(response)
    assert body["status"] == "warn"
    assert entry(body, "queue")["status"] == "warn"
    assert entry(body, "queue")["output"] == "x.W1: queue is long"
    assert entry(body, "up")["status"] == "pass"


@pytest.mark.parametrize(("code", "expected"), [(None, 500), (503, 503)])
def test_fail_has_the_status_code_of_a_failing_heartbeat(
    app: Flask, dockerflow: Dockerflow, code: int | None, expected: int
) -> None:
    if code is not None:
        app.config["DOCKERFLOW_HEARTBEAT_FAILED_STATUS_CODE"] = code
    dockerflow.check(lambda: [Error("down", id="x.E1")], name="db")
    dockerflow.check(lambda: [], name="up")
    response = get(app, HEALTH_JSON)
    assert response.status_code == expected
    body = health(response)
    assert body["status"] == "fail"
    assert entry(body, "db")["output"] == "x.E1: down"
    # The Dockerflow body answers with the same code.
    assert get(app).status_code == expected


def test_strict_fail_level_makes_a_warning_fail(app: Flask) -> None:
    app.config["DOCKERFLOW_HEARTBEAT_FAIL_LEVEL"] = "warning"
    ext = Dockerflow(app)
    try:
        ext.check(lambda: [Warning("queue is long", id="x.W1")], name="queue")
        response = get(app, HEALTH_JSON)
        assert response.status_code == 500
        assert health(response)["status"] == "fail"
        assert entry(health(response), "queue")["status"] == "fail"
    finally:
        ext._bridge.stop()


def test_a_check_that_times_out_is_a_failure_with_its_duration(
    app: Flask, dockerflow: Dockerflow
) -> None:
    async def slow() -> list[Any]:
        import anyio

        await anyio.sleep(5)
        return []

    dockerflow.check(slow, name="slow", timeout=0.2)
    started = time.monotonic()
    response = get(app, HEALTH_JSON)
    assert time.monotonic() - started < 2
    assert response.status_code == 500
    slow_entry = entry(health(response), "slow")
    assert slow_entry["status"] == "fail"
    assert slow_entry["output"].startswith("dockerflow.health.E011: ")
    assert 0.15 <= slow_entry["observedValue"] < 2


def test_a_failing_non_critical_check_keeps_the_heartbeat_200(app: Flask) -> None:
    app.config["DOCKERFLOW_NONCRITICAL_CHECKS"] = "recommendations"
    ext = Dockerflow(app)
    try:
        ext.check(lambda: [Error("API is down", id="myapp.health.E007")], name="recommendations")
        ext.check(lambda: [], name="up")
        response = get(app, HEALTH_JSON)
        assert response.status_code == 200
        body = health(response)
        assert body["status"] == "warn"
        recommendations = entry(body, "recommendations")
        assert (recommendations["status"], recommendations["critical"]) == ("warn", False)
        assert recommendations["output"] == "myapp.health.E007: API is down"
        assert "critical" not in entry(body, "up")
    finally:
        ext._bridge.stop()


# -- details ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "debug", "shown"),
    [
        ("always", False, True),
        ("debug", False, False),
        ("debug", True, True),
        ("never", False, False),
        ("never", True, False),
    ],
)
def test_output_only_where_details_are_shown(
    warning_app: Flask, setting: str, debug: bool, shown: bool
) -> None:
    # Read on every heartbeat, as the Dockerflow body's details are.
    warning_app.config["DOCKERFLOW_HEARTBEAT_DETAILS"] = setting
    warning_app.debug = debug
    body = health(get(warning_app, HEALTH_JSON))
    assert body["status"] == "warn"
    assert ("output" in entry(body, "queue")) is shown
    assert bool(get(warning_app).json["details"]) is shown


# -- masking ------------------------------------------------------------------------------------


def test_secrets_in_messages_are_masked_in_output(
    app: Flask, dockerflow: Dockerflow, caplog: pytest.LogCaptureFixture
) -> None:
    dockerflow.check(
        lambda: [Error(f"cannot connect to postgresql://app:{SECRET}@db:5432/main", id="x.E1")],
        name="db",
    )

    def raises() -> list[Any]:
        raise RuntimeError(f"login failed: password={SECRET}")

    dockerflow.check(raises, name="api")
    caplog.set_level(logging.INFO)
    response = get(app, HEALTH_JSON)
    text = response.get_data(as_text=True)
    assert SECRET not in text
    assert SECRET not in caplog.text
    body = health(response)
    assert (
        entry(body, "db")["output"] == "x.E1: cannot connect to postgresql://app:***@db:5432/main"
    )
    assert entry(body, "api")["output"].startswith("dockerflow.health.E012: ")
    assert "password=***" in entry(body, "api")["output"]


# -- version.json -------------------------------------------------------------------------------


def test_version_fields_from_version_json(app: Flask, warning_app: Flask, tmp_path: Path) -> None:
    (tmp_path / "version.json").write_text(
        json.dumps(
            {
                "source": "https://github.com/mozilla-services/example",
                "version": "2.4.0",
                "commit": "3f1c9e0d5b",
                "build": "https://ci.example.com/42",
            }
        )
    )
    body = health(get(app, HEALTH_JSON))
    assert (body["version"], body["releaseId"]) == ("2.4.0", "3f1c9e0d5b")
    # The Dockerflow body stays as it was.
    assert "version" not in get(app).json


def test_a_broken_version_json_leaves_the_fields_out_and_is_logged(
    warning_app: Flask, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "version.json").write_text("{not json")
    caplog.set_level(logging.WARNING, logger="dockerflow.flask")
    response = get(warning_app, HEALTH_JSON)
    assert response.status_code == 200
    body = health(response)
    assert "version" not in body
    assert "version.json" in caplog.text
    assert "left out of the heartbeat" in caplog.text


def test_version_callback_and_version_path_are_used(
    warning_app: Flask, dockerflow: Dockerflow, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "version.json").write_text(json.dumps({"version": "9.9", "commit": "c0ffee"}))
    dockerflow.version_path = elsewhere
    assert health(get(warning_app, HEALTH_JSON))["releaseId"] == "c0ffee"
    seen: list[str] = []

    @dockerflow.version_callback
    def from_env(path: str) -> dict[str, Any]:
        seen.append(path)
        return {"version": "1.0", "commit": "feed"}

    body = health(get(warning_app, HEALTH_JSON))
    assert (body["version"], body["releaseId"], seen) == ("1.0", "feed", [str(elsewhere)])


# -- subsets ------------------------------------------------------------------------------------


def test_subsets_work_the_same(app: Flask, dockerflow: Dockerflow) -> None:
    dockerflow.check(lambda: [], name="up")
    dockerflow.check(lambda: [Error("down", id="x.E1")], name="down")
    only = get(app, HEALTH_JSON, "?check=up")
    assert (only.status_code, list(health(only)["checks"])) == (200, ["up:responseTime"])
    rest = get(app, HEALTH_JSON, "?exclude=up")
    assert (rest.status_code, list(health(rest)["checks"])) == (500, ["down:responseTime"])
    unknown = get(app, HEALTH_JSON, "?check=nope")
    assert unknown.status_code == 400
    assert unknown.headers["Content-Type"] == "application/json"
    assert unknown.json == {"error": "unknown check: nope (the checks are: down, up)"}


# -- time of cached reports ---------------------------------------------------------------------


def parsed_time(response: Response, name: str) -> datetime:
    return datetime.fromisoformat(entry(health(response), name)["time"].replace("Z", "+00:00"))


def test_a_cached_report_keeps_the_time_it_was_made_at(app: Flask) -> None:
    app.config["DOCKERFLOW_HEARTBEAT_CACHE_TTL"] = 60
    ext = Dockerflow(app)
    runs: list[int] = []
    ext.check(lambda: runs.append(1), name="counted")
    try:
        before = datetime.now(timezone.utc)
        assert get(app).status_code == 200  # the Dockerflow body makes the report
        after = datetime.now(timezone.utc)
        time.sleep(0.05)
        first = parsed_time(get(app, HEALTH_JSON), "counted")
        again = parsed_time(get(app, HEALTH_JSON), "counted")
        assert runs == [1]  # served from the cache, not run again
        assert first == again
        # Milliseconds are cut, not rounded.
        assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= first <= after
    finally:
        ext._bridge.stop()


def test_without_a_cache_each_report_has_its_own_time(warning_app: Flask) -> None:
    first = parsed_time(get(warning_app, HEALTH_JSON), "up")
    time.sleep(0.05)
    second = parsed_time(get(warning_app, HEALTH_JSON), "up")
    assert (second - first).total_seconds() >= 0.04


def test_report_times_forget_the_oldest_beyond_their_bound() -> None:
    times = ReportTimes()
    reports = [Report(0) for _ in range(MAX_REMEMBERED + 1)]
    first = times.time_of(reports[0], remember=True)
    time.sleep(0.002)
    assert times.time_of(reports[0], remember=True) == first
    for report in reports[1:]:
        times.time_of(report, remember=True)
    # reports[0] was the oldest: forgotten, so it gets a new time.
    assert times.time_of(reports[0], remember=True) > first
    # Not remembering: now, even for a report that is remembered.
    remembered = times.time_of(reports[-1], remember=True)
    time.sleep(0.002)
    assert times.time_of(reports[-1], remember=True) == remembered
    assert times.time_of(reports[-1], remember=False) > remembered


# -- flask dockerflow heartbeat --format health+json ---------------------------------------------


def cli(app: Flask, *args: str) -> Any:
    """Run ``flask dockerflow heartbeat ARGS`` through Flask's CliRunner, stdout apart."""
    from click.testing import CliRunner

    mixes = "mix_stderr" in inspect.signature(CliRunner.__init__).parameters
    runner = app.test_cli_runner(mix_stderr=False) if mixes else app.test_cli_runner()
    return runner.invoke(args=["dockerflow", "heartbeat", *args])


def test_cli_prints_the_body_the_view_gives(app: Flask, tmp_path: Path) -> None:
    # A cached report, so that both bodies have the same times and durations; details shown,
    # as the command always shows them.
    app.config["DOCKERFLOW_HEARTBEAT_CACHE_TTL"] = 60
    app.config["DOCKERFLOW_HEARTBEAT_DETAILS"] = "always"
    (tmp_path / "version.json").write_text(json.dumps({"version": "2.4.0", "commit": "3f1c9e0"}))
    ext = Dockerflow(app)
    ext.check(lambda: [], name="up")
    ext.check(lambda: [Warning("queue is long", id="x.W1")], name="queue")
    try:
        view = health(get(app, HEALTH_JSON))
        result = cli(app, "--format", "health+json")
        assert result.exit_code == 0, result.output
        printed = json.loads(result.stdout)
        jsonschema.validate(printed, SCHEMA)
        assert printed == view
        assert (printed["status"], printed["version"]) == ("warn", "2.4.0")
        assert entry(printed, "queue")["output"] == "x.W1: queue is long"
    finally:
        ext._bridge.stop()


def test_cli_exit_status_is_the_same_for_both_formats(app: Flask, dockerflow: Dockerflow) -> None:
    state = {"up": True}
    dockerflow.check(lambda: [] if state["up"] else [Error("down", id="x.E1")], name="svc")
    dockerflow.check(lambda: [], name="other")
    passing = cli(app, "--format", "health+json")
    assert passing.exit_code == 0, passing.output
    assert json.loads(passing.stdout)["status"] == "pass"
    state["up"] = False
    failing = cli(app, "--format", "health+json")
    assert failing.exit_code == 1
    body = json.loads(failing.stdout)
    jsonschema.validate(body, SCHEMA)
    assert (body["status"], entry(body, "svc")["output"]) == ("fail", "x.E1: down")
    subset = cli(app, "--format", "health+json", "--check", "other")
    assert (subset.exit_code, list(json.loads(subset.stdout)["checks"])) == (
        0,
        ["other:responseTime"],
    )
    plain = cli(app, "--format", "json")
    assert (plain.exit_code, json.loads(plain.stdout)["status"]) == (1, "error")
    unknown = cli(app, "--format", "health+json", "--check", "nope")
    assert (unknown.exit_code, unknown.stdout) == (2, "")
    assert "unknown check: nope" in unknown.stderr
    bad_format = cli(app, "--format", "yaml")
    assert bad_format.exit_code == 2
    assert "yaml" in bad_format.stderr and "health+json" in bad_format.stderr


def test_cli_health_json_from_the_flask_command(tmp_path: Path) -> None:
    (tmp_path / "probe_app.py").write_text(
        textwrap.dedent(
            """
            from flask import Flask
            from dockerflow.checks import Error
            from dockerflow.flask import Dockerflow

            def create_app():
                app = Flask("probe")
                dockerflow = Dockerflow(app)
                dockerflow.check(lambda: [Error("it is down", id="probe.E1")], name="svc")
                return app
            """
        )
    )
    # FLASK_APP rather than --app, which Flask 2.0 and 2.1 (make test-min) do not have.
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "FLASK_APP": "probe_app:create_app"}
    result = subprocess.run(
        [sys.executable, "-m", "flask", "dockerflow", "heartbeat", "--format", "health+json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    body = json.loads(result.stdout)  # one JSON document and nothing else
    jsonschema.validate(body, SCHEMA)
    assert (body["status"], entry(body, "svc")["output"]) == ("fail", "probe.E1: it is down")
