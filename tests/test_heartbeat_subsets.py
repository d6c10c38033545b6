"""Heartbeat subsets (?check= / ?exclude=) and the ``flask dockerflow`` CLI: the same rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from dockerflow.checks import Error
from dockerflow.flask import Dockerflow
from dockerflow.flask._query import MAX_ECHOED_NAME_CHARS, MAX_ECHOED_NAMES


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = Flask("subsets", root_path=str(tmp_path / "app"))
    ext = Dockerflow(app)
    ext.check(lambda: [], name="up")
    ext.check(lambda: [Error("down", id="x.E1")], name="down")
    ext.check(lambda: [], name="other")
    yield app
    ext._bridge.stop()


def checks_of(app: Flask, query: str) -> tuple[int, dict[str, object]]:
    response = app.test_client().get(f"/__heartbeat__?{query}")
    return response.status_code, response.json or {}


KNOWN = "(the checks are: down, other, up)"


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("check=up,nope", "nope"),
        ("check=up,zzz,aaa&exclude=typo,other", "aaa, zzz"),
    ],
)
def test_unknown_names_to_run_are_a_400_naming_them_and_the_checks(
    app: Flask, query: str, named: str
) -> None:
    assert checks_of(app, query) == (400, {"error": f"unknown check: {named} {KNOWN}"})


def test_unknown_names_to_leave_out_are_ignored_and_logged_once(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    """A release that renames or drops a check must not fail the probes that leave it out."""
    caplog.set_level("WARNING", logger="dockerflow.flask")
    for _ in range(3):
        status, body = checks_of(app, "exclude=down,renamed_in_v2")
        assert (status, body["checks"]) == (200, {"up": "ok", "other": "ok"})
    logged = [r.getMessage() for r in caplog.records if "renamed_in_v2" in r.getMessage()]
    assert logged == [
        "?exclude= names 'renamed_in_v2', which is not a registered check: ignored (logged "
        "once per process)"
    ]


def test_the_ignored_names_logged_are_bounded(app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="dockerflow.flask")
    for start in range(0, 300, 50):
        names = ",".join(f"gone{i}" for i in range(start, start + 50))
        assert checks_of(app, f"exclude=down,{names}")[0] == 200
    assert sum("?exclude= names" in r.getMessage() for r in caplog.records) == 100


#: Query strings as a WSGI server hands them on (PEP 3333: the raw bytes, latin-1 decoded):
#: gunicorn and uWSGI pass a raw byte that is not UTF-8 through.
NOT_UTF8_QUERIES = {
    "check_ff": ("check=\xff", 6, "ff"),
    "exclude_after_a_name": ("exclude=up,\xfe", 11, "fe"),
    "truncated_sequence": ("check=caf\xc3", 9, "c3"),
    "another_parameter": ("check=up&cache_buster=\xff\xfe", 22, "ff"),
}


@pytest.mark.parametrize(("raw", "offset", "byte"), NOT_UTF8_QUERIES.values(), ids=NOT_UTF8_QUERIES)
def test_a_query_string_that_is_not_utf8_is_a_json_400(
    app: Flask, raw: str, offset: int, byte: str
) -> None:
    # Set in the environ as the server would: the test client would percent-encode a URL.
    response = app.test_client().get("/__heartbeat__", environ_overrides={"QUERY_STRING": raw})
    assert (response.status_code, response.mimetype) == (400, "application/json")
    assert response.json == {
        "error": f"the query string is not valid UTF-8 (byte 0x{byte} at offset {offset}): "
        "percent-encode check names as UTF-8"
    }


def test_percent_encoded_utf8_names_still_work(app: Flask) -> None:
    status, body = checks_of(app, "check=up,%E2%98%83")
    assert (status, body) == (400, {"error": f"unknown check: \u2603 {KNOWN}"})


def test_unknown_names_are_echoed_within_a_bound(app: Flask) -> None:
    names = [f"n{number:05d}" for number in range(10_000)]
    status, body = checks_of(app, "check=" + ",".join(names))
    shown = ", ".join(names[:MAX_ECHOED_NAMES])
    assert (status, body) == (400, {"error": f"unknown check: {shown} and 9990 more {KNOWN}"})
    status, body = checks_of(app, "check=" + "x" * 100_000)
    echoed = "x" * MAX_ECHOED_NAME_CHARS + "..."
    assert (status, body) == (400, {"error": f"unknown check: {echoed} {KNOWN}"})


def test_an_unknown_exclude_is_logged_within_the_same_bound(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="dockerflow.flask")
    status, body = checks_of(app, "exclude=down," + "x" * 100_000)
    assert (status, body["checks"]) == (200, {"up": "ok", "other": "ok"})
    echoed = "x" * MAX_ECHOED_NAME_CHARS + "..."
    (line,) = [r.getMessage() for r in caplog.records if "?exclude=" in r.getMessage()]
    assert repr(echoed) in line and len(line) < 200


def test_the_cli_echoes_unknown_names_within_the_same_bound(app: Flask) -> None:
    names = [f"n{number:02d}" for number in range(MAX_ECHOED_NAMES + 2)]
    runner = app.test_cli_runner()
    result = runner.invoke(args=["dockerflow", "heartbeat", "--check", ",".join(names)])
    assert result.exit_code == 2
    assert f"unknown check: {', '.join(names[:MAX_ECHOED_NAMES])} and 2 more" in result.output


def test_repeated_parameters_are_merged(app: Flask) -> None:
    status, body = checks_of(app, "exclude=down&exclude=other")
    assert (status, body["checks"]) == (200, {"up": "ok"})
    status, body = checks_of(app, "check=up&check=other")
    assert (status, body["checks"]) == (200, {"up": "ok", "other": "ok"})
    status, body = checks_of(app, "check=up,down&exclude=down")
    assert (status, body["checks"]) == (200, {"up": "ok"})


@pytest.mark.parametrize(
    "query", ["check=up&exclude=up", "exclude=up,down,other", "exclude=up&exclude=down,other"]
)
def test_a_request_leaving_no_check_is_a_400(app: Flask, query: str) -> None:
    assert checks_of(app, query) == (400, {"error": "the selection leaves no check to run"})


def test_cli_subsets_follow_the_same_rules(app: Flask) -> None:
    runner = app.test_cli_runner(mix_stderr=False) if _mixes() else app.test_cli_runner()
    ok = runner.invoke(args=["dockerflow", "heartbeat", "--exclude", "down"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["checks"] == {"up": "ok", "other": "ok"}
    only = runner.invoke(args=["dockerflow", "heartbeat", "--check", "up", "--check", "down"])
    assert only.exit_code == 1
    assert json.loads(only.stdout)["checks"] == {"up": "ok", "down": "error"}
    unknown = runner.invoke(args=["dockerflow", "heartbeat", "--check", "nope"])
    assert unknown.exit_code == 2
    assert f"unknown check: nope {KNOWN}" in unknown.stderr
    assert unknown.stdout == ""
    ignored = runner.invoke(args=["dockerflow", "heartbeat", "--exclude", "down,nope"])
    assert ignored.exit_code == 0, ignored.output
    empty = runner.invoke(args=["dockerflow", "heartbeat", "--check", "up", "--exclude", "up"])
    assert empty.exit_code == 2
    assert "the selection leaves no check to run" in empty.stderr


def test_cli_help_documents_the_exit_codes(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["dockerflow", "heartbeat", "--help"])
    text = " ".join(result.output.split())
    assert "Exit status: 0 if the heartbeat passes, 1 if it fails, 2 for a usage error" in text
    assert "--check" in text and "--exclude" in text
    assert "--group" in text and "--record-metrics" in text


def test_cli_without_the_extension_is_an_app_error(tmp_path: Path) -> None:
    from dockerflow.flask._cli import dockerflow_cli

    app = Flask("bare", root_path=str(tmp_path))
    app.cli.add_command(dockerflow_cli)
    result = app.test_cli_runner().invoke(args=["dockerflow", "heartbeat"])
    assert result.exit_code == 2
    assert "not initialised" in result.output


def test_cli_version_errors_name_the_file(tmp_path: Path) -> None:
    app = Flask("version", root_path=str(tmp_path / "app"))
    ext = Dockerflow(app)
    runner = app.test_cli_runner()
    try:
        missing = runner.invoke(args=["dockerflow", "version"])
        assert missing.exit_code == 1
        path = tmp_path / "version.json"
        assert missing.output.strip() == f"Error: version.json not found: looked for {path}"
        path.write_text('{"version": "1",')
        malformed = runner.invoke(args=["dockerflow", "version"])
        assert malformed.exit_code == 1
        lines = malformed.output.strip().splitlines()
        assert len(lines) == 1, malformed.output  # one line, no traceback
        assert lines[0].startswith(f"Error: {path}: not valid UTF-8 JSON")
    finally:
        ext._bridge.stop()


def test_cli_report_is_the_only_thing_on_stdout(tmp_path: Path) -> None:
    """With a mozlog config that logs to stdout, check failures are logged to stderr."""
    (tmp_path / "probe_app.py").write_text(
        textwrap.dedent(
            """
            import logging.config
            from flask import Flask
            from dockerflow.checks import Error
            from dockerflow.flask import Dockerflow

            logging.config.dictConfig({
                "version": 1, "disable_existing_loggers": False,
                "formatters": {"json": {"()": "dockerflow.logging.JsonLogFormatter"}},
                "handlers": {"out": {"class": "logging.StreamHandler",
                                     "stream": "ext://sys.stdout", "formatter": "json"}},
                "root": {"handlers": ["out"], "level": "INFO"},
            })

            def create_app():
                app = Flask("probe")
                dockerflow = Dockerflow(app)
                dockerflow.check(lambda: [Error("it is down", id="probe.E1")], name="svc")
                dockerflow.check(lambda: [], name="fine")
                return app
            """
        )
    )
    # FLASK_APP rather than --app, which Flask 2.0 and 2.1 (make test-min) do not have.
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "FLASK_APP": "probe_app:create_app"}
    args = [sys.executable, "-m", "flask", "dockerflow"]
    result = subprocess.run(
        [*args, "heartbeat"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)  # one JSON document and nothing else
    assert report["checks"] == {"svc": "error", "fine": "ok"}
    assert "it is down" in result.stderr  # the engine's log record
    passing = subprocess.run(
        [*args, "heartbeat", "--check", "fine"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert (passing.returncode, json.loads(passing.stdout)["status"]) == (0, "ok")


@pytest.mark.parametrize(
    ("app_source", "status", "said"),
    [
        (None, 2, "No such command 'dockerflow'"),  # no app found: Flask's own usage error
        ("def create_app():\n    raise RuntimeError('no config')\n", 1, "RuntimeError: no config"),
    ],
    ids=["no-app-found", "factory-raises"],
)
def test_cli_exit_status_when_the_app_cannot_be_made(
    tmp_path: Path, app_source: str | None, status: int, said: str
) -> None:
    """What --help says for apps that cannot be made, from the real `flask` command."""
    if app_source is not None:
        (tmp_path / "broken_app.py").write_text(app_source)
    # FLASK_APP rather than --app, which came in Flask 2.2.
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "FLASK_APP": "broken_app:create_app"}
    result = subprocess.run(
        [sys.executable, "-m", "flask", "dockerflow", "heartbeat"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == status, result.stderr
    assert said in result.stderr
    assert result.stdout == ""


def _mixes() -> bool:
    import inspect

    from click.testing import CliRunner

    return "mix_stderr" in inspect.signature(CliRunner.__init__).parameters
