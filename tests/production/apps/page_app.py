"""A Flask app for the status page's browser test, served by gunicorn with one worker.

Its checks: ``payments``, which fails while the file named by ``PAGE_APP_FAIL_FLAG`` exists
(with a password in its message, which must show masked); ``database``, which passes and reports
a value; and ``search``, non-critical, which warns. Every response carries the strict
``Content-Security-Policy: default-src 'self'`` a careful service sends.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, Response

from dockerflow.checks import CheckData, Error, Warning
from dockerflow.flask import Dockerflow


def create_app() -> Flask:
    """Build the app; ``PAGE_APP_FAIL_FLAG`` names the file whose presence fails ``payments``."""
    app = Flask("page_app")
    dockerflow = Dockerflow(app)
    flag = os.environ["PAGE_APP_FAIL_FLAG"]

    @dockerflow.check(timeout=1.0)
    def payments() -> list[Any]:
        if os.path.exists(flag):
            return [
                Error(
                    "payments API refused the connection: https://svc:hunter2@payments.internal/",
                    id="pageapp.health.E001",
                )
            ]
        return [CheckData("status_code", 200)]

    @dockerflow.check
    def database() -> list[Any]:
        return [CheckData("round_trip", 0.0012, unit="s")]

    @dockerflow.check(critical=False)
    def search() -> list[Any]:
        return [Warning("Search cluster is yellow: 2 of 3 replicas", id="pageapp.health.W001")]

    @app.after_request
    def strict_csp(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = "default-src 'self'"
        return response

    return app
