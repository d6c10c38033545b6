"""Fixtures for the production tests: private servers that tests may stop, and mozlog capture.

The shared PostgreSQL and Redis servers are never stopped: a test that takes a dependency down
gets a server of its own, on a free port. When one cannot be started the test is skipped, except
under ``CI=true``, where it fails.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockerflow.logging import JsonLogFormatter, RequestIdLogFilter

#: Loggers whose records the mozlog capture keeps (and keeps from propagating to pytest's).
CAPTURED_LOGGERS = ("request.summary", "dockerflow", "hostile")


def free_port() -> int:
    """Return a local TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unavailable(message: str) -> None:
    """Skip the test because a server cannot be had, or fail it under ``CI=true``."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class MozlogCapture:
    """The lines :class:`JsonLogFormatter` wrote for the captured loggers."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def lines(self) -> list[str]:
        """Return every line written so far."""
        return self.stream.getvalue().split("\n")[:-1]

    def clear(self) -> None:
        """Forget what was written so far."""
        self.stream.seek(0)
        self.stream.truncate()


@pytest.fixture
def mozlog() -> Iterator[MozlogCapture]:
    """Send the records of :data:`CAPTURED_LOGGERS` at INFO and up through a JsonLogFormatter
    with a RequestIdLogFilter, as a service's log config does; restored at teardown."""
    capture = MozlogCapture()
    handler = logging.StreamHandler(capture.stream)
    handler.setFormatter(JsonLogFormatter(logger_name="production-tests"))
    handler.addFilter(RequestIdLogFilter())
    saved = []
    for name in CAPTURED_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield capture
    finally:
        for logger, level, propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


class RestartableRedis:
    """A redis-server of the test's own on a fixed port, that may be stopped and started again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it accepts connections."""
        assert self._process is None, "already running"
        self._process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(self.port, timeout, self._process)

    def stop(self) -> None:
        """Stop the server (SIGTERM) and wait for it to exit."""
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


@pytest.fixture
def restartable_redis() -> Iterator[RestartableRedis]:
    """A running :class:`RestartableRedis` on a free port; stopped at teardown."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not on PATH; install redis-server")
    server = RestartableRedis(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


class PrivatePostgres:
    """A PostgreSQL cluster of the test session's own (``initdb`` in a temporary directory).

    As root, ``initdb`` and ``pg_ctl`` refuse to run: they run as the ``postgres`` OS user
    through ``runuser``, and the directory belongs to that user.
    """

    def __init__(self, directory: Path, port: int, as_user: list[str]) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self.port = port
        self._as_user = as_user
        self.running = False

    @property
    def dsn(self) -> str:
        """A ``postgresql://`` DSN for the ``postgres`` role (trust authentication)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as_user, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def init(self) -> subprocess.CompletedProcess[str]:
        return self._pg(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )

    def start(self) -> None:
        """Start the server on :attr:`port` and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=20"
        )
        done = self._pg(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start"
        )
        if done.returncode != 0:
            pytest.fail(f"pg_ctl start failed: {done.stderr}\n{self._log_text()}")
        self.running = True
        _wait_for_port(self.port, 10.0, None)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` ends sessions cleanly, ``immediate`` is a crash."""
        done = self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        if done.returncode != 0 and "Is server running?" not in done.stderr:
            pytest.fail(f"pg_ctl stop failed: {done.stderr}\n{self._log_text()}")
        self.running = False

    def _log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no server log)"


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running :class:`PrivatePostgres`; stopped (``-m immediate``) and removed at the end."""
    missing = [tool for tool in ("initdb", "pg_ctl") if shutil.which(tool) is None]
    if missing:
        unavailable(f"{' and '.join(missing)} not on PATH: install the PostgreSQL server")
    as_user: list[str] = []
    owner: tuple[int, int] | None = None
    if os.geteuid() == 0:
        import pwd

        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root and there is no 'postgres' OS user to run initdb as")
        if shutil.which("runuser") is None:
            unavailable("running as root and runuser is missing: cannot run initdb as postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
        owner = (entry.pw_uid, entry.pw_gid)
    # Short, so that the server's Unix socket path stays under the 107-byte limit.
    directory = Path(tempfile.mkdtemp(prefix="df-pg-"))
    try:
        if owner is not None:
            os.chown(directory, *owner)
        server = PrivatePostgres(directory, free_port(), as_user)
        done = server.init()
        if done.returncode != 0:
            unavailable(f"initdb failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        server.start()
        try:
            yield server
        finally:
            server.stop("immediate")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            pass
        if process is not None and process.poll() is not None:
            pytest.fail(f"the server on port {port} exited with {process.returncode}")
        if time.monotonic() > deadline:
            pytest.fail(f"nothing accepts connections on port {port} after {timeout:g}s")
        time.sleep(0.05)
