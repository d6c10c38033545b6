"""Background refresh and flap damping."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import pytest

from dockerflow import health
from dockerflow.checks import Error
from dockerflow.engine import Check, CheckRegistrationError, Engine


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = Engine(timeout=1.0)
    yield engine
    engine.close()


def test_background_check_is_served_from_its_latest_result(engine: Engine) -> None:
    runs: list[float] = []
    state = {"up": True}

    async def probe() -> list[Error]:
        runs.append(time.monotonic())
        await anyio.sleep(0.1)
        return [] if state["up"] else [Error("down", id="x.E1")]

    check = Check("probe", probe, interval=0.15)
    first = engine.run_sync([check])  # waits for the first background run
    assert first.checks == {"probe": "ok"}
    before = len(runs)
    started = time.perf_counter()
    for _ in range(20):
        assert engine.run_sync([check]).checks == {"probe": "ok"}
    elapsed = time.perf_counter() - started
    # Served at once, not run 20 times (that takes 2 s): only the refresh ran meanwhile, at
    # most once per interval, however slow the machine made the 20 heartbeats.
    assert elapsed < 1.5
    assert len(runs) - before <= 1 + elapsed / 0.15
    state["up"] = False
    deadline = time.monotonic() + 10
    report = engine.run_sync([check])
    while report.checks != {"probe": "error"} and time.monotonic() < deadline:
        time.sleep(0.05)
        report = engine.run_sync([check])
    assert report.details["probe"]["messages"] == {"x.E1": "down"}
    assert len(runs) >= 2  # a refresh after the first one saw it go down


def test_stale_background_result_is_an_error(engine: Engine) -> None:
    check = Check("slowpoke", lambda: [], interval=30, max_age=0.5)
    assert engine.run_sync([check]).checks == {"slowpoke": "ok"}
    time.sleep(0.5)
    # The result's age counts from when the refresh stored it, which a loaded machine may do a
    # moment after the first heartbeat answered: stale from then on, whenever that was.
    deadline = time.monotonic() + 5
    report = engine.run_sync([check])
    while report.checks == {"slowpoke": "ok"} and time.monotonic() < deadline:
        time.sleep(0.05)
        report = engine.run_sync([check])
    assert list(report.details["slowpoke"]["messages"]) == [health.ERROR_CHECK_RESULT_STALE]


def test_first_background_run_is_bounded_by_the_timeout(engine: Engine) -> None:
    async def never() -> None:
        await anyio.sleep(60)

    check = Check("never", never, interval=10, timeout=0.2)
    started = time.perf_counter()
    report = engine.run_sync([check])
    assert time.perf_counter() - started < 0.2 + 2.0  # the run itself would take 60 s
    assert list(report.details["never"]["messages"]) == [health.ERROR_CHECK_TIMEOUT]


def test_background_refresh_restarts_after_the_loop_stops(engine: Engine) -> None:
    calls: list[int] = []

    # On the loop: once the loop is stopped nothing runs (a sync run in a worker thread when the
    # loop stopped would still finish afterwards).
    async def counted() -> None:
        calls.append(1)

    check = Check("counted", counted, interval=0.05)
    engine.run_sync([check])
    engine.close()
    stopped_at = len(calls)
    time.sleep(0.2)
    assert len(calls) == stopped_at  # nothing runs while the loop is stopped
    engine.run_sync([check])
    deadline = time.monotonic() + 10
    while len(calls) <= stopped_at + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(calls) > stopped_at + 1  # the refresh runs on by itself again


def test_failure_threshold_holds_back_the_first_failures(engine: Engine) -> None:
    state = {"fail": True}
    check = Check(
        "flappy",
        lambda: [Error("boom", id="x.E1")] if state["fail"] else [],
        failure_threshold=3,
    )
    statuses = [engine.run_sync([check]).status for _ in range(4)]
    assert statuses == ["info", "info", "error", "error"]
    held = Engine(timeout=1.0)
    try:
        report = held.run_sync([check])
        assert list(report.details["flappy"]["messages"]) == [health.INFO_FAILURE_DAMPED]
    finally:
        held.close()
    state["fail"] = False
    assert engine.run_sync([check]).status == "ok"
    state["fail"] = True
    assert engine.run_sync([check]).status == "info"  # the streak starts over after a pass


def test_failure_delay_reports_after_time_in_error(engine: Engine) -> None:
    check = Check("slowfail", lambda: [Error("boom", id="x.E1")], failure_delay=0.3)
    assert engine.run_sync([check]).status == "info"
    time.sleep(0.35)
    assert engine.run_sync([check]).status == "error"


@pytest.mark.parametrize(
    "options",
    [
        {"interval": 0},
        {"interval": -1},
        {"max_age": 5},
        {"failure_threshold": 0},
        {"failure_threshold": 2.5},
        {"failure_delay": -1},
        {"failure_delay": "soon"},
    ],
)
def test_bad_mode_options(options: dict[str, object]) -> None:
    with pytest.raises(CheckRegistrationError):
        Check("x", lambda: None, **options)  # type: ignore[arg-type]


def test_failure_grace_is_a_deprecated_name_of_failure_delay() -> None:
    with pytest.warns(DeprecationWarning, match="failure_delay"):
        check = Check("old", lambda: None, failure_grace=5)
    assert check.failure_delay == 5.0
    assert check.damped
    with pytest.warns(DeprecationWarning, match="failure_delay"):
        assert check.failure_grace == 5.0
    with pytest.warns(DeprecationWarning), pytest.raises(CheckRegistrationError, match="grace"):
        Check("old", lambda: None, failure_grace=-1)
