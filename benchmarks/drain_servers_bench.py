"""What the drain does under servers whose SIGTERM is Python's default action: waitress and
``flask run`` (Werkzeug's development server).

Run with ``python benchmarks/drain_servers_bench.py`` (waitress is measured when it is
installed: ``pip install waitress``). Each server serves an app whose factory calls
``drain_on_sigterm()``, as the probes guide says to; a request of ``DRAIN + 1`` seconds is in
flight when SIGTERM comes, and a heartbeat and an lbheartbeat are sent on new connections every
20 ms until the process exits. Printed per server: when the first 503 was sent, what the probes
got during the drain, what became of the slow request, and when and how the process ended.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

APP = """
import time
from flask import Flask, jsonify, request
from dockerflow.flask import Dockerflow


def create_app():
    app = Flask(__name__)
    dockerflow = Dockerflow(app)
    dockerflow.drain_on_sigterm({drain})

    @app.get("/slow")
    def slow():
        time.sleep(float(request.args["seconds"]))
        return jsonify(done=True)

    return app
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str, timeout: float) -> int | str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError as exc:
        return type(exc).__name__
    finally:
        connection.close()


def measure(name: str, command: list[str], port: int, directory: Path, drain: float) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKERFLOW_")}
    env["PYTHONPATH"] = str(directory)
    log = (directory / f"{name}.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while get(port, "/__lbheartbeat__", 1.0) != 200:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"{name} did not start: {(directory / f'{name}.log').read_text()}")
            time.sleep(0.1)
        slow: dict[str, Any] = {}
        seconds = drain + 1

        def slow_request() -> None:
            slow["status"] = get(port, f"/slow?seconds={seconds}", seconds + 10)
            slow["at"] = time.monotonic()

        thread = threading.Thread(target=slow_request)
        thread.start()
        time.sleep(0.3)  # the slow request is in flight (a figure, not a test)
        t0 = time.monotonic()
        process.send_signal(signal.SIGTERM)
        heartbeats: list[tuple[float, int | str]] = []
        lbheartbeats: Counter[int | str] = Counter()
        while process.poll() is None and time.monotonic() - t0 < drain + 10:
            heartbeats.append((time.monotonic() - t0, get(port, "/__heartbeat__", 1.0)))
            lbheartbeats[get(port, "/__lbheartbeat__", 1.0)] += 1
            time.sleep(0.02)
        process.wait(10)
        exited = time.monotonic() - t0
        thread.join(seconds + 10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        log.close()
    first_503 = min((sent for sent, status in heartbeats if status == 503), default=None)
    during = Counter(status for sent, status in heartbeats if sent < drain)
    print(f"{name}:")
    print(
        "  first 503 sent "
        + (f"{first_503 * 1000:.0f} ms" if first_503 is not None else "never")
        + " after SIGTERM"
    )
    print(f"  /__heartbeat__ during the drain: {dict(during)}")
    print(f"  /__lbheartbeat__ until the exit: {dict(lbheartbeats)}")
    print(
        f"  slow request ({seconds:g}s, in flight at SIGTERM): {slow.get('status')}"
        + (f", answered {slow['at'] - t0:.2f}s after SIGTERM" if "at" in slow else "")
    )
    print(f"  process exited {exited:.2f}s after SIGTERM, return code {process.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drain", type=float, default=1.5, help="drain seconds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "bench_drain_app.py").write_text(APP.format(drain=args.drain))
        if importlib.util.find_spec("waitress") is not None:
            port = free_port()
            command = [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}"]
            measure(
                "waitress",
                [*command, "--call", "bench_drain_app:create_app"],
                port,
                directory,
                args.drain,
            )
        else:
            print("waitress: not installed (pip install waitress)")
        port = free_port()
        with contextlib.suppress(KeyboardInterrupt):
            measure(
                "flask run",
                [
                    *(sys.executable, "-m", "flask", "--app", "bench_drain_app:create_app()"),
                    *("run", "--no-reload", "--port", str(port)),
                ],
                port,
                directory,
                args.drain,
            )


if __name__ == "__main__":
    main()
