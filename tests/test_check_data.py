"""Values a check reports beside its messages (``CheckData``): in the report, the Dockerflow
body's details and health+json, masked and bounded like messages."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import pytest

from dockerflow import health
from dockerflow.checks import CheckData, Error, Warning
from dockerflow.engine import Check, Engine, Report
from dockerflow.engine._results import MAX_DATA_ITEMS
from dockerflow.health_json import health_json


@pytest.fixture
def engine() -> Any:
    engine = Engine(timeout=2)
    yield engine
    engine.close()


def run(engine: Engine, *checks: Check) -> Report:
    return engine.run_sync(checks)


def test_values_go_with_a_passing_checks_result_but_not_into_the_dockerflow_body(
    engine: Engine,
) -> None:
    def queue() -> list[Any]:
        return [CheckData("depth", 12, unit="jobs")]

    report = run(engine, Check("queue", queue))
    assert report.results["queue"].data == {"depth": CheckData("depth", 12, unit="jobs")}
    # python-dockerflow's body: details hold failing checks only, exactly as before.
    assert report.as_dict() == {"status": "ok", "checks": {"queue": "ok"}, "details": {}}


def test_a_failing_checks_values_are_in_its_details(engine: Engine) -> None:
    def replica() -> list[Any]:
        return [
            CheckData("lag", 42.5, unit="s"),
            Warning("Replica lags", id="app.W001"),
            CheckData("primary", "db-1"),
            CheckData("lag", 43.0, unit="s"),  # a later value of one name replaces the first
        ]

    details = run(engine, Check("replica", replica)).as_dict()["details"]
    assert details == {
        "replica": {
            "status": "warning",
            "level": health.WARNING,
            "messages": {"app.W001": "Replica lags"},
            "data": {"lag": {"value": 43.0, "unit": "s"}, "primary": {"value": "db-1"}},
        }
    }


def test_text_values_are_masked_and_cut(engine: Engine) -> None:
    def leaky() -> list[Any]:
        return [
            CheckData("dsn", "postgresql://app:hunter2@db/app"),
            CheckData("long", "x" * 1000),
            Error("down", id="app.E001"),
        ]

    data = run(engine, Check("leaky", leaky)).results["leaky"].data
    assert data["dsn"].value == "postgresql://app:***@db/app"
    assert isinstance(data["long"].value, str) and len(data["long"].value) == health.MAX_DATA_TEXT


def test_values_are_bounded_per_run(engine: Engine) -> None:
    def many() -> list[Any]:
        return [CheckData(f"v{i}", i) for i in range(MAX_DATA_ITEMS + 10)]

    assert len(run(engine, Check("many", many)).results["many"].data) == MAX_DATA_ITEMS


def test_something_else_in_the_list_is_still_a_bad_result(engine: Engine) -> None:
    def bad() -> list[Any]:
        return [CheckData("ok", 1), {"not": "a message"}]

    detail = run(engine, Check("bad", bad)).results["bad"]
    assert list(detail.messages) == [health.ERROR_CHECK_BAD_RESULT]
    assert detail.data == {}


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("", 1), ValueError),
        ((1, 1), TypeError),
        (("n", [1]), TypeError),
        (("n", {"a": 1}), TypeError),
        (("n", math.nan), ValueError),
        (("n", math.inf), ValueError),
        (("n", 1, 5), TypeError),
    ],
)
def test_bad_values_are_refused_where_they_are_made(args: tuple[Any, ...], error: type) -> None:
    with pytest.raises(error, match="CheckData"):
        CheckData(*args)


def test_numbers_with_a_unit_become_health_json_measurements(engine: Engine) -> None:
    def disk() -> list[Any]:
        return [
            CheckData("free", 1024, unit="bytes"),
            CheckData("version", "7.2"),  # text: no measurement of the draft's
            CheckData("count", 3),  # no unit: likewise
            CheckData("flag", True, unit="bool"),  # not a number
        ]

    report = run(engine, Check("disk:root", disk))
    now = datetime(2026, 12, 6, tzinfo=timezone.utc)
    body = health_json(report, checked_at=now)
    assert set(body["checks"]) == {"disk_root:responseTime", "disk_root:free"}
    assert body["checks"]["disk_root:free"] == [
        {
            "componentId": "disk:root",
            "status": "pass",
            "time": "2026-12-06T00:00:00.000Z",
            "observedValue": 1024,
            "observedUnit": "bytes",
        }
    ]
    # Without the details, the values are left out as the messages are.
    assert set(health_json(report, checked_at=now, details=False)["checks"]) == {
        "disk_root:responseTime"
    }


def test_code_returning_messages_only_gets_the_same_report_as_before(engine: Engine) -> None:
    def plain() -> list[Any]:
        return [Warning("meh", id="app.W002")]

    report = run(engine, Check("plain", plain))
    assert report.results["plain"].data == {}
    assert "data" not in report.as_dict()["details"]["plain"]
