"""The database check costs the server one query per run, and still bounds it on the server.

Counted on the wire: a proxy between the check and the real PostgreSQL reads the client's side
of the protocol and counts the statements it executes: simple-query messages (``Q``, how
psycopg2 sends each statement, ``BEGIN`` and ``ROLLBACK`` included) and Execute messages
(``E``, psycopg 3's extended protocol, which prepares a statement run often).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy

from dockerflow.engine import Check, Engine
from dockerflow.integrations import database_check, release
from dockerflow.integrations.sqlalchemy import CheckEngine

from .helpers import url_with


class CountingProxy:
    """A TCP proxy to PostgreSQL that counts the query messages clients send through it."""

    def __init__(self, port: int) -> None:
        self._upstream = ("127.0.0.1", port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.queries: list[bytes] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            threading.Thread(target=self._client_side, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                end.close()

    def _client_side(self, client: socket.socket, server: socket.socket) -> None:
        buffer = b""
        # Extended protocol (psycopg 3): statements by name, and the one bound last.
        statements: dict[bytes, bytes] = {}
        bound = b"?"
        started = False  # the startup message has a length but no type byte
        try:
            while data := client.recv(65536):
                # Counted before it is passed on: by the time the server answers, it is in.
                buffer += data
                while True:
                    if not started:
                        if len(buffer) < 4:
                            break
                        (length,) = struct.unpack("!I", buffer[:4])
                        if len(buffer) < length:
                            break
                        buffer, started = buffer[length:], True
                        continue
                    if len(buffer) < 5:
                        break
                    kind = buffer[:1]
                    (length,) = struct.unpack("!I", buffer[1:5])
                    if len(buffer) < 1 + length:
                        break
                    fields = buffer[5 : 1 + length].split(b"\0")
                    if kind == b"Q":  # a simple query: its text
                        self._count(fields[0])
                    elif kind == b"P":  # Parse: a statement's name, then its text
                        statements[fields[0]] = fields[1]
                    elif kind == b"B":  # Bind: a portal's name, then its statement's name
                        bound = statements.get(fields[1], b"?")
                    elif kind == b"E":  # Execute the portal bound last
                        self._count(bound)
                    buffer = buffer[1 + length :]
                server.sendall(data)
        except OSError:
            pass
        finally:
            client.close()
            server.close()

    def _count(self, query: bytes) -> None:
        with self._lock:
            self.queries.append(query)

    def taken(self) -> list[bytes]:
        """Return the queries counted since the last call, and start counting again."""
        with self._lock:
            queries, self.queries = self.queries, []
        return queries

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[CountingProxy]:
    port = sqlalchemy.make_url(postgres_url).port or 5432
    counting = CountingProxy(port)
    yield counting
    counting.close()


@pytest.mark.postgres
@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_the_database_check_sends_one_query_per_run(
    engine: Engine, postgres_url: str, proxy: CountingProxy, driver: str
) -> None:
    url = url_with(
        postgres_url,
        drivername=f"postgresql+{driver}",
        port=proxy.port,
        query={"sslmode": "disable"},
    )
    app_engine = sqlalchemy.create_engine(url)
    func = database_check(app_engine)
    check = Check("db", func)
    try:
        assert engine.run_sync([check]).checks == {"db": "ok"}  # connects: set-up queries
        proxy.taken()
        for _ in range(20):
            assert engine.run_sync([check]).checks == {"db": "ok"}
        # No BEGIN, no SET LOCAL, no ROLLBACK: the SELECT, once a run.
        assert proxy.taken() == [b"SELECT 1"] * 20
    finally:
        engine.bridge.call(release, func)
        app_engine.dispose()


@pytest.mark.postgres
def test_a_check_connection_is_bounded_on_the_server_and_the_apps_is_not(
    postgres_url: str,
) -> None:
    url = url_with(postgres_url, drivername="postgresql+psycopg2")
    app_engine = sqlalchemy.create_engine(url)
    bounded = CheckEngine(app_engine, timeout=1.5)
    try:
        shown = bounded.run(lambda c: c.exec_driver_sql("SHOW statement_timeout").scalar())
        assert shown == f"{int(bounded.driver_timeout * 1000)}ms"
        with app_engine.connect() as connection:
            assert connection.exec_driver_sql("SHOW statement_timeout").scalar() == "0"
    finally:
        bounded.dispose()
        app_engine.dispose()
