"""A Flask app for the metrics tests under gunicorn: Prometheus metrics in multiprocess mode.

Served with ``gunicorn -w 2 -c metrics_gunicorn_conf.py 'metrics_app:create_app()'`` and
``PROMETHEUS_MULTIPROC_DIR`` set. Its checks: one that passes, one that fails (level 40) and a
sync one that blocks for good, so that it times out on every heartbeat and holds one thread in
each worker that ran it. Every response names the worker that served it (``X-Worker-Pid``).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from flask import Flask, Response

from dockerflow.checks import Error
from dockerflow.flask import Dockerflow

#: Seconds the blocking check may run.
HANG_TIMEOUT = 0.2


def create_app() -> Flask:
    """Build the app; metrics on, and served at /__metrics__ (DOCKERFLOW_METRICS_ENDPOINT)."""
    app = Flask(__name__)
    dockerflow = Dockerflow(app, metrics=True)
    never = threading.Event()

    @dockerflow.check
    def fine() -> list[Any]:
        return []

    @dockerflow.check
    def broken() -> list[Any]:
        return [Error("the payments API is down", id="metricsapp.E001")]

    @dockerflow.check(timeout=HANG_TIMEOUT)
    def hangs() -> list[Any]:
        never.wait()
        return []

    @app.after_request
    def name_worker(response: Response) -> Response:
        response.headers["X-Worker-Pid"] = str(os.getpid())
        return response

    return app
