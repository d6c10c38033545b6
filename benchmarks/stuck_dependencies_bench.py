"""Heartbeats against dependencies that all hang, through a real gunicorn gthread worker.

Run with ``.venv/bin/python benchmarks/stuck_dependencies_bench.py`` from the repository root.

Three black holes (local servers that accept connections and never answer) stand in for
PostgreSQL behind an ``AsyncpgCheck``, Redis behind ``redis.asyncio.Redis`` and PostgreSQL behind a
sync SQLAlchemy engine (psycopg2 without ``connect_timeout``: its connect blocks until the socket
closes); a fourth, sync check blocks on an event that is never set. ``DOCKERFLOW_CHECK_TIMEOUT`` is
0.3 s. One gunicorn gthread worker (``-w 1 -k gthread --threads 32``) serves 1000 heartbeats
from 32 concurrent clients, a new connection per request.

It prints the heartbeats' latency (p50, p99, max) and status, and the worker's threads and
resident memory (``/proc/<pid>/status``: ``Threads``, ``VmRSS``, ``VmHWM``) before the first
heartbeat, after the last, and at their peak (sampled every 20 ms; ``VmHWM`` is the kernel's own
peak). Targets: every heartbeat answers within timeout + 0.2 s with ``E011`` for each check; the
worker's threads stay at the count after the first heartbeats (one per stuck sync check), and its
memory does not grow with the number of heartbeats.

This module is also the app gunicorn serves (``stuck_dependencies_bench:create_app()``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
E011 = "dockerflow.health.E011"
#: Heartbeats after which the worker's threads and memory are measured a second time.
WARM_UP = 100
CHECKS = ("asyncpg", "check_redis_connected", "check_database_connected", "blocked_forever")


# -- the app, in the gunicorn worker --------------------------------------------------------------


def create_app() -> Any:
    """The app gunicorn serves: four checks, each stuck on a black hole or an event."""
    import redis.asyncio
    import sqlalchemy
    from flask import Flask, jsonify

    from dockerflow.flask import Dockerflow
    from dockerflow.integrations import AsyncpgCheck

    asyncpg_port, redis_port, db_port = json.loads(os.environ["STUCK_BENCH_PORTS"])
    app = Flask(__name__)
    app.config["DOCKERFLOW_CHECK_TIMEOUT"] = float(os.environ["STUCK_BENCH_TIMEOUT"])
    dockerflow = Dockerflow(
        app,
        db=sqlalchemy.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{db_port}/x"),
        redis=redis.asyncio.Redis(host="127.0.0.1", port=redis_port),
    )
    dockerflow.check(
        AsyncpgCheck(dsn=f"postgresql://postgres@127.0.0.1:{asyncpg_port}/x"), name="asyncpg"
    )
    dockerflow.check(threading.Event().wait, name="blocked_forever")

    @app.get("/_bench/pid")
    def pid() -> Any:
        return jsonify(pid=os.getpid())

    return app


# -- the driver -------------------------------------------------------------------------------------


class BlackHole:
    """Accepts connections and never answers, until :meth:`close`."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self._listener.settimeout(0.05)
        self.port = int(self._listener.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                self.accepted.append(self._listener.accept()[0])
            except TimeoutError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()
        for connection in self.accepted:
            connection.close()


def proc_status(pid: int) -> dict[str, int]:
    """Return ``Threads``, the ``Vm*`` sizes (kB) and the open file descriptors (``fds``) of
    process ``pid``."""
    out = {"fds": len(os.listdir(f"/proc/{pid}/fd"))}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "Threads" or key in {"VmRSS", "VmHWM"}:
            out[key] = int(value.split()[0])
    return out


class Sampler(threading.Thread):
    """Samples a process's thread count and resident memory every 20 ms, keeping the peaks."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = proc_status(pid)
        self._finished = threading.Event()

    def run(self) -> None:
        while not self._finished.wait(0.02):
            status = proc_status(self.pid)
            for key, value in status.items():
                self.peak[key] = max(self.peak[key], value)

    def stop(self) -> dict[str, int]:
        self._finished.set()
        self.join()
        return self.peak


def get(port: int, path: str, timeout: float = 30.0) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heartbeats", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--threads", type=int, default=32, help="gunicorn gthread threads")
    parser.add_argument("--timeout", type=float, default=0.3, help="DOCKERFLOW_CHECK_TIMEOUT")
    args = parser.parse_args(argv)

    holes = [BlackHole(), BlackHole(), BlackHole()]
    port = free_port()
    with (
        tempfile.TemporaryDirectory(prefix="dockerflow-stuck-") as tmp,
        Path(tmp, "gunicorn.log").open("wb") as log,
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKERFLOW_")}
        env.update(
            STUCK_BENCH_PORTS=json.dumps([hole.port for hole in holes]),
            STUCK_BENCH_TIMEOUT=str(args.timeout),
            XDG_RUNTIME_DIR=tmp,  # gunicorn >= 25 opens a control socket there
        )
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"),
                *("-w", "1", "-k", "gthread", "--threads", str(args.threads)),
                *("--pythonpath", str(HERE), "--graceful-timeout", "2"),
                "stuck_dependencies_bench:create_app()",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    body = get(port, "/_bench/pid", timeout=1)[1]
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        sys.exit(
                            f"gunicorn did not start:\n{Path(tmp, 'gunicorn.log').read_text()}"
                        )
                    time.sleep(0.1)
            pid = int(body["pid"])
            before = proc_status(pid)
            sampler = Sampler(pid)
            sampler.start()

            def heartbeat(_: int) -> tuple[float, int, Any]:
                started = time.monotonic()
                status, body = get(port, "/__heartbeat__")
                return time.monotonic() - started, status, body

            warm_up = min(WARM_UP, args.heartbeats)
            started = time.monotonic()
            with ThreadPoolExecutor(args.clients) as pool:
                results = list(pool.map(heartbeat, range(warm_up)))
                warmed = proc_status(pid)
                results += pool.map(heartbeat, range(args.heartbeats - warm_up))
            wall = time.monotonic() - started
            after = proc_status(pid)
            peak = sampler.stop()
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            for hole in holes:
                hole.close()

    latencies = sorted(elapsed for elapsed, _, _ in results)
    statuses = Counter(status for _, status, _ in results)
    all_e011 = sum(
        1
        for _, _, body in results
        if all(list(body["details"][name]["messages"]) == [E011] for name in CHECKS)
    )
    still_running = sum(
        1
        for _, _, body in results
        for name in ("check_database_connected", "blocked_forever")
        if "still running" in body["details"][name]["messages"].get(E011, "")
    )
    limit = args.timeout + 0.2
    over = sum(1 for elapsed in latencies if elapsed > limit)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]

    print(
        f"{args.heartbeats} heartbeats, {args.clients} clients, gunicorn -w 1 -k gthread "
        f"--threads {args.threads}, DOCKERFLOW_CHECK_TIMEOUT={args.timeout:g}, "
        f"{wall:.1f} s ({args.heartbeats / wall:.0f}/s)"
    )
    print()
    print(
        "| latency p50 | p99 | max | over timeout+0.2s | statuses | all 4 checks E011 | "
        "sync checks 'still running' |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {statistics.median(latencies) * 1000:.0f} ms | {p99 * 1000:.0f} ms "
        f"| {latencies[-1] * 1000:.0f} ms | {over} | {dict(statuses)} "
        f"| {all_e011}/{len(results)} | {still_running}/{2 * len(results)} |"
    )
    print()
    print(f"| worker (pid {pid}) | threads | open fds | VmRSS | |")
    print("|---|---|---|---|---|")
    print(
        f"| before the first heartbeat | {before['Threads']} | {before['fds']} | {before['VmRSS'] / 1024:.1f} MiB | |"
    )
    print(
        f"| after {warm_up} heartbeats | {warmed['Threads']} | {warmed['fds']} | {warmed['VmRSS'] / 1024:.1f} MiB | |"
    )
    print(
        f"| after {len(results)} heartbeats | {after['Threads']} | {after['fds']} | {after['VmRSS'] / 1024:.1f} MiB | |"
    )
    print(
        f"| peak (sampled; VmHWM) | {peak['Threads']} | {peak['fds']} | {peak['VmRSS'] / 1024:.1f} MiB "
        f"| VmHWM {after['VmHWM'] / 1024:.1f} MiB |"
    )
    print(
        f"\nthreads: 1 main + up to {args.threads} gthread request threads + 1 dockerflow-loop + "
        "1 per stuck sync check (2) + idle anyio workers"
    )
    print(
        f"target: every heartbeat within {limit:g} s with E011 for each check: "
        f"{'met' if over == 0 and all_e011 == len(results) else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
