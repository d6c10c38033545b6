"""The application/health+json body, built from plain reports (no Flask, no engine run)."""

from __future__ import annotations

import json
import re
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dockerflow.engine import CheckDetail, Report
from dockerflow.health import CRITICAL, DEBUG, ERROR, INFO, WARNING
from dockerflow.health_json import check_key, format_time, health_json, health_status

SCHEMA = json.loads((Path(__file__).parent / "schemas" / "health-json.schema.json").read_text())
AT = datetime(2026, 11, 26, 13, 53, 51, 120_999, tzinfo=timezone.utc)


def validate(body: dict[str, Any]) -> dict[str, Any]:
    """Validate ``body`` against the draft's schema (after a JSON round trip) and return it."""
    jsonschema.validate(json.loads(json.dumps(body)), SCHEMA)
    return body


def report(**checks: tuple[int, dict[str, str], float]) -> Report:
    details = {name: CheckDetail(*detail) for name, detail in checks.items()}
    return Report(max((d.level for d in details.values()), default=0), details)


# -- the schema itself can fail -----------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"status": "ok"},
        {"status": "pass", "output": "a pass has no output"},
        {"status": "pass", "checks": {"a:b:c": [{"status": "pass"}]}},
        {"status": "pass", "checks": {"a:responseTime": []}},
        {"status": "pass", "checks": {"a:responseTime": [{}]}},
        {"status": "pass", "checks": {"a:responseTime": [{"observedValue": 1}]}},
        {"status": "pass", "checks": {"a:responseTime": [{"time": "2026-11-26T13:53:51"}]}},
        {"status": "pass", "version": 2},
    ],
)
def test_the_schema_rejects_bodies_the_draft_does_not_allow(bad: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)


def test_the_schema_accepts_the_drafts_own_example_shape() -> None:
    validate(
        {
            "status": "pass",
            "version": "1",
            "releaseId": "1.2.2",
            "notes": [""],
            "serviceId": "f03e522f",
            "description": "health of authz service",
            "checks": {
                "cassandra:responseTime": [
                    {
                        "componentId": "dfd6cf2b",
                        "componentType": "datastore",
                        "observedValue": 250,
                        "observedUnit": "ms",
                        "status": "pass",
                        "affectedEndpoints": ["/users/{userId}"],
                        "time": "2018-01-17T03:36:48Z",
                    }
                ],
                "uptime": [{"observedValue": 1209600.245, "observedUnit": "s", "status": "pass"}],
            },
            "links": {"about": "http://api.example.com/about/authz"},
        }
    )


# -- status -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "fail_level", "expected"),
    [
        (0, ERROR, "pass"),
        (DEBUG, ERROR, "pass"),
        (INFO, ERROR, "pass"),
        (WARNING, ERROR, "warn"),
        (ERROR, ERROR, "fail"),
        (CRITICAL, ERROR, "fail"),
        # Strict mode: a warning fails the heartbeat, so it is no "warn".
        (WARNING, WARNING, "fail"),
        (INFO, WARNING, "pass"),
        # A lenient fail level: an error that does not fail the heartbeat is a concern.
        (ERROR, CRITICAL, "warn"),
        (CRITICAL, CRITICAL, "fail"),
        (INFO, INFO, "fail"),
        (DEBUG, DEBUG, "fail"),
    ],
)
def test_status_follows_the_level_and_the_fail_level(
    level: int, fail_level: int, expected: str
) -> None:
    assert health_status(level, fail_level) == expected
    body = health_json(report(c=(level, {}, 0.0)), checked_at=AT, fail_level=fail_level)
    assert body["status"] == expected
    assert body["checks"]["c:responseTime"][0]["status"] == expected


@pytest.mark.parametrize("bad", [0, 35, 60, -10, "error", None, 40.5, [40]])
def test_a_bad_fail_level_is_refused_naming_it(bad: Any) -> None:
    with pytest.raises(
        ValueError, match=re.escape(f"fail_level must be one of 10, 20, 30, 40, 50, got {bad!r}")
    ):
        health_json(report(), checked_at=AT, fail_level=bad)


