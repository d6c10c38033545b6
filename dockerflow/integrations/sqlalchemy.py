"""Database checks through SQLAlchemy: does the application's database answer ``SELECT 1``?

:func:`check_database_connected` (sync) and :func:`check_database_connected_async` are
python-dockerflow's check: ``SELECT 1`` on the engine they are given, through that engine's pool.
:func:`database_check` is what :func:`~dockerflow.integrations.builtin_checks` registers: the same
check, run through a :class:`CheckEngine` (:class:`AsyncCheckEngine` for an ``AsyncEngine``), a copy
of the application's engine with a connection pool of its own. So:

* a heartbeat never queues for a connection behind application requests that hold every connection
  of the application's pool. Waiting there for the pool's ``pool_timeout`` (30 s by default) would
  leave the sync check's thread stuck, and the engine would report the check as still running, not
  start it again, until the wait ended;
* an async check's connections belong to dockerflow's event loop, never to the loops on which the
  application uses its engine (asyncpg connections cannot move between loops).

Message IDs, those of python-dockerflow:

* the driver's error, wrapped by SQLAlchemy in ``DBAPIError`` →
  :data:`~dockerflow.health.ERROR_DB_API_EXCEPTION` (``E008``);
* any other ``SQLAlchemyError`` → :data:`~dockerflow.health.ERROR_SQLALCHEMY_EXCEPTION` (``E009``);
* ``OSError`` or a timeout that a driver raises unwrapped while connecting (asyncpg does for a
  refused connection) → :data:`~dockerflow.health.ERROR_CANNOT_CONNECT_DATABASE` (``E001``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

from .. import health
from ..engine import CheckFunction
from ..health import CheckMessage
from ..masking import masked_repr
from ._support import failure, requires

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")

_ACCEPTED = (
    "a SQLAlchemy Engine or AsyncEngine, a Flask-SQLAlchemy SQLAlchemy object, "
    "or a CheckEngine or AsyncCheckEngine"
)


class HasEngine(Protocol):
    """Anything with a sync ``engine``: a Flask-SQLAlchemy object, or a :class:`CheckEngine`."""

    @property
    def engine(self) -> Engine: ...


class HasAsyncEngine(Protocol):
    """Anything with an async ``engine``, such as an :class:`AsyncCheckEngine`."""

    @property
    def engine(self) -> AsyncEngine: ...


def check_database_connected(db: Engine | HasEngine) -> list[CheckMessage]:
    """Check that the database answers ``SELECT 1``: python-dockerflow's check, blocking.

    A pooled connection that the server dropped (after a restart or failover) is retried once on a
    fresh connection before the check fails.

    :param db: a SQLAlchemy ``Engine``; or a Flask-SQLAlchemy ``SQLAlchemy`` object, whose
        ``db.engine`` needs an application context, as in python-dockerflow; or a
        :class:`CheckEngine`, to go through a pool of the check's own.
    :returns: no message if the database answered, else one
        :class:`~dockerflow.checks.Error`, ``E008``, ``E009`` or ``E001`` (see the module).
    :raises MissingDependencyError: if SQLAlchemy is not installed.
    :raises TypeError: if ``db`` is none of these.
    """
    with requires("sqlalchemy", extra="sqlalchemy"):
        from sqlalchemy.exc import DBAPIError, SQLAlchemyError
    engine = sync_engine_of(db)
    try:
        run_on_connection_sync(engine, _select_one)
    except DBAPIError as exc:
        return [failure("DB-API error", exc, health.ERROR_DB_API_EXCEPTION)]
    except SQLAlchemyError as exc:
        return [failure("Database misconfigured", exc, health.ERROR_SQLALCHEMY_EXCEPTION)]
    except (OSError, asyncio.TimeoutError) as exc:
        return [failure("Cannot connect to database", exc, health.ERROR_CANNOT_CONNECT_DATABASE)]
    return []


async def check_database_connected_async(
    engine: AsyncEngine | HasAsyncEngine,
) -> list[CheckMessage]:
    """Check that the database answers ``SELECT 1`` through an ``AsyncEngine``.

    The same check and message IDs as :func:`check_database_connected`. The engine's connections
    must belong to the running event loop: give it an :class:`AsyncCheckEngine` unless the engine
    is used on dockerflow's loop only.

    :param engine: an ``AsyncEngine`` (such as ``postgresql+asyncpg://...``) or an
        :class:`AsyncCheckEngine`.
    :returns: no message if the database answered, else one :class:`~dockerflow.checks.Error`.
    :raises MissingDependencyError: if SQLAlchemy is not installed.
    :raises TypeError: if ``engine`` is neither.
    """
    with requires("sqlalchemy", extra="sqlalchemy"):
        from sqlalchemy.exc import DBAPIError, SQLAlchemyError
    async_engine = async_engine_of(engine)
    try:
        await run_on_connection(async_engine, _select_one)
    except DBAPIError as exc:
        return [failure("DB-API error", exc, health.ERROR_DB_API_EXCEPTION)]
    except SQLAlchemyError as exc:
        return [failure("Database misconfigured", exc, health.ERROR_SQLALCHEMY_EXCEPTION)]
    except (OSError, asyncio.TimeoutError) as exc:
        return [failure("Cannot connect to database", exc, health.ERROR_CANNOT_CONNECT_DATABASE)]
    return []


def database_check(db: object) -> CheckFunction:
    """Return the database check for ``db``, bound to a copy of its engine with a pool of its own.

    :param db: a SQLAlchemy ``Engine`` or ``AsyncEngine``, a Flask-SQLAlchemy ``SQLAlchemy``
        object, or a :class:`CheckEngine` or :class:`AsyncCheckEngine` (to share one with
        :func:`~dockerflow.integrations.alembic.migrations_check`).
    :returns: a function of no arguments: ``async`` (a partial of
        :func:`check_database_connected_async`) for an ``AsyncEngine``, else a partial of
        :func:`check_database_connected`.
    :raises TypeError: if ``db`` is none of these.
    :raises MissingDependencyError: if SQLAlchemy is not installed.
    """
    engine = check_engine(db)
    if isinstance(engine, AsyncCheckEngine):
        return functools.partial(check_database_connected_async, engine)
    return functools.partial(check_database_connected, engine)


def check_engine(db: object) -> CheckEngine | AsyncCheckEngine:
    """Return the :class:`CheckEngine` or :class:`AsyncCheckEngine` for ``db``.

    :param db: as for :func:`database_check`; a check engine is returned as it is.
    :raises TypeError: if ``db`` is none of the accepted types.
    :raises MissingDependencyError: if SQLAlchemy is not installed.
    """
    with requires("sqlalchemy", extra="sqlalchemy"):
        from sqlalchemy.engine import Engine
        from sqlalchemy.ext.asyncio import AsyncEngine
    if isinstance(db, (CheckEngine, AsyncCheckEngine)):
        return db
    if isinstance(db, AsyncEngine):
        return AsyncCheckEngine(db)
    # A Flask-SQLAlchemy object's engine needs an application context: look at its class only.
    if isinstance(db, Engine) or hasattr(type(db), "engine"):
        return CheckEngine(cast("Engine | HasEngine", db))
    raise TypeError(f"a database check takes {_ACCEPTED}; got {masked_repr(db)}")


class CheckEngine:
    """A sync engine of the check's own, beside an application's engine.

    It is made on first use from the application's engine with ``Pool.recreate()``: the same URL,
    connection creator (so ``connect_args``, ``creator=`` and ``do_connect`` hooks such as IAM
    tokens still apply), pool settings and pool events, but a new, empty pool that only the checks
    use. It opens connections as heartbeats need them, one for a check run at a time.

    It stands in for a Flask-SQLAlchemy object: :func:`check_database_connected` uses its
    :attr:`engine`. A Flask-SQLAlchemy ``db.engine`` is looked up on each use (in an application
    context), and each application's engine gets its own copy. In a forked child the parent's
    copies are let go without closing their connections, which belong to the parent.

    :param db: a SQLAlchemy ``Engine`` or a Flask-SQLAlchemy ``SQLAlchemy`` object.
    """

    def __init__(self, db: Engine | HasEngine) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._copies: dict[Engine, Engine] = {}

    @property
    def source(self) -> Engine:
        """The application's engine (``db.engine`` for a Flask-SQLAlchemy object)."""
        return sync_engine_of(self._db)

    @property
    def engine(self) -> Engine:
        """The check's copy of :attr:`source`, made on first use."""
        source = self.source
        # Worker threads of heartbeats that run at the same time may get here together.
        with self._lock:
            if self._pid != os.getpid():
                # A forked child: the copies' pooled connections are the parent's sockets.
                for inherited in self._copies.values():
                    inherited.dispose(close=False)
                self._copies.clear()
                self._pid = os.getpid()
            copy = self._copies.get(source)
            if copy is None:
                copy = self._copies[source] = _copy_engine(source)
            return copy

    def dispose(self) -> None:
        """Close the copies' pooled connections. A later check makes a new copy."""
        with self._lock:
            copies = list(self._copies.values())
            self._copies.clear()
        for copy in copies:
            copy.dispose()

    def __repr__(self) -> str:
        return f"CheckEngine({self._db!r})"


class AsyncCheckEngine:
    """An async engine of the check's own, beside an application's ``AsyncEngine``.

    Made like :class:`CheckEngine`, but one copy per event loop: asyncpg (and aiomysql...)
    connections belong to the loop that opened them. A copy is made on first use on each loop; a
    new loop, such as the one a forked child starts, gets a new copy and never touches the old
    one's connections. A copy is let go when its loop is garbage collected.

    :param engine: the application's ``AsyncEngine``.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.source = engine
        self._copies: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncEngine] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def engine(self) -> AsyncEngine:
        """The copy for the running event loop, made on first use on it.

        :raises RuntimeError: if no event loop is running in this thread.
        """
        # Async drivers' connections belong to the loop that opened them: one copy per loop.
        loop = asyncio.get_running_loop()
        copy = self._copies.get(loop)
        if copy is None:
            copy = self._copies[loop] = _copy_async_engine(self.source)
        return copy

    async def dispose(self) -> None:
        """Close the running loop's copy; run it on that loop: ``bridge.call(e.dispose)``."""
        # Only the loop that opened a copy's connections may close them.
        copy = self._copies.pop(asyncio.get_running_loop(), None)
        if copy is not None:
            await copy.dispose()

    def __repr__(self) -> str:
        return f"AsyncCheckEngine({self.source!r})"


def sync_engine_of(db: object) -> Engine:
    """Return the sync engine that ``db`` is or has (``db.engine``).

    :raises TypeError: if there is none.
    """
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    if isinstance(db, Engine):
        return db
    # An AsyncEngine's .engine is its sync core, which cannot run outside of the async API.
    if isinstance(db, (AsyncEngine, AsyncCheckEngine)):
        raise TypeError(f"{masked_repr(db)} is async: use check_database_connected_async")
    engine = getattr(db, "engine", None)  # Flask-SQLAlchemy: needs an application context
    if isinstance(engine, Engine):
        return engine
    raise TypeError(f"expected a sync engine: {_ACCEPTED}; got {masked_repr(db)}")


def async_engine_of(db: object) -> AsyncEngine:
    """Return the ``AsyncEngine`` that ``db`` is or has (``db.engine``).

    :raises TypeError: if there is none.
    """
    from sqlalchemy.ext.asyncio import AsyncEngine

    if isinstance(db, AsyncEngine):
        return db
    engine = getattr(db, "engine", None)
    if isinstance(engine, AsyncEngine):
        return engine
    raise TypeError(f"expected an AsyncEngine or an AsyncCheckEngine, got {masked_repr(db)}")


def run_on_connection_sync(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Return ``work(connection)`` on a connection of ``engine``, retrying a dropped one once.

    SQLAlchemy invalidates a pooled connection that the server dropped (restart, failover, idle
    timeout); one more try on a fresh connection tells a dead server from a stale connection.
    """
    from sqlalchemy.exc import DBAPIError

    try:
        with engine.connect() as connection:
            return work(connection)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    with engine.connect() as connection:
        return work(connection)


async def run_on_connection(engine: AsyncEngine, work: Callable[[Connection], T]) -> T:
    """Return ``work(connection)`` on a connection of an ``AsyncEngine``; see the sync version."""
    from sqlalchemy.exc import DBAPIError

    try:
        async with engine.connect() as connection:
            return await connection.run_sync(work)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    async with engine.connect() as connection:
        return await connection.run_sync(work)


def _select_one(connection: Connection) -> object:
    from sqlalchemy import text

    return connection.execute(text("SELECT 1")).scalar()


def _copy_engine(source: Engine) -> Engine:
    from sqlalchemy import create_engine

    return create_engine(source.url, pool=source.pool.recreate())


def _copy_async_engine(source: AsyncEngine) -> AsyncEngine:
    from sqlalchemy.ext.asyncio import create_async_engine

    return create_async_engine(source.url, pool=source.sync_engine.pool.recreate())
