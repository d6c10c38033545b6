"""Cost of the Prometheus metrics hook per heartbeat, with 10 checks; target <= 50 µs.

Three figures, each the median of several rounds (and the hook's fastest round, the least
disturbed by other processes):

* the hook alone: the extension's ``heartbeat_checked`` receiver (the engine's stuck runs, then
  ``HeartbeatMetrics.observe``) called with a new report of 10 checks each time;
* a whole heartbeat through the view (WSGI, 10 sync checks that pass), without metrics and with;
* the same, with ``PROMETHEUS_MULTIPROC_DIR`` set (multiprocess mode: values in mmap'd files),
  in a child process, since the mode is chosen when prometheus_client is imported.

Run:

    .venv/bin/python benchmarks/metrics_bench.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from flask import Flask
from prometheus_client import CollectorRegistry
from werkzeug.test import EnvironBuilder

from dockerflow.engine import CheckDetail, Report
from dockerflow.flask import Dockerflow
from dockerflow.metrics import HeartbeatMetrics

CHECKS = 10
ROUNDS = 11
HOOK_CALLS = 5000
HEARTBEATS = 500
TARGET_US = 50.0


def make_app(metrics: bool) -> tuple[Flask, Dockerflow]:
    app = Flask("bench")
    ext = Dockerflow(app, metrics=HeartbeatMetrics(CollectorRegistry()) if metrics else False)
    for i in range(CHECKS):
        ext.check(lambda: [], name=f"check_{i}")
    return app, ext


def reports(count: int) -> list[Report]:
    # New report objects, as the engine makes one per heartbeat (a cached one is the same object).
    results = {f"check_{i}": CheckDetail(0, {}, 0.0012) for i in range(CHECKS)}
    return [Report(0, dict(results)) for _ in range(count)]


def hook_us(app: Flask, ext: Dockerflow) -> float:
    batch = reports(HOOK_CALLS)
    record = ext._record_metrics  # the receiver the extension connects to heartbeat_checked
    started = time.perf_counter()
    for report in batch:
        record(app, level=0, report=report, passed=True)
    return (time.perf_counter() - started) / HOOK_CALLS * 1e6


def heartbeat_us(app: Flask) -> float:
    environ = EnvironBuilder(path="/__heartbeat__").get_environ()

    def start_response(status: str, headers: object, exc_info: object = None) -> None:
        assert status.startswith("200"), status

    started = time.perf_counter()
    for _ in range(HEARTBEATS):
        b"".join(app(dict(environ), start_response))
    return (time.perf_counter() - started) / HEARTBEATS * 1e6


def measure() -> dict[str, float]:
    plain_app, plain_ext = make_app(metrics=False)
    metrics_app, metrics_ext = make_app(metrics=True)
    runs: dict[str, list[float]] = {"hook": [], "plain": [], "metrics": []}
    heartbeat_us(plain_app)  # warm-up: the loop thread, the labelled children
    heartbeat_us(metrics_app)
    for _ in range(ROUNDS):
        runs["hook"].append(hook_us(metrics_app, metrics_ext))
        runs["plain"].append(heartbeat_us(plain_app))
        runs["metrics"].append(heartbeat_us(metrics_app))
    plain_ext.close()
    metrics_ext.close()
    out = {name: statistics.median(values) for name, values in runs.items()}
    # The fastest round: the least disturbed by other processes on a shared machine.
    out["hook_min"] = min(runs["hook"])
    return out


def print_rows(mode: str, result: dict[str, Any]) -> None:
    verdict = "ok" if result["hook"] <= TARGET_US else "OVER TARGET"
    print(
        f"{mode:<15}{result['hook']:>12.1f}{result['hook_min']:>12.1f}{result['plain']:>20.1f}{result['metrics']:>20.1f}"
        f"{result['metrics'] - result['plain']:>12.1f}   {verdict}"
    )


def main() -> None:
    if "--child" in sys.argv:
        print(json.dumps(measure()))
        return
    print(f"{CHECKS} checks; median of {ROUNDS} rounds; µs; target: hook <= {TARGET_US:g} µs")
    print(
        f"{'mode':<15}{'hook µs':>12}{'hook min':>12}{'heartbeat, off':>20}{'heartbeat, on':>20}{'on - off':>12}"
    )
    print_rows("single process", measure())
    with tempfile.TemporaryDirectory() as directory:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
        child = subprocess.run(
            [sys.executable, __file__, "--child"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    print_rows("multiprocess", json.loads(child.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
