"""Heartbeats while a dependency does not answer: how long each one holds its thread.

A local server that accepts connections and never answers stands in for PostgreSQL behind a
sync check bounded by its own socket timeout (80 % of the check's timeout, as the built-in
checks are) and behind an ``async def`` check cancelled at the timeout. ``--threads`` request
threads send heartbeats back to back for ``--seconds``; then the server "comes back" (a second
server that answers at once takes its place) and the time until a heartbeat reports ``ok`` is
measured. In-process (:meth:`Engine.run_sync`), no HTTP: the server-side view of issue 21's
soak. Run:

    .venv/bin/python benchmarks/slow_failure_bench.py [--timeout 1] [--threads 8] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import statistics
import threading
import time
from collections.abc import Callable

from dockerflow.engine import Check, Engine


class Dependency:
    """A TCP dependency that is either silent (accepts, never answers) or answers at once."""

    def __init__(self) -> None:
        self.silent = threading.Event()
        self.silent.set()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(256)
        self.port = int(self._listener.getsockname()[1])
        self._held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            connection, _ = self._listener.accept()
            if self.silent.is_set():
                self._held.append(connection)  # never answered
            else:
                connection.sendall(b"+PONG\r\n")
                connection.close()


def sync_check(dependency: Dependency, bound: float) -> Callable[[], list[str] | None]:
    def ping() -> None:
        with socket.create_connection(("127.0.0.1", dependency.port), timeout=bound) as s:
            s.settimeout(bound)
            if not s.recv(16):
                raise ConnectionError("closed")

    return ping


def async_check(dependency: Dependency) -> Callable[[], object]:
    async def ping() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", dependency.port)
        try:
            if not await reader.read(16):
                raise ConnectionError("closed")
        finally:
            writer.close()

    return ping


def run(kind: str, timeout: float, threads: int, seconds: float) -> None:
    dependency = Dependency()
    func = sync_check(dependency, 0.8 * timeout) if kind == "sync" else async_check(dependency)
    check = Check("dependency", func, timeout=timeout)
    engine = Engine()
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < stop:
            started = time.monotonic()
            report = engine.run_sync([check])
            took = time.monotonic() - started
            assert report.status == "error", report.as_dict()
            with lock:
                latencies.append(took)

    cpu = time.process_time()
    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    cpu = time.process_time() - cpu
    latencies.sort()
    mean = statistics.mean(latencies)
    dependency.silent.clear()
    back = time.monotonic()
    while engine.run_sync([check]).status != "ok":
        time.sleep(0.01)
    recovered = time.monotonic() - back
    engine.close()
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    print(
        f"| {kind} | {len(latencies) / seconds:.0f}/s | {statistics.median(latencies) * 1000:.1f} ms "
        f"| {p99 * 1000:.0f} ms | {latencies[-1] * 1000:.0f} ms | {mean * 1000:.1f} ms "
        f"| {cpu / len(latencies) * 1e6:.0f} µs | {recovered:.2f} s |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    logging.getLogger("dockerflow").addHandler(logging.NullHandler())
    logging.getLogger("dockerflow").propagate = False
    print(f"timeout {args.timeout:g} s, {args.threads} threads sending heartbeats back to back")
    print(
        "| check | heartbeats | p50 | p99 | max | thread held per heartbeat (mean) | CPU/heartbeat "
        "| ok after the dependency is back |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind in ("sync", "async"):
        run(kind, args.timeout, args.threads, args.seconds)


if __name__ == "__main__":
    main()
