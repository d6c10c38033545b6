"""Helpers for the production tests: real gunicorn servers, plain HTTP, reachable servers.

Kept out of a ``conftest.py`` (another module owns that file): tests call these functions, or
wrap them in fixtures of their own.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from integrations.helpers import POSTGRES_URL, REDIS_URL, unreachable

REPO = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().parent / "apps"
#: gunicorn of the interpreter running the tests (each Python in CI has its own venv).
GUNICORN = (sys.executable, "-m", "gunicorn")
#: Seconds gunicorn may take to answer its first request.
START_TIMEOUT = 20.0
#: What must never show up in a server's output.
FORBIDDEN_OUTPUT = ("attached to a different loop", "Traceback", "Future <")


def free_port() -> int:
    """Return a local TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_url() -> str:
    """Return the shared PostgreSQL server's URL, or skip (fail under ``CI=true``)."""
    import psycopg2

    try:
        psycopg2.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg2.Error as exc:
        unreachable(
            "PostgreSQL",
            "DOCKERFLOW_TEST_POSTGRES_URL",
            POSTGRES_URL,
            "pg_ctlcluster 15 main start",
            exc,
        )
    return POSTGRES_URL


def redis_url() -> str:
    """Return the shared Redis server's URL, or skip (fail under ``CI=true``)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        unreachable(
            "Redis",
            "DOCKERFLOW_TEST_REDIS_URL",
            REDIS_URL,
            "redis-server --daemonize yes --save ''",
            exc,
        )
    finally:
        client.close()
    return REDIS_URL


def get(port: int, path: str, *, timeout: float = 10.0) -> tuple[int, Any]:
    """GET ``path`` on a new connection (so the kernel may hand it to any worker).

    :returns: the status and the JSON body (``None`` if the body is not JSON).
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    return response.status, body


@dataclass
class Gunicorn:
    """A gunicorn server run for a test, with its output in files of its own directory."""

    port: int
    process: subprocess.Popen[bytes]
    directory: Path
    files: list[IO[bytes]] = field(default_factory=list)

    @property
    def output(self) -> str:
        """Everything the arbiter and its workers wrote so far, stderr then stdout."""
        return "\n".join(
            (self.directory / name).read_text(errors="replace")
            for name in ("stderr.log", "stdout.log")
        )

    def wait_until_serving(self, deadline: float, path: str = "/__lbheartbeat__") -> None:
        """Poll ``path`` until it answers 200; fail at the monotonic ``deadline``."""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"gunicorn exited with {self.process.returncode}:\n{self.output}")
            with contextlib.suppress(OSError):
                if get(self.port, path, timeout=1.0)[0] == 200:
                    return
            time.sleep(0.1)
        pytest.fail(f"gunicorn did not answer within {START_TIMEOUT:g}s:\n{self.output}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if gunicorn has not exited within 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        for handle in self.files:
            handle.close()
        self.files.clear()

    def forbidden_output(self) -> list[str]:
        """Return the lines of the output that name a loop mix-up or carry a traceback."""
        return [
            line
            for line in self.output.splitlines()
            if any(marker in line for marker in FORBIDDEN_OUTPUT)
        ]


def start_gunicorn(
    directory: Path,
    app: str,
    args: Sequence[str],
    env: dict[str, str],
    *,
    python_path: Path = APPS,
    new_session: bool = False,
) -> Gunicorn:
    """Start ``gunicorn app`` on a free port; its output goes to files in ``directory``.

    :param app: the application, such as ``"fork_app:create_app()"``.
    :param args: more gunicorn arguments (``--preload``, ``-w 2``, ``-k gthread``...).
    :param env: variables added to the environment, without the caller's ``DOCKERFLOW_*``.
    :param python_path: where gunicorn looks for the application's module.
    :param new_session: start gunicorn in a session (and process group) of its own, which
        ``os.killpg(server.process.pid, sig)`` signals as a whole, as dumb-init does.
    """
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKERFLOW_")}
    child_env.update(
        # gunicorn >= 25 opens a control socket there; each instance gets its own.
        XDG_RUNTIME_DIR=str(directory),
        PYTHONUNBUFFERED="1",
        **env,
    )
    stdout = (directory / "stdout.log").open("wb")
    stderr = (directory / "stderr.log").open("wb")
    process = subprocess.Popen(
        [
            *GUNICORN,
            "--bind",
            f"127.0.0.1:{port}",
            "--pythonpath",
            str(python_path),
            "--graceful-timeout",
            "3",
            *args,
            app,
        ],
        cwd=REPO,
        env=child_env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=new_session,
    )
    return Gunicorn(port, process, directory, [stdout, stderr])
