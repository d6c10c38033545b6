"""Helpers for the built-in checks' tests: server URLs, counting connections, fault servers."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from dockerflow.engine import Check, Engine, Report
from dockerflow.health import CheckData

POSTGRES_URL = os.environ.get(
    "DOCKERFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("DOCKERFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ALEMBIC_APP = Path(__file__).parent / "alembic_app"

#: A password that must never show up in a report or a log line.
SECRET = "s3cr3t-pw"

#: Seconds of slack allowed on top of a check's timeout before the heartbeat answers. The
#: faults these bounds tell apart hang for far longer (a black hole never answers); on a
#: machine whose cores are all busy, an answer can lag its timeout by most of a second.
SLACK = 1.5

#: The timeout of a check whose test is about the server's answer (healthy, a wrong password, a
#: dropped connection...), not about timing: a shared server on a loaded machine can take more
#: than the engine's 1 s to answer. Tests about timeouts use the engine's own.
ANSWER = 10.0


def unreachable(what: str, variable: str, url: str, how: str, error: BaseException) -> None:
    """Skip the test because a server is down, or fail it under ``CI=true``."""
    message = f"{what} not reachable at {url}; set {variable} or start one: {how} ({error})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def messages_of(result: Any) -> list[Any]:
    """Return the check messages of what a check returned, its values (``CheckData``) left out."""
    return [item for item in result if not isinstance(item, CheckData)]


def url_with(url: str, **parts: Any) -> str:
    """Return ``url`` with some parts replaced (``port=``, ``database=``, ``drivername=``)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(**parts).render_as_string(hide_password=False)


def asyncpg_dsn(url: str) -> str:
    """Return a SQLAlchemy URL as a DSN for asyncpg (no ``+driver``)."""
    return url_with(url, drivername="postgresql")


