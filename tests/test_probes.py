"""The probes guide (docs/probes.rst) and its manifest (examples/kubernetes/demo.yaml), tested.

Every YAML snippet the guide shows is parsed, as Sphinx's ``literalinclude`` cuts it out of its
file; every ``DOCKERFLOW_*`` name it or its files use is a setting; the manifest's probes are
checked against the demo app built with the manifest's own environment (routes, check names,
timeouts against the heartbeat's bound); then the demo is served with those settings while Redis
never answers and a check hangs, and the probes are timed.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from demo_helpers import REPO, START_TIMEOUT, get, start, stop, wait_until_serving
from flask import Flask
from integrations.helpers import BlackHole

from dockerflow.checks import clear_checks
from dockerflow.checks.registry import checks_for
from dockerflow.flask import Dockerflow
from dockerflow.flask._config import SETTINGS

DOCS = REPO / "docs"
MANIFEST = REPO / "examples" / "kubernetes" / "demo.yaml"
DOCKERFILE = REPO / "examples" / "Dockerfile"
#: The pages whose snippets are tested: the guide, and the deployment page that links to it.
PAGES = (DOCS / "probes.rst", DOCS / "deployment.rst")
#: A heartbeat answers by its longest check timeout plus at most this (the engine's grace for
#: async checks, documented in docs/probes.rst; test_probes_answer_in_time measures it for real).
HEARTBEAT_GRACE = 0.1
SETTING_NAMES = {setting.key for setting in SETTINGS}
#: The longest request of the demo, in seconds, as the manifest's comment on the drain says.
LONGEST_REQUEST = 5.0


# -- the snippets, as the docs show them --------------------------------------------------------


@dataclass
class Snippet:
    page: Path
    language: str
    text: str
    source: Path | None = None  # the file of a literalinclude
    options: dict[str, str] = field(default_factory=dict)


_DIRECTIVE = re.compile(r"^(?P<indent> *)\.\. (?P<name>literalinclude|code-block)::\s*(?P<arg>.*)$")


def _cut(text: str, options: dict[str, str]) -> str:
    """What Sphinx's literalinclude shows of ``text`` with these options."""
    lines = text.splitlines()
    if "start-at" in options or "start-after" in options:
        marker = options.get("start-at", options.get("start-after"))
        index = next(i for i, line in enumerate(lines) if marker in line)
        lines = lines[index if "start-at" in options else index + 1 :]
    if "end-at" in options or "end-before" in options:
        marker = options.get("end-at", options.get("end-before"))
        # The first line after the start that holds the marker (Sphinx skips the start line).
        index = next(i for i, line in enumerate(lines) if i > 0 and marker in line)
        lines = lines[: index + 1 if "end-at" in options else index]
    dedent = int(options.get("dedent", "0"))
    return "\n".join(line[dedent:] for line in lines) + "\n"


def snippets(page: Path) -> list[Snippet]:
    """The literal blocks of ``page``: ``code-block`` and ``literalinclude`` directives."""
    lines = page.read_text().splitlines()
    found = []
    for number, line in enumerate(lines):
        match = _DIRECTIVE.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        options, body = {}, []
        rest = iter(lines[number + 1 :])
        for following in rest:
            option = re.match(r" +:([\w-]+):\s*(.*)$", following)
            if option and len(following) - len(following.lstrip()) > indent:
                options[option[1]] = option[2]
                continue
            break
        if match["name"] == "code-block":
            for following in rest:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                body.append(following)
            text = "\n".join(body)
            found.append(Snippet(page, match["arg"].strip(), _dedent(text)))
        else:
            source = (page.parent / match["arg"].strip()).resolve()
            language = options.get("language", "")
            found.append(
                Snippet(page, language, _cut(source.read_text(), options), source, options)
            )
    return found


def _dedent(text: str) -> str:
    lines = text.splitlines()
    widths = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
    cut = min(widths, default=0)
    return "\n".join(line[cut:] for line in lines).strip("\n") + "\n"


def _all_snippets() -> list[Snippet]:
    return [snippet for page in PAGES for snippet in snippets(page)]


def test_the_guide_shows_the_tested_manifest() -> None:
    sources = {snippet.source for snippet in snippets(DOCS / "probes.rst")}
    assert MANIFEST in sources
    assert DOCKERFILE in sources
    # The whole file, not only parts of it, is on the page.
    assert any(
        s.source == MANIFEST and not s.options.keys() - {"language"} for s in _all_snippets()
    )