# -- bodies -------------------------------------------------------------------------------------


def test_a_passing_report() -> None:
    body = validate(
        health_json(
            report(db=(0, {}, 0.0123456789), cache=(INFO, {"x.I1": "warming up"}, 0.5)),
            checked_at=AT,
        )
    )
    assert body == {
        "status": "pass",
        "checks": {
            "db:responseTime": [
                {
                    "componentId": "db",
                    "status": "pass",
                    "time": "2026-11-26T13:53:51.120Z",
                    "observedValue": 0.012346,
                    "observedUnit": "s",
                }
            ],
            # An info message does not make a concern, but what the Dockerflow body shows is
            # shown here too (issue 22.6: I001 was hidden behind a bare "pass").
            "cache:responseTime": [
                {
                    "componentId": "cache",
                    "status": "pass",
                    "time": "2026-11-26T13:53:51.120Z",
                    "observedValue": 0.5,
                    "observedUnit": "s",
                    "output": "x.I1: warming up",
                }
            ],
        },
    }


def test_a_warning_report_that_passes_is_warn_with_output() -> None:
    body = validate(
        health_json(
            report(
                db=(0, {}, 0.01),
                queue=(WARNING, {"myapp.health.W002": "1200 jobs waiting", "queue.1": "slow"}, 0.2),
            ),
            checked_at=AT,
        )
    )
    assert body["status"] == "warn"
    assert body["checks"]["queue:responseTime"] == [
        {
            "componentId": "queue",
            "status": "warn",
            "time": "2026-11-26T13:53:51.120Z",
            "observedValue": 0.2,
            "observedUnit": "s",
            "output": "myapp.health.W002: 1200 jobs waiting\nqueue.1: slow",
        }
    ]
    assert "output" not in body["checks"]["db:responseTime"][0]


def test_a_failing_report() -> None:
    body = validate(
        health_json(
            report(
                db=(ERROR, {"dockerflow.health.E001": "Could not connect to database"}, 1.5),
                queue=(WARNING, {"q.W1": "slow"}, 0.2),
                up=(0, {}, 0.001),
            ),
            checked_at=AT,
        )
    )
    assert body["status"] == "fail"
    assert {key: entries[0]["status"] for key, entries in body["checks"].items()} == {
        "db:responseTime": "fail",
        "queue:responseTime": "warn",
        "up:responseTime": "pass",
    }
    assert body["checks"]["db:responseTime"][0]["output"] == (
        "dockerflow.health.E001: Could not connect to database"
    )


def test_without_details_there_is_no_output_but_everything_else() -> None:
    failing = report(
        db=(ERROR, {"dockerflow.health.E001": "secret-looking text"}, 1.5),
        queue=(WARNING, {"q.W1": "slow"}, 0.2),
    )
    shown = health_json(failing, checked_at=AT, details=True)
    hidden = validate(health_json(failing, checked_at=AT, details=False))
    assert "secret-looking text" not in json.dumps(hidden)
    for entries in hidden["checks"].values():
        assert "output" not in entries[0]
    # Only output differs.
    for entries in shown["checks"].values():
        del entries[0]["output"]
    assert hidden == shown


def test_no_checks() -> None:
    assert validate(health_json(report(), checked_at=AT)) == {"status": "pass", "checks": {}}


# -- version, service -----------------------------------------------------------------------------


