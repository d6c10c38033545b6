"""The demo service, run as ``make demo`` runs it: ``flask db upgrade``, then gunicorn with
examples/gunicorn.conf.py; and the ``HEALTHCHECK`` and migration step of examples/Dockerfile."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from demo_helpers import (
    DEMO_CHECKS,
    REPO,
    START_TIMEOUT,
    Demo,
    child_env,
    get,
    get_raw,
    start,
    stop,
    wait_until_serving,
)


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Demo]]:
    # The instances start at once: start-up is most of this module's run time.
    started = {
        "default": start(tmp_path_factory.mktemp("demo")),
        "slow": start(
            tmp_path_factory.mktemp("demo-slow"), DEMO_SLOW_CHECK_SECONDS="5", WEB_CONCURRENCY="1"
        ),
        # The demo's own typed settings from DEMO_* (an int and a bool, parsed as JSON).
        "noncritical": start(
            tmp_path_factory.mktemp("demo-noncritical"),
            DEMO_SLOW_CHECK_SECONDS="2",
            DEMO_SLOW_CHECK_CRITICAL="false",
            WEB_CONCURRENCY="1",
        ),
    }
    try:
        deadline = time.monotonic() + START_TIMEOUT
        for demo in started.values():
            wait_until_serving(demo, deadline)
        yield started
    finally:
        for demo in started.values():
            stop(demo)


@pytest.fixture
def demo(demos: dict[str, Demo]) -> Demo:
    return demos["default"]


def test_lbheartbeat_answers_an_empty_body(demo: Demo) -> None:
    status, headers, body = get_raw(demo.url + "/__lbheartbeat__")
    assert (status, body) == (200, b"")
    assert headers["Content-Type"] == "text/html; charset=utf-8"


def test_version_serves_the_shipped_version_json(demo: Demo) -> None:
    shipped = json.loads((REPO / "examples" / "demo" / "version.json").read_text())
    status, _, body = get(demo.url + "/__version__")
    assert status == 200
    assert body == shipped


def test_heartbeat_passes_with_every_demo_check(demo: Demo) -> None:
    status, _, body = get(demo.url + "/__heartbeat__")
    assert status == 200, body
    assert body["status"] == "ok"
    assert body["checks"] == dict.fromkeys(DEMO_CHECKS, "ok")
    assert body["details"] == {}


def test_heartbeat_subset_leaves_the_slow_check_out(demo: Demo) -> None:
    status, _, body = get(demo.url + "/__heartbeat__?exclude=slow_dependency")
    assert status == 200
    assert set(body["checks"]) == DEMO_CHECKS - {"slow_dependency"}


def test_slow_check_times_out_and_the_heartbeat_still_answers(demos: dict[str, Demo]) -> None:
    demo = demos["slow"]
    # Warm up the worker (its event loop thread, the database pools) without the slow check.
    status, _, _ = get(demo.url + "/__heartbeat__?exclude=slow_dependency")
    assert status == 200

    started = time.monotonic()
    status, _, body = get(demo.url + "/__heartbeat__", timeout=10.0)
    elapsed = time.monotonic() - started

    assert status == 500, body
    # Answered at the slow check's 1 s timeout, with room for a loaded machine; not after the
    # 5 s the check takes.
    assert elapsed < 3.5, f"the heartbeat took {elapsed:.2f}s; the slow check's timeout is 1s"
    assert body["status"] == "error"
    assert body["checks"] == {**dict.fromkeys(DEMO_CHECKS, "ok"), "slow_dependency": "error"}
    messages = body["details"]["slow_dependency"]["messages"]
    assert list(messages) == ["dockerflow.health.E011"]


def test_stdout_is_mozlog_json_with_request_summaries(demo: Demo) -> None:
    rid = f"test-demo-{uuid.uuid4()}"
    status, headers, _ = get(demo.url + "/__lbheartbeat__", headers={"X-Request-ID": rid})
    assert status == 200
    assert headers["X-Request-ID"] == rid

    deadline = time.monotonic() + 5.0
    summary = None
    while summary is None and time.monotonic() < deadline:
        records = [json.loads(line) for line in demo.stdout_lines()]
        summary = next(
            (r for r in records if r["Type"] == "request.summary" and r["Fields"]["rid"] == rid),
            None,
        )
        if summary is None:
            time.sleep(0.05)

    assert summary is not None, demo.stdout_path.read_text()
    assert summary["Logger"] == "dockerflow-demo"
    assert summary["Severity"] == 6
    fields = summary["Fields"]
    assert fields["path"] == "/__lbheartbeat__"
    assert fields["method"] == "GET"
    assert fields["code"] == 200
    assert fields["errno"] == 0
    assert {"agent", "lang", "uid", "t"} <= set(fields)
    # Every line gunicorn and the app write to stdout is JSON (json.loads above raised otherwise).
    assert all(line.startswith("{") for line in demo.stdout_lines())


def test_the_apps_own_info_log_line_reaches_stdout(demo: Demo) -> None:
    """gunicorn.conf.py gives the app's package (and app.logger) a handler at INFO."""
    rid = f"test-demo-{uuid.uuid4()}"
    status, _, _ = get(demo.url + "/", headers={"X-Request-ID": rid})
    assert status == 200

    deadline = time.monotonic() + 5.0
    line = None
    while line is None and time.monotonic() < deadline:
        records = [json.loads(line) for line in demo.stdout_lines()]
        line = next(
            (
                r
                for r in records
                if r["Type"] == "examples.demo.app" and r["Fields"].get("rid") == rid
            ),
            None,
        )
        if line is None:
            time.sleep(0.05)

    assert line is not None, demo.stdout_path.read_text()
    assert line["Fields"]["msg"] == "index served"
    assert line["Severity"] == 6  # INFO
    assert line["Logger"] == "dockerflow-demo"