@pytest.mark.parametrize(
    "snippet",
    [s for s in _all_snippets() if s.language == "yaml"],
    ids=lambda s: f"{s.page.name}:{s.source.name if s.source else 'inline'}:{s.text[:30]!r}",
)
def test_every_yaml_snippet_parses(snippet: Snippet) -> None:
    documents = [doc for doc in yaml.safe_load_all(snippet.text) if doc is not None]
    # A snippet of only comments would parse too and show nothing.
    assert documents, snippet.text
    if snippet.source is not None:
        assert [d for d in yaml.safe_load_all(snippet.source.read_text()) if d is not None]


def test_every_dockerflow_name_is_a_setting() -> None:
    texts = [page.read_text() for page in PAGES]
    texts += [s.source.read_text() for s in _all_snippets() if s.source is not None]
    names = {
        name for text in texts for name in re.findall(r"\bDOCKERFLOW_[A-Z0-9_]*[A-Z0-9]", text)
    }
    assert names, "no DOCKERFLOW_* name found: is the regular expression right?"
    assert names <= SETTING_NAMES, f"not settings: {sorted(names - SETTING_NAMES)}"


# -- the manifest against the demo app -----------------------------------------------------------


def _manifest() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


def _container() -> dict[str, Any]:
    (deployment,) = [doc for doc in _manifest() if doc["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env() -> dict[str, str]:
    return {item["name"]: item["value"] for item in _container()["env"]}


def _deployment() -> dict[str, Any]:
    (deployment,) = [doc for doc in _manifest() if doc["kind"] == "Deployment"]
    return deployment


def _container_port(port: int | str) -> int:
    ports = _container()["ports"]
    if isinstance(port, str):
        (number,) = [p["containerPort"] for p in ports if p.get("name") == port]
        return int(number)
    assert port in [p["containerPort"] for p in ports]
    return port


@pytest.fixture
def demo_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Flask]:
    """The demo app, created with the manifest's environment (and nothing else of ours)."""
    from examples.demo.app import create_app

    for key in list(os.environ):
        if key.startswith(("DOCKERFLOW_", "DEMO_")) or key in {"REDIS_URL", "DATABASE_URL"}:
            monkeypatch.delenv(key)
    for key, value in _env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DEMO_DATA_DIR", str(tmp_path))
    app = create_app()  # init_app validates every DOCKERFLOW_* value: a bad one raises
    yield app
    extension: Dockerflow = app.extensions["dockerflow"]
    extension.close()
    clear_checks()  # the built-in checks the demo entered in python-dockerflow's registry


def _route_and_selection(app: Flask, url: str) -> tuple[str, set[str]]:
    """The endpoint ``url`` reaches, and the checks a heartbeat there runs."""
    parts = urllib.parse.urlsplit(url)
    endpoint, arguments = app.url_map.bind("localhost").match(parts.path)
    extension: Dockerflow = app.extensions["dockerflow"]
    names = set(extension.checks)
    if endpoint == "dockerflow.heartbeat_group":
        groups = extension.groups(app)
        assert arguments["group"] in groups, f"{url}: not a group of the demo: {sorted(groups)}"
        names = set(groups[arguments["group"]])
    query = urllib.parse.parse_qs(parts.query)
    assert set(query) <= {"check", "exclude"}, query
    chosen = {n for v in query.get("check", []) for n in v.split(",")} or names
    excluded = {n for v in query.get("exclude", []) for n in v.split(",")}
    assert chosen | excluded <= names, (
        f"{url}: not checks of the demo: {(chosen | excluded) - names}"
    )
    return endpoint, chosen - excluded


def _bound(app: Flask, selection: set[str]) -> float:
    """Seconds by which a heartbeat running ``selection`` answers."""
    extension: Dockerflow = app.extensions["dockerflow"]
    checks = [*extension.registry, *checks_for(extension)]
    default = app.config["DOCKERFLOW_CHECK_TIMEOUT"]
    timeouts = {c.name: c.timeout or default for c in checks if c.name in selection}
    assert set(timeouts) == selection
    return max(timeouts.values()) + HEARTBEAT_GRACE


def test_probe_paths_are_routes_and_timeouts_cover_the_heartbeat(demo_app: Flask) -> None:
    container = _container()
    listen = _container_port(int(_env()["PORT"]))  # the app listens on $PORT: a declared port
    probes = {kind: container[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    for kind, probe in probes.items():
        url = probe["httpGet"]["path"]
        endpoint, selection = _route_and_selection(demo_app, url)
        assert _container_port(probe["httpGet"]["port"]) == listen, kind
        assert 1 <= probe["periodSeconds"] <= 60, kind
        assert probe["timeoutSeconds"] <= probe["periodSeconds"], kind
        assert probe["failureThreshold"] >= 1, kind
        if kind == "readinessProbe":
            # A group, whose name survives a release that renames a check (docs/probes.rst).
            assert endpoint == "dockerflow.heartbeat_group", url
            assert "?" not in url, "no ?exclude= in a probe: see the guide's hazard"
            assert "slow_dependency" not in selection
            assert probe["timeoutSeconds"] > _bound(demo_app, selection), (url, selection)
            assert probe["failureThreshold"] >= 2, "one slow answer must not move traffic"
        else:
            # Liveness and start-up never ask about dependencies.
            assert endpoint == "dockerflow.lbheartbeat", (kind, url)

    # The non-critical checks and the cache TTLs the manifest sets are the demo's and sane.
    env = _env()
    noncritical = set(env["DOCKERFLOW_NONCRITICAL_CHECKS"].split(","))
    assert noncritical <= set(demo_app.extensions["dockerflow"].checks)
    assert (
        demo_app.config["DOCKERFLOW_HEARTBEAT_CACHE_FAILED_TTL"]
        < (probes["readinessProbe"]["periodSeconds"])
    ), "a recovered pod must not be held unready by a cached failure until the next probe"
    assert demo_app.config["DOCKERFLOW_HEARTBEAT_CACHE_TTL"] > 0

    # gunicorn (the image's server) waits longer than any heartbeat.
    gunicorn_conf = runpy.run_path(str(REPO / "examples" / "gunicorn.conf.py"))
    assert gunicorn_conf["timeout"] > _bound(
        demo_app, set(demo_app.extensions["dockerflow"].checks)
    )


def test_the_deployment_follows_the_shutdown_and_startup_arithmetic(demo_app: Flask) -> None:
    """terminationGracePeriodSeconds > graceful_timeout >= drain + longest request, and
    minReadySeconds > the startup grace (docs/probes.rst, "The arithmetic" and "Start-up")."""
    deployment = _deployment()
    pod = deployment["spec"]["template"]["spec"]
    gunicorn_conf = runpy.run_path(str(REPO / "examples" / "gunicorn.conf.py"))
    graceful = gunicorn_conf["graceful_timeout"]
    drain = demo_app.config["DOCKERFLOW_DRAIN_SECONDS"]
    assert drain > 0, "the manifest drains on SIGTERM"
    # The longest request: the manifest's stated 5 s, or a full heartbeat if that is longer.
    longest = max(LONGEST_REQUEST, _bound(demo_app, set(demo_app.extensions["dockerflow"].checks)))
    assert graceful >= drain + longest, (graceful, drain, longest)
    assert "lifecycle" not in _container(), "no preStop hook: the drain does its work"
    assert pod["terminationGracePeriodSeconds"] > graceful, "SIGKILL before gunicorn is done"
    grace = demo_app.config["DOCKERFLOW_STARTUP_GRACE_SECONDS"]
    assert grace > 0
    assert deployment["spec"]["minReadySeconds"] > grace
    assert deployment["spec"]["replicas"] >= 2


def test_every_container_requests_cpu_and_memory() -> None:
    pod = _deployment()["spec"]["template"]["spec"]
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
        assert "memory" in resources["limits"], container["name"]
        # No CPU limit: throttling makes probes time out (docs/probes.rst).
        assert "cpu" not in resources["limits"], container["name"]


def test_the_server_does_not_migrate_and_an_init_step_does() -> None:
    """The image's CMD migrates then serves (for docker run); with replicas the server's
    container runs gunicorn alone, and the migrations are a step of their own."""
    pod = _deployment()["spec"]["template"]["spec"]
    web = _container()
    command = " ".join([*web["command"], *web.get("args", [])])
    assert command.startswith("gunicorn ") and "db upgrade" not in command
    (migrate,) = pod["initContainers"]
    assert " ".join(migrate["command"]).endswith("db upgrade")
    assert migrate["image"] == web["image"]
    # The demo's SQLite database is in the pod: both containers see the same volume.
    dockerfile = DOCKERFILE.read_text()
    data = re.search(r"DEMO_DATA_DIR=(\S+)", dockerfile)[1]  # type: ignore[index]
    for container in (web, migrate):
        assert {"name": "data", "mountPath": data} in container["volumeMounts"]
    assert {"name": "data", "emptyDir": {}} in pod["volumes"]


def test_service_and_load_balancer_health_check(demo_app: Flask) -> None:
    documents = {doc["kind"]: doc for doc in _manifest()}
    (port,) = documents["Service"]["spec"]["ports"]
    _container_port(port["targetPort"])
    backend = documents["BackendConfig"]
    annotations = documents["Service"]["metadata"]["annotations"]
    assert json.loads(annotations["cloud.google.com/backend-config"]) == {
        "default": backend["metadata"]["name"]
    }
    check = backend["spec"]["healthCheck"]
    endpoint, _ = _route_and_selection(demo_app, check["requestPath"])
    assert endpoint == "dockerflow.lbheartbeat"
    assert _container_port(check["port"]) == int(_env()["PORT"])
    assert check["timeoutSec"] <= check["checkIntervalSec"]


def test_dockerfile_healthcheck_timeout_covers_the_heartbeat(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """HEALTHCHECK --timeout exceeds the heartbeat's bound under the image's own settings."""
    from examples.demo.app import create_app

    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    (line,) = [line for line in text.splitlines() if line.startswith("HEALTHCHECK ")]
    options = dict(re.findall(r"--([a-z-]+)=(\d+)s", line))
    assert "dockerflow heartbeat" in line and line.rstrip().endswith("|| exit 1")

    for key in list(os.environ):
        if key.startswith(("DOCKERFLOW_", "DEMO_")) or key in {"REDIS_URL", "DATABASE_URL"}:
            monkeypatch.delenv(key)
    monkeypatch.setenv("DEMO_DATA_DIR", str(tmp_path))
    app = create_app()
    try:
        bound = _bound(app, set(app.extensions["dockerflow"].checks))
    finally:
        app.extensions["dockerflow"].close()
        clear_checks()
    # The probe also starts the app: leave it several seconds on top of the checks.
    assert int(options["timeout"]) >= bound + 5
    assert int(options["interval"]) >= int(options["timeout"])


# -- the manifest's settings, served, with dependencies failing for real --------------------------


def _timed_get(url: str, timeout: float) -> tuple[int, Any, float]:
    started = time.monotonic()
    status, _, body = get(url, timeout=timeout)
    return status, body, time.monotonic() - started


def test_probes_answer_in_time_while_dependencies_fail(tmp_path: Path) -> None:
    """Redis accepts and never answers; the slow check hangs for 5 s (timeout 1 s)."""
    container = _container()
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    hole = BlackHole()
    env = {key: value for key, value in _env().items() if key != "PORT"}
    env.update(
        REDIS_URL=f"redis://127.0.0.1:{hole.port}/0",
        DEMO_SLOW_CHECK_SECONDS="5",
        WEB_CONCURRENCY="1",
        # The startup grace would excuse the failures this test makes at once, and the drain
        # only makes the stop slower: tests/production/test_drain_gunicorn.py times it.
        DOCKERFLOW_STARTUP_GRACE_SECONDS="0",
        DOCKERFLOW_DRAIN_SECONDS="0",
    )
    demo = start(tmp_path, **env)
    try:
        wait_until_serving(demo, time.monotonic() + START_TIMEOUT)

        # Liveness keeps answering while a heartbeat waits on the failing dependencies.
        results: dict[str, tuple[int, Any, float]] = {}
        waiting = threading.Thread(
            target=lambda: results.update(
                full=_timed_get(demo.url + "/__heartbeat__", readiness["timeoutSeconds"])
            )
        )
        waiting.start()
        time.sleep(0.3)
        status, body, elapsed = _timed_get(
            demo.url + liveness["httpGet"]["path"], liveness["timeoutSeconds"]
        )
        assert (status, body) == (200, None)  # None: the empty body
        waiting.join()

        # The full heartbeat fails (the slow check is critical), within the probe's timeout.
        status, body, elapsed = results["full"]
        assert status == 500, body
        assert elapsed < readiness["timeoutSeconds"], elapsed
        assert body["checks"]["slow_dependency"] == "error"
        assert body["checks"]["check_redis_connected"] == "warning"

        # The readiness probe passes: Redis is non-critical, the slow check left out.
        status, body, elapsed = _timed_get(
            demo.url + readiness["httpGet"]["path"], readiness["timeoutSeconds"]
        )
        assert status == 200, body
        assert elapsed < readiness["timeoutSeconds"], elapsed
        assert "slow_dependency" not in body["checks"]
        redis = body["details"]["check_redis_connected"]
        assert redis["critical"] is False and redis["status"] == "warning"
    finally:
        stop(demo)
        hole.close()
