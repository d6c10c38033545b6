"""Idle connections against gunicorn gthread 2 x 4: how many it takes before a probe waits.

Run with ``.venv/bin/python benchmarks/idle_connections_bench.py`` from the repository root
(``--help`` for the counts).

What runs: ``gunicorn -c examples/gunicorn.conf.py`` with 2 workers x 4 ``gthread`` threads (the
deployment docs/deployment.rst describes, ``worker_connections`` and ``keepalive`` left at
gunicorn's defaults, 1000 and 2 s; ``--keepalive`` changes the latter), bound to 127.0.0.1,
serving :func:`create_app`: a bare Flask app whose ``/__lbheartbeat__`` returns an empty 200 (no
dockerflow: this is about the server). For each
kind of idle client and each count, a fresh gunicorn; the script opens that many connections at
once, then sends 10 probes, 0.2 s apart, each on a new connection (``GET /__lbheartbeat__``,
``Connection: close``, given up after 12 s), while the idle connections stay open:

* ``kept-alive``: each idle connection sent one request (HTTP/1.1 keep-alive), read the answer
  (or waited 3 s for it), and then sends nothing (a client or proxy keeping a connection for
  later);
* ``silent``: each connection is opened and never sends a byte (a TCP health check or a
  proxy's pre-opened connection; a port scanner);
* ``partial``: each connection sends the start of a request, ``GET / HTTP/1.1\\r\\nHost: x\\r\\n``,
  and never the blank line that ends it (a slow client, or slowloris).

It prints, per kind and count, the probes' latencies (p50 and max) and how many took more than
1 s (Kubernetes' default probe ``timeoutSeconds``) or got no answer, and gunicorn's version.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROBES = 10
PROBE_EVERY = 0.2
PROBE_TIMEOUT = 12.0
KINDS = {
    "kept-alive": b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "silent": b"",
    "partial": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n",
}
DEFAULT_COUNTS = "0,4,8,16,64,200,1000"


def create_app() -> Any:
    """The app gunicorn serves: a bare Flask app with an empty ``/__lbheartbeat__``."""
    from flask import Flask

    app = Flask(__name__)

    @app.get("/__lbheartbeat__")
    def lbheartbeat() -> str:
        return ""

    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def probe(port: int) -> float:
    """Return the seconds one probe took, ``inf`` if it got no answer."""
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def exchange() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.read()
            if not head.startswith(b"HTTP/1.1 200"):
                raise ValueError(head[:40])
        finally:
            writer.close()

    try:
        await asyncio.wait_for(exchange(), PROBE_TIMEOUT)
    except (OSError, TimeoutError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
        return math.inf
    return loop.time() - started


#: Seconds a kept-alive connection waits for the answer to its one request; one that got none
#: (the server stopped accepting) stays open, idle, all the same.
FIRST_ANSWER_WAIT = 3.0


async def open_idle(port: int, kind: str, count: int) -> tuple[list[asyncio.StreamWriter], int]:
    """Open ``count`` connections of ``kind``, each left idle (see the module docstring).

    :returns: the connections, and how many of them got an answer to the request they sent.
    """

    async def answer(reader: asyncio.StreamReader) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        await reader.readexactly(length)

    async def one() -> tuple[asyncio.StreamWriter, bool]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if KINDS[kind]:
            writer.write(KINDS[kind])
            await writer.drain()
        if kind != "kept-alive":
            return writer, False
        try:
            await asyncio.wait_for(answer(reader), FIRST_ANSWER_WAIT)
        except (TimeoutError, asyncio.TimeoutError):
            return writer, False
        return writer, True

    opened: list[tuple[asyncio.StreamWriter, bool]] = []
    for start in range(0, count, 100):  # 100 at a time: the listen backlog stays small
        opened += await asyncio.gather(*(one() for _ in range(min(100, count - start))))
    return [writer for writer, _ in opened], sum(answered for _, answered in opened)


async def measure(port: int, kind: str, count: int) -> tuple[list[float], float, int]:
    """Open the idle connections, then probe; return the probes' seconds, the seconds the
    connections took to open, and how many kept-alive ones got their answer."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    writers, answered = await open_idle(port, kind, count)
    opened = loop.time() - started
    try:
        tasks = []
        for number in range(PROBES):
            tasks.append(asyncio.ensure_future(probe(port)))
            if number < PROBES - 1:
                await asyncio.sleep(PROBE_EVERY)
        return list(await asyncio.gather(*tasks)), opened, answered
    finally:
        for writer in writers:
            writer.close()


