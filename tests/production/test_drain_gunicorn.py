"""Draining under real gunicorn: SIGTERM to the arbiter, as Kubernetes sends it to a pod.

With ``DOCKERFLOW_DRAIN_SECONDS``, every worker keeps serving for the drain after SIGTERM:
``/__heartbeat__`` answers 503 (``dockerflow.health.E015``) on new connections and on a kept-alive
one, ``/__lbheartbeat__`` stays 200, a slow request in flight completes, and gunicorn exits once
the drain and the requests are over. Without the drain, gunicorn stops accepting at once and a
probe sees no answer at all (new connections wait in the backlog until they are refused); the
probes guide gives the figures.

Sync and gthread workers load the app themselves, so ``init_app`` chains to their handler; with
``--preload`` the app is built before the worker's handler exists, and the ``post_worker_init``
hook of ``apps/drain_gunicorn_conf.py`` makes SIGTERM drain (``DRAIN_TEST_HOOK=1``). The test
sends SIGTERM once every worker has written ``WORKER_READY`` from that hook: a worker still
loading the app when SIGTERM comes stops at once, drain or not.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dockerflow import health

from .gunicorn_helpers import APPS, START_TIMEOUT, Gunicorn, get, start_gunicorn

#: DOCKERFLOW_DRAIN_SECONDS of the servers.
DRAIN = 1.5
#: gunicorn's graceful_timeout: the drain plus the slow request must fit in it.
GRACEFUL = 5
#: The slow request is in flight when SIGTERM comes and still going when the drain ends.
SLOW = DRAIN + 0.5
#: The issue's target: a heartbeat sent this long after SIGTERM already answers 503.
FIRST_503_WITHIN = 0.2
#: Probes stop this long before the drain ends (after it, new connections get no answer).
PROBE_MARGIN = 0.3
#: Extra seconds gunicorn may take to exit on a loaded machine.
EXIT_SLACK = 3.0

WORKERS = 2
#: gunicorn arguments, and whether the post_worker_init hook calls drain_on_sigterm().
VARIANTS = {
    "sync": ((), False),
    "gthread": (("-k", "gthread", "--threads", "4"), False),
    "gthread-preload-hook": (("-k", "gthread", "--threads", "4", "--preload"), True),
}


@dataclass(frozen=True)
class Probe:
    """One probe sent during the drain: when (seconds after SIGTERM), what it got."""

    sent: float
    path: str
    status: int | str
    body: Any


def probe(port: int, path: str, t0: float) -> Probe:
    sent = time.monotonic() - t0
    try:
        status, body = get(port, path, timeout=2.0)
    except OSError as exc:
        return Probe(sent, path, type(exc).__name__, None)
    return Probe(sent, path, status, body)


def keepalive_heartbeat(connection: http.client.HTTPConnection) -> tuple[int, Any]:
    connection.request("GET", "/__heartbeat__")
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def wait_for_output(server: Gunicorn, marker: str, deadline: float, count: int = 1) -> None:
    while server.output.count(marker) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{marker!r} not in gunicorn's output:\n{server.output}")
        time.sleep(0.02)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sigterm_drains_every_worker_then_gunicorn_stops(tmp_path: Path, variant: str) -> None:
    args, hook = VARIANTS[variant]
    server = start_gunicorn(
        tmp_path,
        "drain_app:create_app()",
        [
            *("-w", str(WORKERS), *args, "--graceful-timeout", str(GRACEFUL)),
            *("-c", str(APPS / "drain_gunicorn_conf.py")),
        ],
        {"DOCKERFLOW_DRAIN_SECONDS": str(DRAIN), "DRAIN_TEST_HOOK": "1" if hook else "0"},
    )
    try:
        server.wait_until_serving(time.monotonic() + START_TIMEOUT, "/__heartbeat__")
        wait_for_output(server, "WORKER_READY", time.monotonic() + START_TIMEOUT, WORKERS)
        assert get(server.port, "/__heartbeat__")[0] == 200
        kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        assert keepalive_heartbeat(kept)[0] == 200

        slow: dict[str, Any] = {}

        def slow_request() -> None:
            slow["result"] = get(server.port, f"/slow?seconds={SLOW}", timeout=SLOW + GRACEFUL)

        slow_thread = threading.Thread(target=slow_request)
        slow_thread.start()
        wait_for_output(server, "SLOW_STARTED", time.monotonic() + 10)

        t0 = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        probes: list[Probe] = []
        while time.monotonic() - t0 < DRAIN - PROBE_MARGIN:
            probes.append(probe(server.port, "/__heartbeat__", t0))
            probes.append(probe(server.port, "/__lbheartbeat__", t0))

        kept_status, kept_body = keepalive_heartbeat(kept)  # before the drain ends
        kept.close()

        server.process.wait(timeout=DRAIN + GRACEFUL + EXIT_SLACK)
        exited = time.monotonic() - t0
        slow_thread.join(10)
    finally:
        server.stop()

    heartbeats = [p for p in probes if p.path == "/__heartbeat__"]
    first_503 = min(p.sent for p in heartbeats if p.status == 503)
    print(
        f"\n{variant}: first 503 sent {first_503 * 1000:.0f} ms after SIGTERM; "
        f"{len(heartbeats)} heartbeats during the drain; gunicorn exited after {exited:.2f}s"
    )
    assert first_503 <= FIRST_503_WITHIN
    assert [p for p in heartbeats if p.sent >= FIRST_503_WITHIN and p.status != 503] == []
    assert {p.status for p in heartbeats} <= {200, 503}, heartbeats
    drained = next(p.body for p in heartbeats if p.status == 503)
    assert drained["checks"] == {"draining": "error"}
    assert health.ERROR_DRAINING in drained["details"]["draining"]["messages"]
    assert "(SIGTERM)" in drained["details"]["draining"]["messages"][health.ERROR_DRAINING]
    assert {p.status for p in probes if p.path == "/__lbheartbeat__"} == {200}
    if "sync" not in variant:  # a sync worker closes every connection after its response
        assert kept_status == 503, kept_body
    assert slow["result"][0] == 200, slow
    assert slow["result"][1]["slept"] >= SLOW
    assert server.process.returncode == 0
    assert DRAIN <= exited <= DRAIN + GRACEFUL + EXIT_SLACK
    assert server.output.count("Draining (SIGTERM)") == WORKERS, server.output
    assert server.forbidden_output() == []
    assert "has no effect" not in server.output
