"""A Flask app for the gunicorn fork tests: async built-in checks and a route that shows which
process, loop thread and event loop served it.

Served with ``gunicorn --preload 'fork_app:create_app()'`` (``--pythonpath`` this directory), so the
arbiter builds the app before it forks the workers. Settings come from the environment:

* ``FORK_APP_POSTGRES_DSN`` and ``FORK_APP_REDIS_URL``: the servers the checks talk to;
* ``FORK_APP_NAME``: the ``application_name`` of the asyncpg check's connections;
* ``FORK_APP_HEARTBEAT_AT_IMPORT=1``: run one heartbeat while building the app, so the arbiter
  has a running loop thread, an asyncpg pool and a Redis connection before it forks (the hazard
  that the children must survive).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any

import redis.asyncio
from flask import Flask, jsonify, request

from dockerflow.flask import Dockerflow
from dockerflow.integrations import AsyncpgCheck

LOOP_THREAD_NAME = "dockerflow-loop"


def create_app() -> Flask:
    """Build the app; see the module docstring for the environment it reads."""
    app = Flask(__name__)
    client = redis.asyncio.Redis.from_url(
        os.environ["FORK_APP_REDIS_URL"], socket_timeout=2, socket_connect_timeout=2
    )
    dockerflow = Dockerflow(app, redis=client)
    dockerflow.check(
        AsyncpgCheck(
            dsn=os.environ["FORK_APP_POSTGRES_DSN"],
            server_settings={"application_name": os.environ["FORK_APP_NAME"]},
        ),
        name="check_postgres",
    )
    # Where the async checks last ran in this process: the probe runs on the same loop as they do.
    seen: dict[str, Any] = {}

    @dockerflow.check
    async def loop_probe() -> list[Any]:
        seen["loop_id"] = id(asyncio.get_running_loop())
        seen["pid"] = os.getpid()
        seen["native_id"] = threading.get_native_id()
        return []

    # Heartbeats served, by process: a forked child starts from its own pid's count, zero.
    served: dict[int, int] = {}
    served_lock = threading.Lock()

    @app.before_request
    def count_heartbeats() -> None:
        if request.path == "/__heartbeat__":
            with served_lock:
                served[os.getpid()] = served.get(os.getpid(), 0) + 1

    @app.get("/_debug/loop")
    def loop_info() -> Any:
        loop_threads = [
            {"ident": thread.ident, "native_id": thread.native_id}
            for thread in threading.enumerate()
            if thread.name == LOOP_THREAD_NAME
        ]
        return jsonify(
            pid=os.getpid(),
            loop_threads=loop_threads,
            probe=dict(seen),
            heartbeats=served.get(os.getpid(), 0),
        )

    if os.environ.get("FORK_APP_HEARTBEAT_AT_IMPORT") == "1":
        response = app.test_client().get("/__heartbeat__")
        body = response.get_json()
        print(f"FORK_APP import-time heartbeat: {response.status_code} {body}", file=sys.stderr)
        if response.status_code != 200:
            raise RuntimeError(f"the import-time heartbeat failed: {body}")
    return app