def start_gunicorn(directory: Path, port: int, keepalive: int | None) -> Any:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKERFLOW_")}
    env.update(XDG_RUNTIME_DIR=str(directory), PYTHONUNBUFFERED="1")
    command = [
        *(sys.executable, "-m", "gunicorn", "-c", str(REPO / "examples" / "gunicorn.conf.py")),
        *("--bind", f"127.0.0.1:{port}", "--workers", "2", "--worker-class", "gthread"),
        *("--threads", "4", "--pythonpath", str(HERE), "--no-control-socket"),
        *(() if keepalive is None else ("--keep-alive", str(keepalive))),
        "idle_connections_bench:create_app()",
    ]
    with (directory / "gunicorn.log").open("ab") as log:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


async def wait_until_serving(process: Any, port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        if await probe(port) < 1:
            return
        await asyncio.sleep(0.1)
    sys.exit("gunicorn did not start within 30 s")


def stop(process: Any) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cell(seconds: float) -> str:
    return "no answer" if math.isinf(seconds) else f"{seconds * 1000:.0f} ms"


async def main_async(kinds: Sequence[str], counts: Sequence[int], keepalive: int | None) -> None:
    started = time.monotonic()
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="idle-bench-") as tmp:
        for kind in kinds:
            for count in counts:
                port = free_port()
                process = start_gunicorn(Path(tmp), port, keepalive)
                try:
                    await wait_until_serving(process, port)
                    latencies, opened, answered = await measure(port, kind, count)
                finally:
                    stop(process)
                rows.append((kind, count, opened, answered, sorted(latencies)))
                print(f"{kind} x {count}: {[cell(x) for x in latencies]}", file=sys.stderr)
    print(
        f"\ngunicorn {importlib.metadata.version('gunicorn')} -c examples/gunicorn.conf.py -w 2 "
        f"-k gthread --threads 4, keepalive {keepalive or 'default (2 s)'}, worker_connections "
        "default (1000); "
        f"{PROBES} probes {PROBE_EVERY:g} s apart, each on a new connection, while the idle "
        f"connections stay open\n"
    )
    print(
        "| idle connections | count | opened in | first request answered | probe p50 "
        "| probe max | > 1 s | no answer |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind, count, opened, answered, latencies in rows:
        over = sum(1 for x in latencies if 1 < x < math.inf)
        lost = sum(1 for x in latencies if math.isinf(x))
        print(
            f"| {kind} | {count} | {opened:.2f} s "
            f"| {f'{answered}/{count}' if kind == 'kept-alive' else '-'} "
            f"| {cell(latencies[len(latencies) // 2])} "
            f"| {cell(latencies[-1])} | {over}/{len(latencies)} | {lost}/{len(latencies)} |"
        )
    end = os.getloadavg()
    print(
        f"\nload average (1 min): {load[0]:.2f} at start, {end[0]:.2f} at end; "
        f"whole run {time.monotonic() - started:.0f} s"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Measure every kind at every count and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"of {', '.join(KINDS)}")
    parser.add_argument("--counts", default=DEFAULT_COUNTS, help="idle connections, per run")
    parser.add_argument(
        "--keepalive", type=int, help="gunicorn's --keep-alive seconds (default: gunicorn's, 2)"
    )
    args = parser.parse_args(argv)
    kinds = [kind for kind in args.kinds.split(",") if kind]
    if not kinds or set(kinds) - set(KINDS):
        parser.error(f"--kinds takes a comma-separated subset of {', '.join(KINDS)}")
    with contextlib.suppress(KeyboardInterrupt):
        counts = [int(count) for count in args.counts.split(",")]
        asyncio.run(main_async(kinds, counts, args.keepalive))


if __name__ == "__main__":
    main()
