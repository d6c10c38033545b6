"""A Flask app for the gevent tests: quick and stuck checks, sync and async, and the database.

Served with ``gunicorn -k gevent 'gevent_app:create_app()'`` (``--pythonpath`` this directory),
``--preload`` or not, and without patching early: gevent's worker patches the standard library
after the fork, once the app is built. ``GEVENT_APP_DATABASE_URL`` is the PostgreSQL server of
the Flask-SQLAlchemy checks (psycopg2). Each test asks for the checks it wants with
``/__heartbeat__?check=...``; ``/hold?seconds=0.3`` holds the worker that long without
yielding to gevent.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import sqlalchemy
from flask import Flask, jsonify, request
from flask_sqlalchemy import SQLAlchemy

from dockerflow.flask import Dockerflow

#: The stuck checks' timeout, in seconds.
STUCK_TIMEOUT = 0.5


def create_app() -> Flask:
    """Build the app; see the module docstring for the environment it reads."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["GEVENT_APP_DATABASE_URL"]
    db = SQLAlchemy(app)
    # The built-in database check: check_database_connected.
    dockerflow = Dockerflow(app, db=db)

    @dockerflow.check
    def sync_ok() -> list[Any]:
        return []

    @dockerflow.check
    async def async_ok() -> list[Any]:
        await asyncio.sleep(0.01)
        return []

    @dockerflow.check
    async def async_also_ok() -> list[Any]:
        await asyncio.sleep(0.01)
        return []

    @dockerflow.check
    def session_query() -> list[Any]:
        # The app's own session, in the app context the engine pushes for the run.
        db.session.execute(sqlalchemy.text("SELECT 1")).scalar_one()
        return []

    @dockerflow.check(timeout=STUCK_TIMEOUT)
    def sync_stuck() -> list[Any]:
        time.sleep(60)
        return []

    @dockerflow.check(timeout=STUCK_TIMEOUT)
    async def async_stuck() -> list[Any]:
        await asyncio.sleep(60)
        return []

    @app.get("/hold")
    def hold() -> Any:
        # Holds the worker without yielding to gevent's hub: requests that arrive meanwhile are
        # all ready when it ends, and their handlers run one after another.
        seconds = float(request.args.get("seconds", "0.3"))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
        return jsonify(held=seconds)

    return app
