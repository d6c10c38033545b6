"""Prometheus metrics of heartbeats in a single process: real Flask apps, real prometheus_client.

Each test records into a registry of its own and reads it back through the text exposition and
prometheus_client's parser, as Prometheus would scrape it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from dockerflow.checks import Error, Warning
from dockerflow.engine import ConfigurationError
from dockerflow.flask import Dockerflow
from dockerflow.integrations import MissingDependencyError
from dockerflow.metrics import HeartbeatMetrics

TIMEOUT = 0.2
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Return (sample name, sorted labels) → value for every sample of an exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(registry: CollectorRegistry) -> Samples:
    return parse(generate_latest(registry).decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # lets a blocked check's thread end


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    app = Flask("metricsapp", root_path=str(tmp_path / "app"))
    app.config["TESTING"] = True
    return app


def make_dockerflow(
    app: Flask,
    registry: CollectorRegistry,
    release: threading.Event,
    entered: threading.Event | None = None,
    **config: Any,
) -> Dockerflow:
    """An extension with an ok, a failing, a warning and a hanging (sync) check.

    The hanging check sets ``entered`` (when given) as it starts, then blocks until ``release``.
    """
    app.config.update(config)
    dockerflow = Dockerflow(metrics=HeartbeatMetrics(registry))

    @dockerflow.check
    def fine() -> list[Any]:
        return []

    @dockerflow.check
    async def broken() -> list[Any]:
        return [Error("down", id="test.E001")]

    @dockerflow.check
    def shaky() -> list[Any]:
        return [Warning("slow", id="test.W001")]

    @dockerflow.check(timeout=TIMEOUT)
    def hangs() -> list[Any]:
        if entered is not None:
            entered.set()
        release.wait(30)
        return []

    dockerflow.init_app(app)
    return dockerflow


def test_one_heartbeat_sets_levels_durations_counts_and_timeouts(
    app: Flask, registry: CollectorRegistry, release: threading.Event
) -> None:
    make_dockerflow(app, registry, release)
    response = app.test_client().get("/__heartbeat__")
    assert response.status_code == 500
    samples = scrape(registry)
    names = ("fine", "broken", "shaky", "hangs")
    levels = {name: value(samples, "dockerflow_check_level", check=name) for name in names}
    assert levels == {"fine": 0, "broken": 40, "shaky": 30, "hangs": 40}
    assert value(samples, "dockerflow_heartbeats_total", status="error") == 1
    assert value(samples, "dockerflow_heartbeats_total", status="ok") == 0
    assert value(samples, "dockerflow_check_timeouts_total", check="hangs") == 1
    assert value(samples, "dockerflow_check_timeouts_total", check="fine") == 0
    for name in ("fine", "broken", "shaky", "hangs"):
        assert value(samples, "dockerflow_check_duration_seconds_count", check=name) == 1
    # The hanging check was waited for up to its timeout; the others took far less.
    hung = value(samples, "dockerflow_check_duration_seconds_sum", check="hangs")
    assert TIMEOUT * 0.9 <= hung < TIMEOUT + 1.0
    assert value(samples, "dockerflow_check_duration_seconds_sum", check="fine") < TIMEOUT
    assert value(samples, "dockerflow_check_duration_seconds_bucket", check="fine", le="+Inf") == 1


def test_a_failing_noncritical_check_counts_as_failing(
    app: Flask, registry: CollectorRegistry
) -> None:
    dockerflow = Dockerflow(app, metrics=HeartbeatMetrics(registry))

    @dockerflow.check(critical=False)
    def optional_cache() -> list[Any]:
        return [Error("cache down", id="test.E002")]

    response = app.test_client().get("/__heartbeat__")
    assert response.status_code == 200
    samples = scrape(registry)
    assert value(samples, "dockerflow_check_level", check="optional_cache") == 40
    assert value(samples, "dockerflow_heartbeats_total", status="warning") == 1
    assert value(samples, "dockerflow_heartbeats_total", status="error") == 0


def test_a_level_change_is_written_at_once(app: Flask, registry: CollectorRegistry) -> None:
    dockerflow = Dockerflow(app, metrics=HeartbeatMetrics(registry))
    down = threading.Event()

    @dockerflow.check
    def flaky() -> list[Any]:
        return [Error("down", id="test.E003")] if down.is_set() else []

    client = app.test_client()
    levels = []
    for state in (False, True, True, False):
        (down.set if state else down.clear)()
        client.get("/__heartbeat__")
        levels.append(value(scrape(registry), "dockerflow_check_level", check="flaky"))
    assert levels == [0, 40, 40, 0]


def test_a_stuck_sync_check_holds_one_thread_until_it_returns(
    app: Flask, registry: CollectorRegistry, release: threading.Event
) -> None:
    entered = threading.Event()
    make_dockerflow(app, registry, release, entered)
    client = app.test_client()
    # The first heartbeat gives up on the run at its timeout, measured from the heartbeat's
    # start; the run itself started a moment later, so it may not count as stuck yet. Once
    # the check has been running for longer than its timeout, it does, however late its
    # thread started on a loaded machine.
    client.get("/__heartbeat__")
    assert entered.wait(5)
    time.sleep(TIMEOUT)
    # Reported as still running on the next heartbeat: one thread held, another timeout.
    client.get("/__heartbeat__")
    samples = scrape(registry)
    assert value(samples, "dockerflow_check_stuck_threads", check="hangs") == 1
    assert value(samples, "dockerflow_check_timeouts_total", check="hangs") == 2
    # One run, one duration: the second heartbeat ran nothing for it.
    assert value(samples, "dockerflow_check_duration_seconds_count", check="hangs") == 1
    release.set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        client.get("/__heartbeat__")
        if value(scrape(registry), "dockerflow_check_stuck_threads", check="hangs") == 0:
            break
    assert value(scrape(registry), "dockerflow_check_stuck_threads", check="hangs") == 0


def test_an_async_check_past_its_timeout_holds_no_thread(
    app: Flask, registry: CollectorRegistry
) -> None:
    dockerflow = Dockerflow(app, metrics=HeartbeatMetrics(registry))

    @dockerflow.check(timeout=TIMEOUT)
    async def sleepy() -> list[Any]:
        import anyio

        await anyio.sleep(30)
        return []

    app.test_client().get("/__heartbeat__")
    samples = scrape(registry)
    assert value(samples, "dockerflow_check_timeouts_total", check="sleepy") == 1
    assert ("dockerflow_check_stuck_threads", (("check", "sleepy"),)) not in samples
    dockerflow.close()


def test_a_cached_report_counts_heartbeats_but_not_its_runs_again(
    app: Flask, registry: CollectorRegistry, release: threading.Event
) -> None:
    release.set()  # the "hangs" check returns at once: the report is cacheable and failing
    make_dockerflow(app, registry, release, DOCKERFLOW_HEARTBEAT_CACHE_FAILED_TTL=60)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/__heartbeat__").status_code == 500
    samples = scrape(registry)
    assert value(samples, "dockerflow_heartbeats_total", status="error") == 3
    assert value(samples, "dockerflow_check_duration_seconds_count", check="broken") == 1


def test_metrics_endpoint_serves_the_registry_in_both_text_formats(
    app: Flask, registry: CollectorRegistry, release: threading.Event
) -> None:
    make_dockerflow(app, registry, release, DOCKERFLOW_METRICS_ENDPOINT=True)
    client = app.test_client()
    client.get("/__heartbeat__")
    response = client.get("/__metrics__")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    assert response.headers["Cache-Control"] == "no-store"
    samples = parse(response.get_data(as_text=True))
    assert value(samples, "dockerflow_check_level", check="broken") == 40
    assert value(samples, "dockerflow_heartbeats_total", status="error") == 1
    openmetrics = client.get("/__metrics__", headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.content_type.startswith("application/openmetrics-text")
    assert openmetrics.get_data(as_text=True).endswith("# EOF\n")


def test_metrics_endpoint_is_off_by_default(
    app: Flask, registry: CollectorRegistry, release: threading.Event
) -> None:
    make_dockerflow(app, registry, release)
    assert app.test_client().get("/__metrics__").status_code == 404


def test_metrics_endpoint_without_metrics_is_refused_at_start_up(app: Flask) -> None:
    app.config["DOCKERFLOW_METRICS_ENDPOINT"] = "true"
    with pytest.raises(ConfigurationError, match="metrics=True"):
        Dockerflow(app)


def test_metrics_true_uses_the_default_registry_once(app: Flask, tmp_path: Path) -> None:
    dockerflow = Dockerflow(app, metrics=True)
    assert dockerflow.metrics is not None
    try:
        assert dockerflow.metrics.registry is REGISTRY
        app.test_client().get("/__heartbeat__")
        assert REGISTRY.get_sample_value("dockerflow_heartbeats_total", {"status": "ok"}) == 1
        # A second set of the same metrics in one registry is refused, saying what to do.
        other = Flask("other", root_path=str(tmp_path / "other"))
        with pytest.raises(ConfigurationError, match="share it"):
            Dockerflow(other, metrics=True)
        # The failed attempt left the first set in place and working.
        app.test_client().get("/__heartbeat__")
        assert REGISTRY.get_sample_value("dockerflow_heartbeats_total", {"status": "ok"}) == 2
    finally:
        dockerflow.metrics.unregister()
    assert REGISTRY.get_sample_value("dockerflow_heartbeats_total", {"status": "ok"}) is None


def test_one_metrics_object_shared_by_two_extensions(
    registry: CollectorRegistry, tmp_path: Path
) -> None:
    metrics = HeartbeatMetrics(registry)
    for name in ("one", "two"):
        app = Flask(name, root_path=str(tmp_path / name))
        Dockerflow(app, metrics=metrics)
        app.test_client().get("/__heartbeat__")
    assert value(scrape(registry), "dockerflow_heartbeats_total", status="ok") == 2


def test_a_bad_metrics_argument_is_refused(app: Flask, registry: CollectorRegistry) -> None:
    with pytest.raises(TypeError, match="HeartbeatMetrics"):
        Dockerflow(app, metrics=registry)  # type: ignore[arg-type]


def test_missing_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails, as uninstalled
    with pytest.raises(MissingDependencyError, match=r"dockerflow-async\[prometheus\]"):
        HeartbeatMetrics(CollectorRegistry())


def test_a_failing_metrics_recorder_does_not_change_the_heartbeat(
    app: Flask, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(HeartbeatMetrics):
        def observe(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("recorder broke")

    Dockerflow(app, metrics=Broken(registry))
    response = app.test_client().get("/__heartbeat__")
    assert response.status_code == 200
    assert "recorder broke" in caplog.text


def test_importing_the_flask_layer_does_not_import_prometheus_client() -> None:
    probe = (
        "import sys, dockerflow.flask, dockerflow.metrics\n"
        "assert 'prometheus_client' not in sys.modules\n"
        "import dockerflow.metrics as m; m.HeartbeatMetrics()\n"
        "assert 'prometheus_client' in sys.modules\n"
        "print('lazy')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "lazy"


FORK_PROBE = """
import os, sys
from prometheus_client import CollectorRegistry
from dockerflow.engine import CheckDetail, Report
from dockerflow.metrics import HeartbeatMetrics

metrics = HeartbeatMetrics(CollectorRegistry())
report = lambda: Report(40, {"db": CheckDetail(40, {}, 0.01)})
metrics.observe(report())  # in the parent, as gunicorn's arbiter with --preload may
pid = os.fork()
if pid == 0:
    metrics.observe(report())  # the same level, well within a second
    os._exit(0)
os.waitpid(pid, 0)
print(pid)
"""


def test_a_forked_worker_writes_the_level_gauge_of_its_own_pid(tmp_path: Path) -> None:
    # Multiprocess mode is chosen when prometheus_client is imported: a process of its own.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", FORK_PROBE],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    child = int(result.stdout.strip())
    parent = next(
        int(path.stem.rsplit("_", 1)[1])
        for path in tmp_path.glob("gauge_livemostrecent_*.db")
        if path.stem != f"gauge_livemostrecent_{child}"
    )
    # With the parent gone, the level is what the child wrote. (A child that skipped the
    # write, trusting the parent's record of it, shows no level at all.)
    mark_process_dead(parent, path=str(tmp_path))
    collected = CollectorRegistry()
    MultiProcessCollector(collected, path=str(tmp_path))
    assert collected.get_sample_value("dockerflow_check_level", {"check": "db"}) == 40
