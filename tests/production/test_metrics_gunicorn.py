"""Prometheus metrics under gunicorn with two workers, in prometheus_client's multiprocess mode.

Heartbeats go through HTTP to both workers; /__metrics__ (served by whichever worker) must show
the metrics of both, collected from ``PROMETHEUS_MULTIPROC_DIR``, and parsed with
prometheus_client's own parser. A worker that exits leaves its counts in the counters, and its
stuck threads leave the gauge (gunicorn's ``child_exit`` hook marks it dead).
"""

from __future__ import annotations

import http.client
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .gunicorn_helpers import APPS, START_TIMEOUT, Gunicorn, start_gunicorn

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def request(port: int, path: str) -> tuple[int, str, str]:
    """GET ``path`` on a new connection; return the status, the serving worker's pid, the body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        body = response.read().decode()
        return response.status, response.getheader("X-Worker-Pid", ""), body
    finally:
        connection.close()


def scrape(port: int) -> Samples:
    status, _, body = request(port, "/__metrics__")
    assert status == 200, body
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture(params=[False, True], ids=["", "preload"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gunicorn]:
    """gunicorn with two sync workers; with ``--preload`` the arbiter makes the metrics, and
    each worker must write to files of its own pid after the fork."""
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    preload = ["--preload"] if request.param else []
    gunicorn = start_gunicorn(
        tmp_path,
        "metrics_app:create_app()",
        ["-w", "2", *preload, "-c", str(APPS / "metrics_gunicorn_conf.py")],
        {"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir), "DOCKERFLOW_METRICS_ENDPOINT": "true"},
    )
    try:
        gunicorn.wait_until_serving(time.monotonic() + START_TIMEOUT)
        yield gunicorn
    finally:
        gunicorn.stop()


def test_two_workers_metrics_are_collected_together(server: Gunicorn) -> None:
    served: Counter[str] = Counter()

    def heartbeat(_: int) -> None:
        status, pid, body = request(server.port, "/__heartbeat__")
        assert status == 500, body
        served[pid] += 1

    # Concurrent heartbeats, until each worker has run at least two: a sync worker serves one
    # request at a time, so the other takes the next connection.
    with ThreadPoolExecutor(4) as pool:
        for _ in range(50):
            list(pool.map(heartbeat, range(8)))
            if len(served) == 2 and min(served.values()) >= 2:
                break
    assert len(served) == 2 and min(served.values()) >= 2, served
    total = sum(served.values())

    samples = scrape(server.port)
    # Counters and histograms: the sum over both workers.
    assert value(samples, "dockerflow_heartbeats_total", status="error") == total
    assert value(samples, "dockerflow_heartbeats_total", status="ok") == 0
    assert value(samples, "dockerflow_check_duration_seconds_count", check="fine") == total
    # The blocked check times out, or is still running, in every heartbeat.
    assert value(samples, "dockerflow_check_timeouts_total", check="hangs") == total
    # Gauges: one value each, whichever worker set it last.
    assert value(samples, "dockerflow_check_level", check="broken") == 40
    assert value(samples, "dockerflow_check_level", check="hangs") == 40
    assert value(samples, "dockerflow_check_level", check="fine") == 0
    # Each worker holds one thread for the blocked check: summed over the live workers.
    assert value(samples, "dockerflow_check_stuck_threads", check="hangs") == 2

    # One worker exits; gunicorn starts another, and child_exit marks the old one dead.
    gone = next(iter(served))
    os.kill(int(gone), signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        samples = scrape(server.port)
        if value(samples, "dockerflow_check_stuck_threads", check="hangs") == 1:
            break
        time.sleep(0.1)
    assert value(samples, "dockerflow_check_stuck_threads", check="hangs") == 1
    # Its heartbeats still count.
    assert value(samples, "dockerflow_heartbeats_total", status="error") == total
    assert value(samples, "dockerflow_check_level", check="broken") == 40
    assert server.forbidden_output() == []