def test_version_and_release_id_come_from_version_json() -> None:
    version = {
        "source": "https://github.com/mozilla-services/example",
        "version": "2.4.0",
        "commit": "3f1c9e0d",
        "build": "https://ci.example.com/builds/42",
    }
    body = validate(health_json(report(), checked_at=AT, version=version))
    assert (body["version"], body["releaseId"]) == ("2.4.0", "3f1c9e0d")
    assert list(body) == ["status", "version", "releaseId", "checks"]


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (None, {}),
        ({}, {}),
        ({"version": "1.0"}, {"version": "1.0"}),
        ({"commit": "abc"}, {"releaseId": "abc"}),
        # Not strings (the draft's fields are strings): left out, never sent as something else.
        ({"version": 2, "commit": None}, {}),
        ({"version": "", "commit": ["a"]}, {}),
    ],
)
def test_version_fields_only_where_version_json_has_them(
    version: dict[str, Any] | None, expected: dict[str, str]
) -> None:
    body = validate(health_json(report(), checked_at=AT, version=version))
    assert {k: body[k] for k in ("version", "releaseId") if k in body} == expected


def test_service_id_and_description_when_given() -> None:
    body = validate(
        health_json(report(), checked_at=AT, service_id="payments", description="health of x")
    )
    assert (body["serviceId"], body["description"]) == ("payments", "health of x")


# -- keys and time --------------------------------------------------------------------------------


def test_a_colon_in_a_check_name_stays_in_component_id_only() -> None:
    body = validate(
        health_json(
            report(**{"db:primary": (0, {}, 0.1), "db_primary": (0, {}, 0.2)}), checked_at=AT
        )
    )
    assert check_key("db:primary") == "db_primary:responseTime"
    # Two names that meet in one key share its array, told apart by componentId.
    assert [e["componentId"] for e in body["checks"]["db_primary:responseTime"]] == [
        "db:primary",
        "db_primary",
    ]


def test_time_is_utc_with_milliseconds() -> None:
    paris = timezone(timedelta(hours=1))
    assert format_time(datetime(2026, 1, 2, 3, 4, 5, 678_900, tzinfo=paris)) == (
        "2026-01-02T02:04:05.678Z"
    )
    assert format_time(datetime(2026, 1, 2, tzinfo=timezone.utc)) == "2026-01-02T00:00:00.000Z"


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        health_json(report(), checked_at=datetime(2026, 1, 2))


def test_the_documented_example_is_what_the_code_builds() -> None:
    text = (Path(__file__).parent.parent / "docs" / "checks.rst").read_text()
    example = text.split(".. code-block:: http", 1)[1]
    start = example.index("\n   {\n") + 1
    end = example.index("\n   }\n", start) + len("\n   }")
    documented = validate(json.loads(textwrap.dedent(example[start:end])))
    built = health_json(
        report(
            check_database_connected=(0, {}, 0.010957),
            queue_depth=(WARNING, {"myapp.health.W002": "1200 jobs waiting"}, 0.001549),
        ),
        checked_at=datetime(2026, 11, 26, 14, 1, 39, 163_000, tzinfo=timezone.utc),
        version={"version": "2.4.0", "commit": "3f1c9e0d5b", "source": "https://example.com"},
    )
    assert documented == built


def test_a_failing_non_critical_check_is_warn_and_says_so() -> None:
    # What the engine makes of a non-critical check that reported an error: level capped at
    # WARNING, the raw level kept.
    down = CheckDetail(WARNING, {"myapp.health.E007": "API is down"}, 0.3, False, ERROR)
    body = validate(
        health_json(Report(WARNING, {"recs": down, "db": CheckDetail(0, {}, 0.1)}), checked_at=AT)
    )
    assert body["status"] == "warn"
    assert body["checks"]["recs:responseTime"][0] == {
        "componentId": "recs",
        "status": "warn",
        "time": "2026-11-26T13:53:51.120Z",
        "observedValue": 0.3,
        "observedUnit": "s",
        "critical": False,
        "output": "myapp.health.E007: API is down",
    }
    assert "critical" not in body["checks"]["db:responseTime"][0]
    # Strict mode: a warning fails, non-critical or not.
    strict = health_json(Report(WARNING, {"recs": down}), checked_at=AT, fail_level=WARNING)
    assert strict["checks"]["recs:responseTime"][0]["status"] == "fail"
