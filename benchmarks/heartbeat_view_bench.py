"""Heartbeat through the sync view (the engine's bridge) versus an ``async def`` Flask view.

Flask runs an ``async def`` view by starting a new event loop for the request (asgiref's
``async_to_sync``). Async clients must stay on the engine's one loop, so the async view still has
to hop onto that loop; this measures what the extra loop costs. Run:

    .venv/bin/python benchmarks/heartbeat_view_bench.py
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

from flask import Flask, jsonify
from werkzeug.test import EnvironBuilder

from dockerflow.flask import Dockerflow

ROUNDS = 7
REQUESTS = 400


def make_app() -> tuple[Flask, Dockerflow]:
    app = Flask("bench")
    ext = Dockerflow(app)

    @ext.check
    async def async_ok() -> None:
        await asyncio.sleep(0)

    @ext.check
    def sync_ok() -> None:
        return None

    @app.route("/async-heartbeat")
    async def async_heartbeat() -> object:
        # Keep the async checks on the engine's loop (the request's loop is a new one each
        # time): the blocking call, in a thread.
        engine = ext._state().engine
        report = await asyncio.to_thread(engine.run_sync, ext._all_checks())
        return jsonify(report.as_dict())

    return app, ext


def per_request_us(app: Flask, path: str) -> float:
    environ = EnvironBuilder(path=path).get_environ()

    def start_response(status: str, headers: object, exc_info: object = None) -> None:
        assert status.startswith("200"), status

    started = time.perf_counter()
    for _ in range(REQUESTS):
        b"".join(app(dict(environ), start_response))
    return (time.perf_counter() - started) / REQUESTS * 1e6


def main() -> None:
    app, ext = make_app()
    results: dict[str, list[float]] = {"sync view (bridge)": [], "async def view": []}
    paths: dict[str, str] = {
        "sync view (bridge)": "/__heartbeat__",
        "async def view": "/async-heartbeat",
    }
    measure: Callable[[str], float] = lambda name: per_request_us(app, paths[name])  # noqa: E731
    for name in results:
        measure(name)  # warm-up
    for _ in range(ROUNDS):
        for name in results:
            results[name].append(measure(name))
    ext.close()
    print(f"{'view':<22}{'median µs/heartbeat':>22}{'min µs':>10}")
    for name, values in results.items():
        print(f"{name:<22}{statistics.median(values):>22.1f}{min(values):>10.1f}")


if __name__ == "__main__":
    main()