# -- the rest of the Dockerflow guide: typed settings from DEMO_*, static files -------------------

FAR_FUTURE = "max-age=315360000, public, immutable"


def _max_age(cache_control: str) -> int:
    (value,) = re.findall(r"max-age=(\d+)", cache_control)
    return int(value)


def test_prefixed_env_settings_arrive_typed(demos: dict[str, Demo]) -> None:
    status, _, index = get(demos["noncritical"].url + "/")
    assert status == 200
    # DEMO_SLOW_CHECK_SECONDS=2, DEMO_SLOW_CHECK_CRITICAL=false: a number and a bool, not strings.
    assert index["slow_check_seconds"] == 2.0
    assert index["slow_check_critical"] is False
    status, _, index = get(demos["default"].url + "/")
    assert (index["slow_check_seconds"], index["slow_check_critical"]) == (0.2, True)


def test_a_noncritical_timeout_keeps_the_heartbeat_up(demos: dict[str, Demo]) -> None:
    """DEMO_SLOW_CHECK_CRITICAL=false: the slow check times out, the heartbeat says 200."""
    demo = demos["noncritical"]
    status, _, body = get(demo.url + "/__heartbeat__", timeout=10.0)
    assert status == 200, body
    assert body["status"] == "warning"
    assert body["checks"]["slow_dependency"] == "warning"
    detail = body["details"]["slow_dependency"]
    assert detail["critical"] is False
    assert list(detail["messages"]) == ["dockerflow.health.E011"]


def test_hashed_static_asset_is_cached_for_ever(demo: Demo) -> None:
    _, _, index = get(demo.url + "/")
    url = index["assets"]["demo.css"]
    assert re.fullmatch(r"/static/demo\.[0-9a-f]{12}\.css", url), url

    status, headers, content = get_raw(demo.url + url)

    assert status == 200
    assert headers["Cache-Control"] == FAR_FUTURE
    assert _max_age(headers["Cache-Control"]) >= 365 * 24 * 3600
    assert headers["Content-Type"].startswith("text/css")
    assert content == (REPO / "examples" / "demo" / "static" / "demo.css").read_bytes()


def test_unhashed_or_wrongly_hashed_names_are_not_cached_for_ever(demo: Demo) -> None:
    status, headers, _ = get_raw(demo.url + "/static/demo.css")
    assert status == 200
    assert "immutable" not in headers["Cache-Control"]
    assert _max_age(headers["Cache-Control"]) <= 60

    status, headers, _ = get_raw(demo.url + "/static/demo.000000000000.css")
    assert status == 404
    assert "immutable" not in headers.get("Cache-Control", "")


