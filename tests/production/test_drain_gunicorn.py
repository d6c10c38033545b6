"""Draining under real gunicorn: every worker class, with and without ``--preload``, SIGTERM to
the arbiter alone (as Kubernetes sends it to a container whose PID 1 is gunicorn) and to the
whole process group (as dumb-init's default mode and ``tini -g`` send it).

With ``DOCKERFLOW_DRAIN_SECONDS``, every worker keeps serving for the drain after SIGTERM:
``/__heartbeat__`` answers 503 (``dockerflow.health.E015``) on new connections and on a kept-alive
one, ``/__lbheartbeat__`` stays 200, a slow request in flight completes, and gunicorn exits with
0 once the drain and the requests are over. In the group case each worker gets SIGTERM twice (its
own, then the arbiter's): the second must change nothing.

Without ``--preload`` the workers load the app themselves, so ``init_app`` chains to their
handler; with it, the app is built in the arbiter before the workers' handlers exist, and the
``post_worker_init`` hook of ``apps/drain_gunicorn_conf.py`` makes SIGTERM drain
(``DRAIN_TEST_HOOK=1``). Nothing patches gevent early: its worker patches after the fork, the
app already built. The test sends SIGTERM once every worker has written ``WORKER_READY`` from
that hook: a worker still loading the app when SIGTERM comes stops at once, drain or not.

The arbiter and group cases of one configuration run at the same time, each with its own
server. ``DRAIN_TEST_MATRIX=diagonal`` (set by ``make test-pythons`` and
``make test-min``) runs one configuration per worker class only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dockerflow import health

from .gunicorn_helpers import APPS, START_TIMEOUT, Gunicorn, get, start_gunicorn

#: DOCKERFLOW_DRAIN_SECONDS of the servers.
DRAIN = 1.2
#: gunicorn's graceful_timeout: the drain plus the slow request must fit in it.
GRACEFUL = 5
#: The slow request is in flight when SIGTERM comes and still going when the drain ends.
SLOW = DRAIN + 0.3
#: The issue's bound: a heartbeat sent this long after SIGTERM already answers 503.
FIRST_503_WITHIN = 0.3
#: Probes stop this long before the drain ends (after it, new connections get no answer).
PROBE_MARGIN = 0.3
#: Extra seconds gunicorn may take to exit on a loaded machine.
EXIT_SLACK = 3.0
WORKERS = 2

#: gunicorn arguments of each worker class.
WORKER_CLASSES = {
    "sync": (),
    "gthread": ("-k", "gthread", "--threads", "4"),
    "gevent": ("-k", "gevent", "--worker-connections", "100"),
}
FULL = [(worker, preload) for worker in WORKER_CLASSES for preload in (False, True)]
DIAGONAL = [("sync", False), ("gthread", True), ("gevent", True)]
CONFIGS = DIAGONAL if os.environ.get("DRAIN_TEST_MATRIX") == "diagonal" else FULL


@dataclass(frozen=True)
class Probe:
    """One probe sent during the drain: when (seconds after SIGTERM), what it got."""

    sent: float
    path: str
    status: int | str
    body: Any


@dataclass
class Outcome:
    """What one server did from SIGTERM on."""

    server: Gunicorn
    probes: list[Probe] = field(default_factory=list)
    kept: tuple[int, Any] = (0, None)
    slow: dict[str, Any] = field(default_factory=dict)
    exited: float = 0.0
    output: str = ""


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


def drain_once(directory: Path, worker: str, preload: bool, group: bool) -> Outcome:
    """Start gunicorn, send SIGTERM with a slow request in flight, probe until the drain ends."""
    directory.mkdir()
    server = start_gunicorn(
        directory,
        "drain_app:create_app()",
        [
            *("-w", str(WORKERS), *WORKER_CLASSES[worker], "--graceful-timeout", str(GRACEFUL)),
            *(("--preload",) if preload else ()),
            *("-c", str(APPS / "drain_gunicorn_conf.py")),
        ],
        {
            "DOCKERFLOW_DRAIN_SECONDS": str(DRAIN),
            "DRAIN_TEST_HOOK": "1" if preload else "0",
        },
        new_session=True,
    )
    outcome = Outcome(server)
    try:
        server.wait_until_serving(time.monotonic() + START_TIMEOUT, "/__heartbeat__")
        wait_for_output(server, "WORKER_READY", time.monotonic() + START_TIMEOUT, WORKERS)
        assert get(server.port, "/__heartbeat__")[0] == 200
        kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        assert keepalive_heartbeat(kept)[0] == 200

        def slow_request() -> None:
            outcome.slow["result"] = get(
                server.port, f"/slow?seconds={SLOW}", timeout=SLOW + GRACEFUL + EXIT_SLACK
            )

        slow_thread = threading.Thread(target=slow_request)
        slow_thread.start()
        wait_for_output(server, "SLOW_STARTED", time.monotonic() + 10)

        t0 = time.monotonic()
        if group:
            os.killpg(server.process.pid, signal.SIGTERM)
        else:
            server.process.send_signal(signal.SIGTERM)
        while time.monotonic() - t0 < DRAIN - PROBE_MARGIN:
            outcome.probes.append(probe(server.port, "/__heartbeat__", t0))
            outcome.probes.append(probe(server.port, "/__lbheartbeat__", t0))
        outcome.kept = keepalive_heartbeat(kept)  # before the drain ends
        kept.close()

        server.process.wait(timeout=DRAIN + GRACEFUL + EXIT_SLACK)
        outcome.exited = time.monotonic() - t0
        slow_thread.join(10)
    finally:
        server.stop()
        if group:  # workers a failed test left behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
    outcome.output = server.output
    return outcome


def check(outcome: Outcome, name: str) -> None:
    heartbeats = [p for p in outcome.probes if p.path == "/__heartbeat__"]
    drained = [p for p in heartbeats if p.status == 503]
    assert drained, (name, heartbeats, outcome.output)
    first_503 = min(p.sent for p in drained)
    print(
        f"\n{name}: first 503 sent {first_503 * 1000:.0f} ms after SIGTERM; "
        f"{len(heartbeats)} heartbeats during the drain; gunicorn exited after "
        f"{outcome.exited:.2f}s"
    )
    assert first_503 <= FIRST_503_WITHIN, name
    assert [p for p in heartbeats if p.sent >= FIRST_503_WITHIN and p.status != 503] == [], name
    assert {p.status for p in heartbeats} <= {200, 503}, (name, heartbeats)
    body = drained[0].body
    assert body["checks"] == {"draining": "error"}
    assert "(SIGTERM)" in body["details"]["draining"]["messages"][health.ERROR_DRAINING]
    lbheartbeats = {p.status for p in outcome.probes if p.path == "/__lbheartbeat__"}
    assert lbheartbeats == {200}, (name, outcome.probes)
    if not name.startswith("sync"):  # a sync worker closes every connection after its response
        assert outcome.kept[0] == 503, (name, outcome.kept)
    assert outcome.slow["result"][0] == 200, (name, outcome.slow)
    assert outcome.slow["result"][1]["slept"] >= SLOW
    assert outcome.server.process.returncode == 0, (name, outcome.output)
    assert DRAIN <= outcome.exited <= DRAIN + GRACEFUL + EXIT_SLACK, name
    # One line per worker at SIGTERM, none at the repeated one, no early end.
    assert outcome.output.lower().count("draining") == WORKERS, (name, outcome.output)
    assert outcome.output.count("Draining (SIGTERM) for") == WORKERS, (name, outcome.output)
    assert "ended early" not in outcome.output, (name, outcome.output)
    assert outcome.server.forbidden_output() == [], (name, outcome.output)
    assert "has no effect" not in outcome.output, (name, outcome.output)


@pytest.mark.parametrize(("worker", "preload"), CONFIGS)
def test_sigterm_to_the_arbiter_or_the_group_drains_every_worker_then_gunicorn_stops(
    tmp_path: Path, worker: str, preload: bool
) -> None:
    name = f"{worker}{' --preload' if preload else ''}"
    with ThreadPoolExecutor(2) as pool:
        futures = {
            target: pool.submit(drain_once, tmp_path / target, worker, preload, target == "group")
            for target in ("arbiter", "group")
        }
        outcomes = {target: future.result() for target, future in futures.items()}
    for target, outcome in outcomes.items():
        check(outcome, f"{name}, SIGTERM to the {target}")


def test_a_unix_socket_that_the_arbiter_removes_at_sigterm_is_named_at_start_up(
    tmp_path: Path,
) -> None:
    path = tmp_path / "app.sock"
    server = start_gunicorn(
        tmp_path,
        "drain_app:create_app()",
        ["-w", "1", "--bind", f"unix:{path}", "-c", str(APPS / "drain_gunicorn_conf.py")],
        {"DOCKERFLOW_DRAIN_SECONDS": "1"},
    )
    try:
        wait_for_output(server, "WORKER_READY", time.monotonic() + START_TIMEOUT)
        assert path.exists()
        server.process.send_signal(signal.SIGTERM)
        # What the warning says: the path is gone while the worker still drains.
        deadline = time.monotonic() + 10
        while path.exists():
            assert time.monotonic() < deadline, server.output
            time.sleep(0.01)
        assert server.process.poll() is None
        server.process.wait(timeout=1 + GRACEFUL + EXIT_SLACK)
    finally:
        server.stop()
    (line,) = [line for line in server.output.splitlines() if "Unix socket" in line]
    assert f"gunicorn listens on the Unix socket {path}: its arbiter removes that path" in line
    assert "Bind a TCP address" in line
    # The TCP bind of the same server is not named.
    assert server.output.count("removes that path") == 1
