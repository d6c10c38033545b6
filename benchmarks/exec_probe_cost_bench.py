"""What one exec probe costs: CPU-seconds of ``flask dockerflow heartbeat`` against an HTTP probe.

Run with ``.venv/bin/python benchmarks/exec_probe_cost_bench.py`` from the repository root.

An exec probe (Docker ``HEALTHCHECK CMD``, a Kubernetes ``exec`` probe) starts a new Python process
each time: the interpreter, the imports of Flask, SQLAlchemy and Alembic, the app factory, then the
checks. An HTTP probe asks the server that is already running. This script measures both on the
demo app (examples/demo, its database migrated first, as in its container):

``python -c pass``
    The interpreter starting and exiting: the floor of any exec probe in Python.
``flask dockerflow heartbeat``
    The exec probe of examples/Dockerfile's ``HEALTHCHECK``, run ``--runs`` times one after the
    other. CPU is user + system time of the finished children, from
    ``resource.getrusage(RUSAGE_CHILDREN)`` before and after each run.
``GET /__heartbeat__``
    The same checks through a running gunicorn worker (examples/gunicorn.conf.py, one worker):
    the worker's user + system time from ``/proc/<pid>/stat`` before and after ``--runs``
    requests, divided by the number of requests. The HTTP client's own cost (the kubelet or a
    load balancer, which does not start a process per probe) is not counted.

The demo's ``slow_dependency`` check sleeps 0.2 s, which adds wall time but no CPU time.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APP = "examples.demo.app:create_app"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _env(data_dir: str, port: int = 0) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DOCKERFLOW_", "DEMO_"))
        and key not in {"REDIS_URL", "DATABASE_URL", "WEB_CONCURRENCY"}
    }
    # FLASK_APP rather than --app: the same command on Flask 2.0 and 2.1.
    env.update(
        DEMO_DATA_DIR=data_dir,
        FLASK_APP=APP,
        PORT=str(port),
        PYTHONPATH=str(REPO),
        XDG_RUNTIME_DIR=data_dir,
    )
    return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_exec(
    command: list[str], env: dict[str, str], runs: int
) -> tuple[list[float], list[float]]:
    """Run ``command`` ``runs`` times; return the CPU-seconds and wall seconds of each run."""
    cpu, wall = [], []
    for _ in range(runs):
        before_cpu, before_wall = _children_cpu(), time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, check=False)
        wall.append(time.perf_counter() - before_wall)
        cpu.append(_children_cpu() - before_cpu)
        if done.returncode != 0:
            sys.exit(f"{' '.join(command)} exited with {done.returncode}:\n{done.stderr.decode()}")
    return cpu, wall


def _process_cpu(pid: int) -> float:
    # Fields 14 and 15 of /proc/<pid>/stat (utime, stime), after the parenthesised command name.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _worker_pid(master: int, deadline: float) -> int:
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    sys.exit("gunicorn started no worker")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure_http(env: dict[str, str], runs: int) -> tuple[float, list[float]]:
    """Serve the demo under gunicorn; return the worker's CPU-seconds per heartbeat and walls."""
    port = int(env["PORT"])
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "examples/gunicorn.conf.py", f"{APP}()"],
        cwd=REPO,
        env={**env, "WEB_CONCURRENCY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/__heartbeat__"
    try:
        deadline = time.monotonic() + 30
        worker = _worker_pid(server.pid, deadline)
        while True:
            try:
                get(url)
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit("gunicorn did not answer")
                time.sleep(0.1)
        for _ in range(5):  # warm-up: the loop thread, the database pools
            get(url)
        walls = []
        before = _process_cpu(worker)
        for _ in range(runs):
            started = time.perf_counter()
            get(url)
            walls.append(time.perf_counter() - started)
        return (_process_cpu(worker) - before) / runs, walls
    finally:
        server.terminate()
        server.wait(timeout=15)


def get(url: str) -> None:
    """GET ``url`` and require 200."""
    with urllib.request.urlopen(url, timeout=10) as response:
        response.read()
        if response.status != 200:
            sys.exit(f"{url} answered {response.status}")


def _row(name: str, cpu: list[float] | float, wall: list[float]) -> str:
    median: Callable[[list[float]], float] = statistics.median
    cpu_text = f"{median(cpu):.3f}" if isinstance(cpu, list) else f"{cpu:.4f}"
    return f"| {name:<32} | {cpu_text:>18} | {median(wall):>15.3f} |"


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=20, help="probes of each kind (default 20)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="exec-probe-bench-") as data_dir:
        env = _env(data_dir)
        flask = [sys.executable, "-m", "flask"]
        subprocess.run(
            [*flask, "db", "upgrade"], cwd=REPO, env=env, capture_output=True, check=True
        )

        floor_cpu, floor_wall = measure_exec([sys.executable, "-c", "pass"], env, args.runs)
        probe_cpu, probe_wall = measure_exec([*flask, "dockerflow", "heartbeat"], env, args.runs)
        http_cpu, http_wall = measure_http(_env(data_dir, _free_port()), args.runs)

    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {args.runs} runs each; "
        "medians (HTTP CPU: the mean over the runs)\n"
    )
    print(f"| {'probe':<32} | {'CPU-seconds/probe':>18} | {'wall seconds':>15} |")
    print(f"|{'-' * 34}|{'-' * 20}|{'-' * 17}|")
    print(_row("python -c pass", floor_cpu, floor_wall))
    print(_row("flask dockerflow heartbeat", probe_cpu, probe_wall))
    print(_row("GET /__heartbeat__ (gunicorn)", http_cpu, http_wall))
    ratio = statistics.median(probe_cpu) / http_cpu if http_cpu else float("inf")
    print(f"\nOne exec probe costs {ratio:.0f}x the server CPU of one HTTP heartbeat.")
    per_day = statistics.median(probe_cpu) * 86400 / 10
    print(f"Every 10 s, exec probes cost {per_day:.0f} CPU-seconds a day per container.")


if __name__ == "__main__":
    main()