def test_committed_hashed_copies_are_current(tmp_path: Path) -> None:
    """examples/demo/static holds exactly what python -m examples.demo.static_build writes."""
    from examples.demo import static_build

    static = REPO / "examples" / "demo" / "static"
    copy = tmp_path / "static"
    copy.mkdir()
    for source in static_build.SOURCES:
        (copy / source).write_bytes((static / source).read_bytes())
    # A copy with an old hash is removed by the build.
    (copy / "demo.0123456789ab.css").write_text("old")

    built = static_build.build(str(copy))

    assert sorted(p.name for p in copy.iterdir()) == sorted([*static_build.SOURCES, *built])
    assert sorted(p.name for p in static.iterdir()) == sorted(p.name for p in copy.iterdir()), (
        "run python -m examples.demo.static_build and commit examples/demo/static"
    )
    for name in built:
        assert (static / name).read_bytes() == (copy / name).read_bytes()


# -- examples/Dockerfile, its commands run as the image's shell would run them ------------------

# The image installs the newest Flask; its commands use `flask --app`, which came in Flask 2.2.
needs_flask_app_option = pytest.mark.skipif(
    tuple(int(part) for part in importlib.metadata.version("flask").split(".")[:2]) < (2, 2),
    reason="the Dockerfile's commands use flask --app (Flask 2.2 or later)",
)


def _dockerfile_instruction(name: str) -> str:
    """Return the shell-form command of the Dockerfile's ``name`` instruction (CMD, HEALTHCHECK)."""
    text = (REPO / "examples" / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)  # continuation lines
    (line,) = [line for line in joined.splitlines() if line.startswith(name + " ")]
    return line.split(" CMD ", 1)[1] if name == "HEALTHCHECK" else line[len(name) + 1 :]


def _sh(command: str, directory: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    # The image's environment: `flask` on PATH, the repository importable (PYTHONPATH=/app).
    env = child_env(directory, 0, PYTHONPATH=str(REPO), **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        ["sh", "-c", command],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )


def _migrated(directory: Path) -> bool:
    # sqlite3's own context manager ends the transaction but leaves the connection open.
    with contextlib.closing(sqlite3.connect(directory / "data" / "demo.sqlite3")) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    return "alembic_version" in tables


@needs_flask_app_option
def test_healthcheck_never_migrates(tmp_path: Path) -> None:
    healthcheck = _dockerfile_instruction("HEALTHCHECK")
    assert "dockerflow heartbeat" in healthcheck

    probe = _sh(healthcheck, tmp_path)

    # An unmigrated database is a warning, which does not fail the heartbeat.
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout)
    assert report["checks"]["check_migrations_applied"] == "warning"
    assert not _migrated(tmp_path)


@needs_flask_app_option
def test_cmd_migrates_then_the_healthcheck_passes(tmp_path: Path) -> None:
    migrate_step, server_step = _dockerfile_instruction("CMD").split("&&")
    assert "db upgrade" in migrate_step
    assert server_step.strip().startswith("exec gunicorn")

    migrated = _sh(migrate_step, tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert _migrated(tmp_path)

    probe = _sh(_dockerfile_instruction("HEALTHCHECK"), tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == {
        "status": "ok",
        "checks": dict.fromkeys(DEMO_CHECKS, "ok"),
        "details": {},
    }


@needs_flask_app_option
def test_healthcheck_exits_1_when_the_heartbeat_fails(tmp_path: Path) -> None:
    probe = _sh(_dockerfile_instruction("HEALTHCHECK"), tmp_path, DEMO_SLOW_CHECK_SECONDS="2")
    assert probe.returncode == 1, probe.stderr
    report = json.loads(probe.stdout)  # the report alone on stdout: docker inspect shows it
    assert report["status"] == "error"
    assert list(report["details"]["slow_dependency"]["messages"]) == ["dockerflow.health.E011"]


@needs_flask_app_option
def test_healthcheck_turns_a_usage_error_into_1(tmp_path: Path) -> None:
    """The CLI's usage status 2 is reserved by Docker: the HEALTHCHECK line maps it to 1."""
    healthcheck = _dockerfile_instruction("HEALTHCHECK")
    wrong = healthcheck.replace("dockerflow heartbeat", "dockerflow heartbeat --check nope")
    bare = wrong.split("||", 1)[0]

    assert _sh(bare, tmp_path).returncode == 2
    probe = _sh(wrong, tmp_path)
    assert probe.returncode == 1
    assert "unknown check" in probe.stderr