def unique_name(prefix: str = "dockerflow-test") -> str:
    """Return a name no other test (or test run) uses, for application_name and client names."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def count_backends(postgres_url: str, application_name: str) -> int:
    """Return how many server connections carry ``application_name`` right now."""
    import psycopg2

    with contextlib.closing(psycopg2.connect(postgres_url)) as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        )
        (count,) = cursor.fetchone()
    return int(count)


def running_query(postgres_url: str, application_name: str, containing: str) -> bool:
    """Whether a server connection with ``application_name`` is running a query with
    ``containing`` in its text right now."""
    import psycopg2

    with contextlib.closing(psycopg2.connect(postgres_url)) as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND state = 'active' AND position(%s in query) > 0",
            (application_name, containing),
        )
        (count,) = cursor.fetchone()
    return int(count) > 0


def terminate_backends(postgres_url: str, application_name: str) -> int:
    """Kill the server connections that carry ``application_name``; return how many."""
    import psycopg2

    with contextlib.closing(psycopg2.connect(postgres_url)) as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (application_name,),
        )
        (count,) = cursor.fetchone()
    return int(count)


def timed(engine: Engine, *checks: Check) -> tuple[Report, float]:
    """Run a heartbeat of ``checks`` and return the report and how long it took."""
    started = time.monotonic()
    report = engine.run_sync(checks)
    return report, time.monotonic() - started


def only_message(report: Report, name: str) -> tuple[str, str]:
    """Return the one ``(id, text)`` message that check ``name`` gave."""
    messages = report.results[name].messages
    assert len(messages) == 1, messages
    return next(iter(messages.items()))


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {timeout}s: {predicate}")
        time.sleep(0.05)


def pointed_at(url: str, port: int) -> str:
    """Return ``url`` (a SQLAlchemy or Redis URL) with its host and port ``127.0.0.1:port``."""
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, _hostport = authority.rpartition("@")
    return f"{scheme}://{userinfo}{at}127.0.0.1:{port}{slash}{path}"


class BlackHole:
    """A local server that accepts connections and never answers, until :meth:`close`."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self.port = int(self._listener.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="black-hole", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.accepted.append(connection)

    def close(self) -> None:
        """Stop listening and hang up on every client, so whatever waits on them wakes up."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._listener.close()
        for connection in self.accepted:
            connection.close()


class PrivateRedis:
    """A redis-server subprocess of a test's own, on a free port, that the test may stop."""

    def __init__(self, port: int, *args: str) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._args = args
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
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
                *self._args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            if time.monotonic() > deadline:
                pytest.fail("the private redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None


class Proxy:
    """A local TCP proxy to a real server, that a test switches between forwarding and silence.

    Forwarding, each connection is piped to the server. :meth:`black_hole` makes the server go
    silent: new connections are accepted and never answered, and connections piped so far stop
    carrying data both ways, for good, as if their peer had vanished. :meth:`forward` pipes new
    connections again; the silenced ones stay silent, as sockets whose peer is gone do. Nothing
    is closed until :meth:`close`, so only a client's own timeouts get it out of a silent socket.
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self._upstream = (host, port)
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._forwarding = True
        self._generation = 0
        self._peers: dict[socket.socket, tuple[socket.socket, int]] = {}
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="proxy", daemon=True)
        self._thread.start()

    def url(self, url: str) -> str:
        """Return ``url`` (a SQLAlchemy or Redis URL) pointed at this proxy."""
        return pointed_at(url, self.port)

    def black_hole(self) -> None:
        """Stop answering: new connections hang, piped ones go silent for good."""
        with self._lock:
            self._forwarding = False
            self._generation += 1

    def forward(self) -> None:
        """Pipe new connections to the server again."""
        with self._lock:
            self._forwarding = True

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.05):
                sock = cast(socket.socket, key.fileobj)
                if sock is self._listener:
                    self._accept()
                else:
                    self._pipe(sock)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        with self._lock:
            forwarding, generation = self._forwarding, self._generation
        if not forwarding:
            self._held.append(client)
            return
        try:
            server = socket.create_connection(self._upstream, timeout=5)
        except OSError:
            client.close()
            return
        for one, other in ((client, server), (server, client)):
            one.setblocking(True)
            self._peers[one] = (other, generation)
            self._selector.register(one, selectors.EVENT_READ)

    def _pipe(self, sock: socket.socket) -> None:
        entry = self._peers.get(sock)
        if entry is None:
            return  # closed with its peer earlier in the same batch of events
        other, generation = entry
        with self._lock:
            silenced = generation != self._generation
        if silenced:
            # Gone silent: never read from either side again, never close them.
            for one in (sock, other):
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(one)
                self._held.append(one)
            return
        try:
            data = sock.recv(65536)
            if data:
                other.sendall(data)
                return
        except OSError:
            pass
        for one in (sock, other):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(one)
            self._peers.pop(one, None)
            one.close()

    def close(self) -> None:
        """Stop the proxy and close every socket it holds."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._selector.close()
        self._listener.close()
        for one in [*self._peers, *self._held]:
            one.close()


class Gate:
    """A local TCP proxy to a real server that can hold the server's answers back.

    Requests always reach the server; while the gate is shut, what the server answers waits in
    the proxy until :meth:`open`. :meth:`wait_for` waits until the proxy has seen a given number
    of connections and bytes from clients, so that a test knows a request is on its way without
    sleeping.
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self._upstream = (host, port)
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._open = threading.Event()
        self._open.set()
        self._seen = threading.Condition()
        self.connections = 0
        self.requests: list[bytes] = []
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name="gate", daemon=True).start()

    def url(self, url: str) -> str:
        """Return ``url`` (a SQLAlchemy or Redis URL) pointed at this proxy."""
        return pointed_at(url, self.port)

    def shut(self) -> None:
        """Hold the server's answers back from now on."""
        self._open.clear()

    def open(self) -> None:
        """Let the server's answers through, those held back first."""
        self._open.set()

    def wait_for(
        self, *, connections: int = 0, containing: bytes = b"", count: int = 1, timeout: float = 10
    ) -> None:
        """Wait until at least ``connections`` were accepted and ``count`` client sends held
        ``containing``; fail after ``timeout`` seconds."""

        def seen() -> bool:
            sends = sum(containing in data for data in self.requests)
            return self.connections >= connections and (not containing or sends >= count)

        with self._seen:
            if not self._seen.wait_for(seen, timeout):
                pytest.fail(f"the gate did not see {connections} connections / {containing!r}")

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream, timeout=5)
            server.settimeout(None)
            self._sockets += [client, server]
            with self._seen:
                self.connections += 1
                self._seen.notify_all()
            for source, sink, upstream in ((client, server, True), (server, client, False)):
                threading.Thread(
                    target=self._pipe, args=(source, sink, upstream), daemon=True
                ).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            if upstream:
                with self._seen:
                    self.requests.append(data)
                    self._seen.notify_all()
            else:
                self._open.wait()
            try:
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        """Stop the proxy and close every socket it holds."""
        if self._closed:
            return
        self._closed = True
        self._open.set()
        self._listener.close()
        for one in self._sockets:
            with contextlib.suppress(OSError):
                one.close()
