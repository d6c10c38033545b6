"""A Flask app for the drain tests: a passing check and a slow route.

Served with ``gunicorn 'drain_app:create_app()'`` (``--pythonpath`` this directory), with
``DOCKERFLOW_DRAIN_SECONDS`` in the environment. ``GET /slow?seconds=2`` answers after that many
seconds, and writes ``SLOW_STARTED`` on stderr when it begins: a request in flight when SIGTERM
comes. ``GET /pid`` names the worker that answered.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from flask import Flask, jsonify, request

from dockerflow.flask import Dockerflow


def create_app() -> Flask:
    """Build the app; ``DOCKERFLOW_*`` settings come from the environment."""
    app = Flask(__name__)
    dockerflow = Dockerflow(app)

    @dockerflow.check
    def always_passes() -> list[Any]:
        return []

    @app.get("/slow")
    def slow() -> Any:
        seconds = float(request.args.get("seconds", "1"))
        started = time.monotonic()
        # The test waits for this line: the request is then in flight.
        print(f"SLOW_STARTED pid={os.getpid()}", file=sys.stderr, flush=True)
        time.sleep(seconds)
        return jsonify(pid=os.getpid(), slept=time.monotonic() - started)

    @app.get("/pid")
    def pid() -> Any:
        return jsonify(pid=os.getpid())

    return app
