"""Fixtures for the built-in checks: the real PostgreSQL and Redis servers, and faults.

The servers' URLs come from ``DOCKERFLOW_TEST_POSTGRES_URL`` and ``DOCKERFLOW_TEST_REDIS_URL``.
When a server cannot be reached its tests are skipped, except under ``CI=true``, where they fail.
The shared servers are never stopped or reconfigured: a test that needs a server to misbehave
gets a fault fixture (a refused port, a black hole) or a private server of its own.
"""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import Callable, Iterator

import pytest

from dockerflow.engine import Engine

from .helpers import (
    POSTGRES_URL,
    REDIS_URL,
    BlackHole,
    Gate,
    PrivateRedis,
    Proxy,
    unreachable,
    url_with,
)


@pytest.fixture(scope="session")
def _postgres_reachable() -> str:
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


@pytest.fixture
def postgres_url(_postgres_reachable: str) -> str:
    """The URL of the shared PostgreSQL server (``postgresql://``, psycopg2's)."""
    return _postgres_reachable


@pytest.fixture(scope="session")
def _redis_reachable() -> str:
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


@pytest.fixture
def redis_url(_redis_reachable: str) -> str:
    """The URL of the shared Redis server."""
    return _redis_reachable


@pytest.fixture
def engine() -> Iterator[Engine]:
    """A checks engine with a 1-second timeout; its loop thread is stopped at teardown."""
    engine = Engine(timeout=1.0)
    yield engine
    engine.close()


@pytest.fixture
def refused_port() -> int:
    """A local port where nothing listens: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    """A :class:`BlackHole`, closed at teardown."""
    hole = BlackHole()
    yield hole
    hole.close()


@pytest.fixture(scope="session")
def scratch_database(_postgres_reachable: str) -> Iterator[str]:
    """A database of this test run's own, ``dockerflow_test_<random>``, dropped at the end."""
    import psycopg2

    name = f"dockerflow_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(_postgres_reachable)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield url_with(_postgres_reachable, database=name)
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


@pytest.fixture
def private_redis(refused_port: int) -> Iterator[Callable[..., PrivateRedis]]:
    """Start a private redis-server with extra arguments; it is stopped at teardown."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    servers: list[PrivateRedis] = []

    def start(*args: str) -> PrivateRedis:
        server = PrivateRedis(refused_port, *args)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def postgres_proxy(postgres_url: str) -> Iterator[Proxy]:
    """A :class:`Proxy` in front of the shared PostgreSQL server, closed at teardown."""
    from sqlalchemy.engine import make_url

    proxy = Proxy(make_url(postgres_url).port or 5432)
    yield proxy
    proxy.close()


@pytest.fixture
def redis_proxy(redis_url: str) -> Iterator[Proxy]:
    """A :class:`Proxy` in front of the shared Redis server, closed at teardown."""
    from urllib.parse import urlsplit

    proxy = Proxy(urlsplit(redis_url).port or 6379)
    yield proxy
    proxy.close()


@pytest.fixture
def redis_gate(redis_url: str) -> Iterator[Gate]:
    """A :class:`Gate` in front of the shared Redis server, closed at teardown."""
    from urllib.parse import urlsplit

    gate = Gate(urlsplit(redis_url).port or 6379)
    yield gate
    gate.close()


@pytest.fixture
def database(scratch_database: str) -> str:
    """The scratch database, emptied of the migrations of ``alembic_app/``; its psycopg2
    SQLAlchemy URL."""
    import sqlalchemy

    url = url_with(scratch_database, drivername="postgresql+psycopg2")
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(
            sqlalchemy.text("DROP TABLE IF EXISTS widgets, alembic_version, dockerflow_versions")
        )
    engine.dispose()
    return url
