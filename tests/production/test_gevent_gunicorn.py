"""The heartbeat under gunicorn's gevent worker with ``--preload``, patched late.

gevent's worker patches the standard library after the fork: with ``--preload`` the app, its
engine and the engine's at-fork resets were all made before the patch, and nothing in the
app's config patches early. Every heartbeat must answer by its deadline all the same: quick
sync checks (a plain one, a query through the app's Flask-SQLAlchemy session, the built-in
database check; psycopg2 on the shared PostgreSQL) and quick async checks, eight heartbeats at
once on a fresh worker, and a stuck check of each kind, reported as timed out by its deadline
while ``/__lbheartbeat__`` keeps answering. Then SIGTERM stops every gunicorn, its worker
exiting by itself, while the stuck runs still go.

gevent without ``--preload`` is served by the drain tests. Each server has one worker, so that
the heartbeats sent at once reach one process. Each goes on a kept-alive connection opened with
a ``/__lbheartbeat__``, and is sent while ``/hold`` keeps the worker from gevent's hub: when it
lets go, all the handlers are ready at once and run one after another, each until it waits, as
a burst of probes on a busy worker does. Before the fix, the sync heartbeats got no answer (a
greenlet waited on a queue made before the patch), and the async ones neither (a greenlet
waited on a lock made before the patch, held by another that was starting the loop thread).
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dockerflow import health

# The app's checks use a Flask-SQLAlchemy session: not installed with the lowest versions (make
# test-min), where the drain matrix's gevent servers still run.
pytest.importorskip("flask_sqlalchemy")

from .apps.gevent_app import STUCK_TIMEOUT
from .gunicorn_helpers import (
    START_TIMEOUT,
    Gunicorn,
    get,
    postgres_url,
    start_gunicorn,
)

#: Heartbeats sent at once to a fresh worker.
AT_ONCE = 8
#: Seconds the worker is held while they are sent.
HOLD = 0.3
#: Seconds a quick heartbeat may take on a loaded machine (before the fix: no answer at all).
ANSWER_WITHIN = 10.0
#: A loose bound on a stuck check's heartbeat: its timeout plus the machine's load.
STUCK_ANSWER_WITHIN = STUCK_TIMEOUT + 4.0
#: gunicorn's graceful_timeout: a worker still there then is killed, and gunicorn exits.
GRACEFUL = 10

QUICK = {
    "sync": ("sync_ok", "session_query", "check_database_connected"),
    "async": ("async_ok", "async_also_ok"),
}
STUCK = {"sync": "sync_stuck", "async": "async_stuck"}
#: Server name -> the kind of checks it runs, on a fresh worker.
SERVERS = {"preload-sync": "sync", "preload-async": "async"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Gunicorn]]:
    database = postgres_url()
    started: dict[str, Gunicorn] = {}
    try:
        for name in SERVERS:
            started[name] = start_gunicorn(
                tmp_path_factory.mktemp(name),
                "gevent_app:create_app()",
                [
                    *("-w", "1", "-k", "gevent", "--preload"),
                    *("--graceful-timeout", str(GRACEFUL)),
                ],
                {"GEVENT_APP_DATABASE_URL": database},
            )
        # Started together: start-up is most of this module's time.
        deadline = time.monotonic() + START_TIMEOUT
        for server in started.values():
            server.wait_until_serving(deadline)
        yield started
    finally:
        for server in started.values():
            server.stop()


def _heartbeats_at_once(port: int, checks: tuple[str, ...]) -> list[tuple[int, Any]]:
    """Send ``AT_ONCE`` heartbeats while the worker is held, each on a kept-alive connection
    whose handler is already waiting for it: their handlers then run one after another, each
    until it waits. Each asks for one of ``checks`` in turn: runs of one check are shared, so
    only runs of different checks start together. Return what each got."""
    connections = [
        http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_WITHIN)
        for _ in range(AT_ONCE + 1)
    ]
    try:
        for connection in connections:
            connection.request("GET", "/__lbheartbeat__")
            response = connection.getresponse()
            response.read()
            assert response.status == 200
        holder, *others = connections
        holder.request("GET", f"/hold?seconds={HOLD}")
        for i, connection in enumerate(others):
            connection.request("GET", f"/__heartbeat__?check={checks[i % len(checks)]}")
        answers = []
        for connection in others:
            response = connection.getresponse()
            answers.append((response.status, json.loads(response.read())))
        assert holder.getresponse().status == 200
        return answers
    finally:
        for connection in connections:
            connection.close()


@pytest.mark.parametrize("name", list(SERVERS))
def test_gevent_heartbeat_answers_by_its_deadline(servers: dict[str, Gunicorn], name: str) -> None:
    server, kind = servers[name], SERVERS[name]
    quick = QUICK[kind]

    answers = _heartbeats_at_once(server.port, quick)
    expected = [
        (200, {"status": "ok", "checks": {quick[i % len(quick)]: "ok"}, "details": {}})
        for i in range(AT_ONCE)
    ]
    assert answers == expected, server.output

    stuck = STUCK[kind]
    started = time.monotonic()
    status, body = get(server.port, f"/__heartbeat__?check={stuck},{quick[0]}")
    took = time.monotonic() - started
    print(f"\n{name}: the stuck check's heartbeat answered in {took:.2f}s")
    assert status == 500, body
    assert body["checks"] == {stuck: "error", quick[0]: "ok"}
    assert health.ERROR_CHECK_TIMEOUT in body["details"][stuck]["messages"]
    assert STUCK_TIMEOUT <= took < STUCK_ANSWER_WITHIN
    # The stuck run goes on, and the worker serves.
    assert get(server.port, "/__lbheartbeat__")[0] == 200
    status, body = get(server.port, f"/__heartbeat__?check={quick[0]}")
    assert (status, body["checks"]) == (200, {quick[0]: "ok"})


def test_gevent_workers_stop_on_sigterm_with_stuck_checks(servers: dict[str, Gunicorn]) -> None:
    """Run after the heartbeats: each worker still runs its stuck checks (60 s each). It exits
    by itself, before gunicorn's graceful_timeout would have it killed."""
    started = time.monotonic()
    for server in servers.values():
        server.process.terminate()
    for name, server in servers.items():
        server.process.wait(timeout=GRACEFUL + 5)
        took = time.monotonic() - started
        print(f"\n{name}: gunicorn exited within {took:.2f}s of SIGTERM")
        assert server.process.returncode == 0, server.output
        assert took < GRACEFUL, server.output
        assert server.forbidden_output() == [], server.output
