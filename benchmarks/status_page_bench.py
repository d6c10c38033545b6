"""What the status page costs, for 10 trivial checks in one process: µs to record a heartbeat's
report in the recent results (History.record, timed alone on distinct reports), µs per JSON
heartbeat through Flask's test client with the page on (recording) and off, µs per page, and the
size of /__heartbeat__/history once full.

Run: .venv/bin/python benchmarks/status_page_bench.py [--rounds N]
Target: recording a report of 10 checks takes at most 50 µs (median), 3 % of such a heartbeat. The on/off difference of
whole heartbeats is printed too, but it is within the noise of a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from typing import Any

from flask import Flask

from dockerflow.checks import CheckData, Warning
from dockerflow.engine import History
from dockerflow.flask import Dockerflow

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
CHECKS = 10
PER_ROUND = 500


def make_app(page: bool) -> tuple[Flask, Dockerflow]:
    app = Flask("bench")
    app.config["DOCKERFLOW_HEARTBEAT_PAGE"] = page
    ext = Dockerflow(app)
    for i in range(CHECKS):

        def check(i: int = i) -> list[Any]:
            return [CheckData("value", i, unit="items"), Warning("a long queue " * 10, id="b.W1")]

        ext.check(check, name=f"check_{i}")
    return app, ext


def per_call(client: Any, headers: dict[str, str], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        client.get("/__heartbeat__", headers=headers)
    return (time.perf_counter() - started) / count * 1e6


def record_cost(app: Flask, ext: Dockerflow) -> float:
    """µs per History.record of a distinct report of the app's checks, as heartbeats make."""
    with app.app_context():
        reports = [ext.run_checks() for _ in range(50)]  # distinct objects, the same content
    history = History()
    started = time.perf_counter()
    for _ in range(PER_ROUND // 50):
        for report in reports:
            history.record(report)
    return (time.perf_counter() - started) / (PER_ROUND // 50 * len(reports)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    # The checks' warnings would be logged on every heartbeat: not what is measured here.
    logging.getLogger("dockerflow.checks.registry").disabled = True
    print(f"load average at start: {os.getloadavg()}")
    on_app, on_ext = make_app(True)
    off_app, off_ext = make_app(False)
    on, off = on_app.test_client(), off_app.test_client()
    for client in (on, off):
        per_call(client, {}, 100)  # warm-up, and fill the recent results
    json_on, json_off, page = [], [], []
    for _ in range(args.rounds):  # interleaved, so that load drifts hit both alike
        json_off.append(per_call(off, {}, PER_ROUND))
        json_on.append(per_call(on, {}, PER_ROUND))
        page.append(per_call(on, {"Accept": BROWSER}, PER_ROUND // 5))
    history = on.get("/__heartbeat__/history").data
    record = statistics.median(record_cost(on_app, on_ext) for _ in range(args.rounds))
    added = statistics.median(json_on) - statistics.median(json_off)
    print(f"{CHECKS} checks, {args.rounds} rounds of {PER_ROUND} heartbeats; medians in µs")
    met = "MET" if record <= 50 else "MISSED"
    print(f"History.record, one report       {record:8.1f}  (target <= 50: {met})")
    print(f"JSON heartbeat, page off         {statistics.median(json_off):8.1f}")
    print(f"JSON heartbeat, page on          {statistics.median(json_on):8.1f}  ({added:+.1f})")
    print(f"status page (render + heartbeat) {statistics.median(page):8.1f}")
    results = sum(len(c["results"]) for c in json.loads(history)["checks"].values())
    print(f"/__heartbeat__/history, full: {len(history)} bytes, {results} results")
    print(f"load average at end: {os.getloadavg()}")
    on_ext._bridge.stop()
    off_ext._bridge.stop()


if __name__ == "__main__":
    main()
