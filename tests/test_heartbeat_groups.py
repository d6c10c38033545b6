"""Named groups of checks (issue 22.4): ``/__heartbeat__/<group>``, ``--group``, the
``groups=`` of a check and DOCKERFLOW_HEARTBEAT_GROUPS, metrics and health+json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry
from test_heartbeat_health_json import cli

from dockerflow.checks import Error, Info, clear_checks, get_checks, register
from dockerflow.engine import Check, CheckRegistrationError, ConfigurationError
from dockerflow.flask import Dockerflow, UnknownGroupError
from dockerflow.flask.signals import heartbeat_status_changed
from dockerflow.metrics import HeartbeatMetrics

HEALTH_JSON = {"Accept": "application/health+json"}


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    return Flask("groups", root_path=str(tmp_path / "app"))


@pytest.fixture
def ext(app: Flask) -> Iterator[Dockerflow]:
    ext = Dockerflow()
    ext.check(lambda: [], name="db", groups=["ready", "deep"])
    ext.check(lambda: [Error("down", id="x.E1")], name="search", groups=["deep"])
    ext.check(lambda: [Info("warming", id="x.I1")], name="cache")
    yield ext
    ext.close()


@pytest.fixture
def global_registry() -> Iterator[None]:
    saved = dict(get_checks())
    yield
    clear_checks()
    get_checks().update(saved)


def heartbeat(app: Flask, path: str = "/__heartbeat__", **kwargs: Any) -> tuple[int, Any]:
    response = app.test_client().get(path, **kwargs)
    return response.status_code, response.get_json()


def test_a_group_runs_its_checks_only(app: Flask, ext: Dockerflow) -> None:
    ext.init_app(app)
    assert heartbeat(app, "/__heartbeat__/ready")[1]["checks"] == {"db": "ok"}
    status, body = heartbeat(app, "/__heartbeat__/deep")
    assert (status, body["checks"]) == (500, {"db": "ok", "search": "error"})
    # ?exclude= and ?check= choose within the group.
    status, body = heartbeat(app, "/__heartbeat__/deep?exclude=search")
    assert (status, body["checks"]) == (200, {"db": "ok"})
    assert ext.groups(app) == {"deep": ["db", "search"], "ready": ["db"]}


def test_groups_from_the_setting_join_those_of_the_code(app: Flask, ext: Dockerflow) -> None:
    app.config["DOCKERFLOW_HEARTBEAT_GROUPS"] = {"ready": ["cache"], "live": []}
    ext.init_app(app)
    assert heartbeat(app, "/__heartbeat__/ready")[1]["checks"] == {"db": "ok", "cache": "info"}
    # A group the setting declares empty answers 200 without running a check: a liveness probe.
    assert heartbeat(app, "/__heartbeat__/live") == (
        200,
        {"status": "ok", "checks": {}, "details": {}},
    )


def test_the_environment_form_of_the_setting(
    app: Flask, ext: Dockerflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKERFLOW_HEARTBEAT_GROUPS", "ready:cache,search;live:")
    ext.init_app(app)
    assert ext.groups(app) == {
        "deep": ["db", "search"],
        "live": [],
        "ready": ["db", "search", "cache"],
    }


def test_builtin_and_module_level_checks_join_groups_by_setting(
    app: Flask, global_registry: None
) -> None:
    register(lambda: [], name="legacy_check")
    register(lambda: [], name="tagged", groups=["ready"])
    app.config["DOCKERFLOW_HEARTBEAT_GROUPS"] = "ready:legacy_check"
    ext = Dockerflow(app)
    try:
        status, body = heartbeat(app, "/__heartbeat__/ready")
        assert (status, body["checks"]) == (200, {"legacy_check": "ok", "tagged": "ok"})
    finally:
        ext.close()


def test_a_group_naming_an_unknown_check_fails_init_app(app: Flask, ext: Dockerflow) -> None:
    app.config["DOCKERFLOW_HEARTBEAT_GROUPS"] = {"ready": ["db", "check_redis_conected"]}
    with pytest.raises(ConfigurationError) as caught:
        ext.init_app(app)
    text = str(caught.value)
    assert "group 'ready' names 'check_redis_conected', not a registered check" in text
    assert "(registered: cache, db, search)" in text
    assert "dockerflow" not in app.extensions  # the app was left as it was


@pytest.mark.parametrize(
    "bad",
    ["ready", {"bad name": []}, "ready:a b", 7, "ready:db;ready:cache"],
)
def test_a_bad_setting_is_refused(app: Flask, ext: Dockerflow, bad: object) -> None:
    app.config["DOCKERFLOW_HEARTBEAT_GROUPS"] = bad
    with pytest.raises(ConfigurationError, match="DOCKERFLOW_HEARTBEAT_GROUPS"):
        ext.init_app(app)


@pytest.mark.parametrize("bad", ["ready", ["ready", "no/slash"], [""], [3]])
def test_bad_group_names_of_a_check_are_refused(bad: object) -> None:
    with pytest.raises(CheckRegistrationError, match="groups"):
        Check("c", lambda: [], groups=bad)  # type: ignore[arg-type]


def test_groups_are_kept_as_a_tuple_without_duplicates() -> None:
    assert Check("c", lambda: [], groups=["b", "a", "b"]).groups == ("b", "a")  # type: ignore[arg-type]


def test_an_unknown_group_is_a_404_listing_the_groups(app: Flask, ext: Dockerflow) -> None:
    ext.init_app(app)
    status, body = heartbeat(app, "/__heartbeat__/<script>")
    assert (status, body) == (
        404,
        {"error": "unknown heartbeat group", "groups": ["deep", "ready"]},
    )
    with app.app_context(), pytest.raises(UnknownGroupError):
        ext.run_checks(group="nope")


def test_a_group_heartbeat_is_no_status_change(app: Flask, ext: Dockerflow) -> None:
    ext.init_app(app)
    changes: list[str] = []

    def changed(sender: Flask, **kwargs: Any) -> None:
        changes.append(kwargs["previous_status"])

    heartbeat_status_changed.connect(changed, app)
    try:
        heartbeat(app)  # error
        heartbeat(app, "/__heartbeat__/ready")  # ok, but of a group only
        heartbeat(app)
    finally:
        heartbeat_status_changed.disconnect(changed, app)
    assert changes == []


def test_health_json_carries_the_group(app: Flask, ext: Dockerflow) -> None:
    ext.init_app(app)
    status, body = heartbeat(app, "/__heartbeat__/ready", headers=HEALTH_JSON)
    assert (status, body["status"], body["group"]) == (200, "pass", "ready")
    assert list(body["checks"]) == ["db:responseTime"]
    assert "group" not in heartbeat(app, headers=HEALTH_JSON)[1]


def test_metrics_count_heartbeats_by_group(app: Flask) -> None:
    registry = CollectorRegistry()
    ext = Dockerflow(app, metrics=HeartbeatMetrics(registry))
    ext.check(lambda: [], name="db", groups=["ready"])
    try:
        heartbeat(app, "/__heartbeat__/ready")
        heartbeat(app, "/__heartbeat__/ready")
        heartbeat(app)
    finally:
        ext.close()
    group = registry.get_sample_value(
        "dockerflow_group_heartbeats_total", {"group": "ready", "status": "ok"}
    )
    assert group == 2
    assert registry.get_sample_value("dockerflow_heartbeats_total", {"status": "ok"}) == 3


def test_cli_group(app: Flask, ext: Dockerflow) -> None:
    ext.init_app(app)
    ready = cli(app, "--group", "ready")
    assert (ready.exit_code, json.loads(ready.stdout)["checks"]) == (0, {"db": "ok"})
    deep = cli(app, "--group", "deep", "--format", "health+json")
    assert (deep.exit_code, json.loads(deep.stdout)["group"]) == (1, "deep")
    unknown = cli(app, "--group", "nope")
    assert (unknown.exit_code, unknown.stdout) == (2, "")
    assert "unknown group: nope (the groups are: deep, ready)" in unknown.stderr


CLI_APP = textwrap.dedent(
    """
    from flask import Flask
    from dockerflow.flask import Dockerflow

    def create_app():
        app = Flask("probe")
        Dockerflow(app, metrics=True).check(lambda: [], name="svc")
        return app
    """
)


@pytest.mark.parametrize(("flag", "written"), [((), False), (("--record-metrics",), True)])
def test_the_cli_records_metrics_only_when_asked(
    tmp_path: Path, flag: tuple[str, ...], written: bool
) -> None:
    """A PROMETHEUS_MULTIPROC_DIR set for the whole container gets no files from a probe."""
    (tmp_path / "probe_app.py").write_text(CLI_APP)
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "FLASK_APP": "probe_app:create_app",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
    }
    result = subprocess.run(
        [sys.executable, "-m", "flask", "dockerflow", "heartbeat", *flag],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert bool(list(multiproc.iterdir())) is written
