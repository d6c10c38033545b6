"""Serving the demo (examples/demo) for tests: ``flask db upgrade``, then gunicorn with
examples/gunicorn.conf.py on a free port, as ``make demo`` does."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO_CHECKS = {
    "check_database_connected",
    "check_migrations_applied",
    "event_loop_lag",
    "slow_dependency",
}
START_TIMEOUT = 20.0


@dataclass
class Demo:
    url: str
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    files: tuple[IO[bytes], ...]

    def stdout_lines(self) -> list[str]:
        return [line for line in self.stdout_path.read_text().splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(directory: Path, port: int, **extra: str) -> dict[str, str]:
    # Nothing from the caller's environment may add checks or change settings.
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"REDIS_URL", "DATABASE_URL", "WEB_CONCURRENCY"}
        and not key.startswith(("DOCKERFLOW_", "DEMO_"))
    }
    env.update(
        PORT=str(port),
        DEMO_DATA_DIR=str(directory / "data"),
        # gunicorn >= 25 opens a control socket there; each instance gets its own.
        XDG_RUNTIME_DIR=str(directory),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def migrate(directory: Path, **extra: str) -> None:
    # As `make demo` does: the migrations are a step of their own, before the server starts.
    # FLASK_APP rather than --app, which came in Flask 2.2 (make test-min runs Flask 2.0).
    subprocess.run(
        [sys.executable, "-m", "flask", "db", "upgrade"],
        cwd=REPO,
        env=child_env(directory, 0, FLASK_APP="examples.demo.app:create_app", **extra),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=START_TIMEOUT,
        check=True,
    )


def start(directory: Path, **extra: str) -> Demo:
    migrate(directory, **extra)
    port = free_port()
    stdout_path, stderr_path = directory / "stdout.log", directory / "stderr.log"
    stdout, stderr = stdout_path.open("wb"), stderr_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "examples/gunicorn.conf.py",
            "examples.demo.app:create_app()",
        ],
        cwd=REPO,
        env=child_env(directory, port, **extra),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
    )
    return Demo(f"http://127.0.0.1:{port}", process, stdout_path, stderr_path, (stdout, stderr))


def wait_until_serving(demo: Demo, deadline: float) -> None:
    while time.monotonic() < deadline:
        if demo.process.poll() is not None:
            pytest.fail(
                f"the demo exited with status {demo.process.returncode}:\n"
                f"{demo.stderr_path.read_text()}\n{demo.stdout_path.read_text()}"
            )
        try:
            status, _, _ = get(demo.url + "/__lbheartbeat__", timeout=1.0)
        except OSError:
            time.sleep(0.1)
            continue
        if status == 200:
            return
    pytest.fail(
        f"the demo did not answer within {START_TIMEOUT:g}s:\n{demo.stderr_path.read_text()}"
    )


def stop(demo: Demo) -> None:
    if demo.process.poll() is None:
        demo.process.terminate()
        try:
            demo.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            demo.process.kill()
            demo.process.wait(timeout=5)
    for handle in demo.files:
        handle.close()


def get_raw(url: str, *, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def get(
    url: str, *, timeout: float = 5.0, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """GET ``url``; return the status, the headers and the JSON body (``None`` if empty)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), _json_or_none(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), _json_or_none(exc.read())


def _json_or_none(raw: bytes) -> Any:
    return json.loads(raw) if raw else None
