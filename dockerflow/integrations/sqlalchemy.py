"""Database checks through SQLAlchemy: does the application's database answer ``SELECT 1``?

:func:`check_database_connected` (sync) and :func:`check_database_connected_async` are
python-dockerflow's check: ``SELECT 1`` on the engine they are given, through that engine's pool.
:func:`database_check` is what :func:`~dockerflow.integrations.builtin_checks` registers: the same
check, run through a :class:`CheckEngine` (:class:`AsyncCheckEngine` for an ``AsyncEngine``).

Which connections the check uses (it never changes the application's engine, pool, connections
or arguments):

* its own: a copy of the application's engine with a pool of its own, made at the first check.
  Its connections are made by the application's connection creator, so the application's URL,
  ``connect_args``, ``creator=`` and ``do_connect`` hooks (such as IAM tokens) apply, and set up
  by the application's pool's ``connect`` listeners (search_path, role...), with its execution
  options and isolation level. The application's other pool listeners (checkout, checkin...)
  never see them. The copy holds **one** connection per worker process and check that uses it,
  opened at the first heartbeat and kept: one for the database check, two when the migrations
  check shares it (both run at the same time in a heartbeat); runs of a check that overlap (a
  stuck one being replaced) may hold one more for that time. For SQLite, whose connections cost
  no server, it opens one per check. Heartbeats never queue behind application requests that
  hold every connection of the application's pool, and an async check's connections belong to
  dockerflow's event loop, never to the loops on which the application uses its engine;
* the application's, when its engine hands one connection to everybody. A ``StaticPool`` on
  SQLite (an in-memory database exists only in that connection) is checked through the
  application's own engine, as python-dockerflow's check does. A ``creator=`` that returns the
  same connection on every call (told apart at the first connect by calling it twice) is read
  through as the check finds it: a plain ``SELECT 1`` on the DB-API connection, inside the
  application's transaction if one is open; it rolls back only a transaction its own statement
  began, and never closes the connection, shuts its socket down or sets its
  ``statement_timeout``, so it is not bounded as below.

Every driver call is bounded by a little less than the check's timeout
(:func:`~dockerflow.integrations.driver_timeout`), so that a database that stops answering is
reported as ``E001`` within the timeout and the check recovers once it answers again:

* an async check is cancelled at that bound;
* a sync check connects with a connect timeout (``connect_timeout`` for psycopg2 and psycopg 3:
  whole seconds, at least 2, as libpq counts them). The one thing the check adds to the
  application's engine is the ``do_connect`` hook that does it: for the check's own connects
  only, it makes the connection from copies of the connect arguments with that timeout (after
  running the application's ``do_connect`` hooks added later than itself on the copies); the
  application's own connects pass through it untouched. A query that gets no answer has its
  socket shut down at the bound (for drivers whose connections have a ``fileno()``: psycopg2,
  psycopg 3), which ends the blocked call; the connection is then discarded;
* on PostgreSQL a query held behind a lock (such as a migration's) ends on the server too: a
  sync check's connections are made with ``statement_timeout`` set to the bound (libpq's
  ``options``, psycopg2 and psycopg 3), so a run sends nothing for it; a run with a smaller
  bound than its connection's, and an async check, set it for their own transaction
  (``SET LOCAL``). The built-in ``SELECT 1`` runs outside a transaction (the driver's
  ``autocommit``, set back before the connection returns to the pool): one round trip a run,
  with no ``BEGIN`` or ``ROLLBACK``.

Not bounded: the connect of an engine made with ``creator=`` (the hook does not run; set the
connect timeout in your creator), and the check through a connection the application shares with
it (see above; the engine reports the check as still running until the connection answers).

Message IDs, those of python-dockerflow:

* the driver's error, wrapped by SQLAlchemy in ``DBAPIError`` →
  :data:`~dockerflow.health.ERROR_DB_API_EXCEPTION` (``E008``), except that a check through a
  :class:`CheckEngine` reports an error while connecting (refused, connect timeout, bad
  password) as ``E001``;
* any other ``SQLAlchemyError`` → :data:`~dockerflow.health.ERROR_SQLALCHEMY_EXCEPTION` (``E009``);
* no answer within the bound, or ``OSError`` or a timeout that a driver raises unwrapped while
  connecting (asyncpg does for a refused connection) →
  :data:`~dockerflow.health.ERROR_CANNOT_CONNECT_DATABASE` (``E001``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, TypeVar, cast

import anyio

from .. import health
from ..engine import CheckFunction, after_fork_in_child
from ..health import CheckData, CheckMessage
from ..masking import masked_repr
from ._support import Bounded, PerLoop, Watchdog, failure, is_driver_failure, requires

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")

_CANNOT_CONNECT = "Cannot connect to database"

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


def check_database_connected(db: Engine | HasEngine) -> list[CheckMessage | CheckData]:
    """Check that the database answers ``SELECT 1``: python-dockerflow's check, blocking.

    A pooled connection that the server dropped (after a restart or failover) is retried once on a
    fresh connection before the check fails.

    :param db: a SQLAlchemy ``Engine``; or a Flask-SQLAlchemy ``SQLAlchemy`` object, whose
        ``db.engine`` needs an application context, as in python-dockerflow; or a
        :class:`CheckEngine`, to go through its connections, bounded by its timeout.
    :returns: no message if the database answered, else one
        :class:`~dockerflow.checks.Error`, ``E008``, ``E009`` or ``E001`` (see the module).
        Through a :class:`CheckEngine`, an answer also gives the value ``round_trip``
        (:class:`~dockerflow.health.CheckData`): the seconds ``SELECT 1`` took, connecting
        left out.
    :raises MissingDependencyError: if SQLAlchemy is not installed.
    :raises TypeError: if ``db`` is none of these.
    """
    with requires("sqlalchemy", extra="sqlalchemy"):
        from sqlalchemy.exc import DBAPIError, SQLAlchemyError
    timed = _Timed()
    try:
        if isinstance(db, CheckEngine):
            db.run(timed.wrap(_select_one), timed.wrap(_select_one_shared))
        else:
            run_on_connection_sync(sync_engine_of(db), _select_one)
    except CannotConnectError as exc:
        return [failure(_CANNOT_CONNECT, exc.error, health.ERROR_CANNOT_CONNECT_DATABASE)]
    except DBAPIError as exc:
        return [failure("DB-API error", exc, health.ERROR_DB_API_EXCEPTION)]
    except SQLAlchemyError as exc:
        return [failure("Database misconfigured", exc, health.ERROR_SQLALCHEMY_EXCEPTION)]
    except (OSError, asyncio.TimeoutError) as exc:
        return [failure(_CANNOT_CONNECT, exc, health.ERROR_CANNOT_CONNECT_DATABASE)]
    except BaseException as exc:
        if isinstance(exc, Exception) or not is_driver_failure(exc):
            raise
        return [failure("DB-API error", exc, health.ERROR_DB_API_EXCEPTION)]
    # python-dockerflow's check (a Flask-SQLAlchemy db, an Engine) returns messages only.
    return timed.data() if isinstance(db, CheckEngine) else []


async def check_database_connected_async(
    engine: AsyncEngine | HasAsyncEngine,
) -> list[CheckMessage | CheckData]:
    """Check that the database answers ``SELECT 1`` through an ``AsyncEngine``.

    The same check and message IDs as :func:`check_database_connected`. The engine's connections
    must belong to the running event loop: give it an :class:`AsyncCheckEngine` unless the engine
    is used on dockerflow's loop only.

    :param engine: an ``AsyncEngine`` (such as ``postgresql+asyncpg://...``) or an
        :class:`AsyncCheckEngine` (bounded by its timeout).
    :returns: no message if the database answered, else one :class:`~dockerflow.checks.Error`;
        an answer also gives the value ``round_trip`` (seconds ``SELECT 1`` took).
    :raises MissingDependencyError: if SQLAlchemy is not installed.
    :raises TypeError: if ``engine`` is neither.
    """
    with requires("sqlalchemy", extra="sqlalchemy"):
        from sqlalchemy.exc import DBAPIError, SQLAlchemyError
    async_engine = async_engine_of(engine)
    bound = engine.driver_timeout if isinstance(engine, AsyncCheckEngine) else None
    timed = _Timed()
    try:
        await run_on_connection(async_engine, timed.wrap(_select_one), bound)
    except CannotConnectError as exc:
        return [failure(_CANNOT_CONNECT, exc.error, health.ERROR_CANNOT_CONNECT_DATABASE)]
    except DBAPIError as exc:
        return [failure("DB-API error", exc, health.ERROR_DB_API_EXCEPTION)]
    except SQLAlchemyError as exc:
        return [failure("Database misconfigured", exc, health.ERROR_SQLALCHEMY_EXCEPTION)]
    except (OSError, asyncio.TimeoutError) as exc:
        return [failure(_CANNOT_CONNECT, exc, health.ERROR_CANNOT_CONNECT_DATABASE)]
    except Exception as exc:
        if not _raised_by_driver(async_engine, exc):  # unwrapped, as when connecting above
            raise
        return [failure("DB-API error", exc, health.ERROR_DB_API_EXCEPTION)]
    except BaseException as exc:  # a CancelledError the driver raised, say
        if not is_driver_failure(exc):
            raise
        return [failure("DB-API error", exc, health.ERROR_DB_API_EXCEPTION)]
    return timed.data()


class _Timed:
    """How long the check's ``SELECT 1`` took on the wire, connecting and the pool left out."""

    def __init__(self) -> None:
        self.seconds: float | None = None

    def wrap(self, work: Callable[..., T]) -> Callable[..., T]:
        def timed(*args: Any) -> T:
            started = time.perf_counter()
            value = work(*args)
            self.seconds = time.perf_counter() - started
            return value

        return timed

    def data(self) -> list[CheckMessage | CheckData]:
        if self.seconds is None:
            return []
        return [CheckData("round_trip", round(self.seconds, 6), unit="s")]


def database_check(db: object, *, timeout: float | None = None) -> CheckFunction:
    """Return the database check for ``db``, through a :class:`CheckEngine` (see the module).

    :param db: a SQLAlchemy ``Engine`` or ``AsyncEngine``, a Flask-SQLAlchemy ``SQLAlchemy``
        object, or a :class:`CheckEngine` or :class:`AsyncCheckEngine` (to share one with
        :func:`~dockerflow.integrations.alembic.migrations_check`).
    :param timeout: the timeout the check runs under, in seconds (default 3); its driver calls
        are bounded a little under it. The Flask extension sets it from
        ``DOCKERFLOW_CHECK_TIMEOUT`` when it is not given.
    :returns: a function of no arguments: ``async`` (a partial of
        :func:`check_database_connected_async`) for an ``AsyncEngine``, else a partial of
        :func:`check_database_connected`.
    :raises TypeError: if ``db`` is none of these.
    :raises MissingDependencyError: if SQLAlchemy is not installed.
    :raises CheckRegistrationError: if ``timeout`` is not a positive number of seconds.
    """
    engine = check_engine(db, timeout=timeout)
    if isinstance(engine, AsyncCheckEngine):
        return functools.partial(check_database_connected_async, engine)
    return functools.partial(check_database_connected, engine)


def check_engine(db: object, *, timeout: float | None = None) -> CheckEngine | AsyncCheckEngine:
    """Return the :class:`CheckEngine` or :class:`AsyncCheckEngine` for ``db``.

    :param db: as for :func:`database_check`; a check engine is returned as it is.
    :param timeout: as for :func:`database_check`; a given check engine takes it unless it was
        made with one.
    :raises TypeError: if ``db`` is none of the accepted types.
    :raises MissingDependencyError: if SQLAlchemy is not installed.
    """
    with requires("sqlalchemy", extra="sqlalchemy"):
        from sqlalchemy.engine import Engine
    if isinstance(db, (CheckEngine, AsyncCheckEngine)):
        if timeout is not None:
            db.follow(timeout)
        return db
    if _is_async_engine(db):
        return AsyncCheckEngine(db, timeout=timeout)
    # A Flask-SQLAlchemy object's engine needs an application context: look at its class only.
    if isinstance(db, Engine) or hasattr(type(db), "engine"):
        return CheckEngine(cast("Engine | HasEngine", db), timeout=timeout)
    raise TypeError(f"a database check takes {_ACCEPTED}; got {masked_repr(db)}")


class CheckEngine(Bounded):
    """The sync engine a database check uses, beside an application's engine (see the module).

    A copy of the application's engine, made on first use with a pool of its own that only the
    checks use (a new connection per check for SQLite, whose connections cost no server), whose
    connections are made and set up as the application's are: the application's connection
    creator (so ``connect_args``, ``creator=`` and ``do_connect`` hooks apply), its pool's
    ``connect`` listeners, its execution options and isolation level. Nothing else of the
    application's pool runs on them, and nothing of the application's engine, pool or
    arguments is changed.

    Except for a connection that the application's engine hands to everybody. The one of a
    ``StaticPool`` on SQLite (an in-memory database lives in it) is used through the
    application's own engine, as python-dockerflow does. The one a ``creator=`` returns on every
    call is read through as the check finds it (:meth:`run`), and the check never ends its
    transaction, closes it or changes its settings.

    It stands in for a Flask-SQLAlchemy object: :func:`check_database_connected` uses it. A
    Flask-SQLAlchemy ``db.engine`` is looked up on each use (in an application context), and
    each application's engine gets its own copy. In a forked child the parent's copies are let
    go without closing their connections, which belong to the parent.

    :param db: a SQLAlchemy ``Engine`` or a Flask-SQLAlchemy ``SQLAlchemy`` object.
    :param timeout: the check's timeout in seconds (default 3), which bounds its driver calls.
    """

    def __init__(self, db: Engine | HasEngine, *, timeout: float | None = None) -> None:
        super().__init__(timeout)
        self._db = db
        # Worker threads of runs that overlap may make or look up a copy together.
        self._lock = threading.Lock()
        self._copies: dict[Engine, Engine] = {}
        # The application engines whose creator= returns one connection to everybody.
        self._shared: dict[Engine, _Connector] = {}
        #: Wakes a driver call stuck on a silent socket at the check's deadline.
        self.watchdog = Watchdog()
        after_fork_in_child(self, CheckEngine._forget_inherited)

    def _forget_inherited(self) -> None:
        # In a forked child: the copies' pooled connections are the parent's sockets, so they
        # are let go without being closed. The lock may have been held at fork time.
        self._lock = threading.Lock()
        for inherited in self._copies.values():
            inherited.dispose(close=False)
        self._copies.clear()
        self._shared.clear()

    @property
    def source(self) -> Engine:
        """The application's engine (``db.engine`` for a Flask-SQLAlchemy object)."""
        return sync_engine_of(self._db)

    @property
    def engine(self) -> Engine:
        """The engine whose connections the check uses: its copy of :attr:`source`, or
        :attr:`source` itself when the check reads through the application's one connection."""
        source = self.source
        if _static_sqlite(source):
            return source
        with self._lock:
            if source in self._shared:
                return source
            return self._copy_of(source)

    def _copy_of(self, source: Engine) -> Engine:
        # Under self._lock.
        copy = self._copies.get(source)
        if copy is None:
            copy = self._copies[source] = _copy_engine(source)
        return copy

    def run(
        self,
        work: Callable[[Connection], T],
        shared_work: Callable[[Any, Any], T] | None = None,
    ) -> T:
        """Return ``work(connection)`` on a connection of the check's own, bounded (see
        :func:`run_on_connection_sync`); or ``shared_work(dbapi_connection, dialect)`` when the
        application hands everybody one connection (see the class).

        ``shared_work`` must read only: the check leaves that connection's transaction as it
        found it (it rolls back only a transaction its statement began), and never closes it
        or bounds it with a socket deadline or a ``statement_timeout``.

        :raises SharedConnectionError: if the connection is shared and ``shared_work`` is
            ``None``.
        :raises CannotConnectError: if the check could not connect.
        :raises NoAnswerError: if the database did not answer in time.
        """
        source = self.source
        if _static_sqlite(source):
            # SQLite on a StaticPool (Flask-SQLAlchemy's in-memory database): through the
            # application's own engine, as python-dockerflow's check does (code written for it
            # mocks db.engine.connect). StaticPool hands that connection out without closing it.
            return run_on_connection_sync(source, work)
        with self._lock:
            connector = self._shared.get(source)
            copy = self._copy_of(source) if connector is None else None
        if copy is not None:
            try:
                return run_on_connection_sync(copy, work, self)
            except SharedConnectionError as exc:
                assert exc.connector is not None  # raised by the copy's connector
                connector = exc.connector
                with self._lock:  # the copy's pool never got a connection: let it go
                    self._shared[source] = connector
                    self._copies.pop(source, None)
        assert connector is not None
        shared = connector.shared()
        if shared_work is None:
            raise SharedConnectionError(None)
        return _on_shared(shared, source.dialect, shared_work)

    def dispose(self) -> None:
        """Close the copies' pooled connections. A later check makes a new copy.

        A connection the application shares with the check is the application's: it is left
        open.
        """
        with self._lock:
            copies = list(self._copies.values())
            self._copies.clear()
        for copy in copies:
            copy.dispose()

    def __repr__(self) -> str:
        return f"CheckEngine({self._db!r})"


class AsyncCheckEngine(Bounded):
    """The async engine a database check uses, beside an application's ``AsyncEngine``.

    Made like :class:`CheckEngine` (the application's connection creator, ``connect``
    listeners, execution options and isolation level, on a pool of its own), but one copy per
    event loop: asyncpg (and aiomysql...) connections belong to the loop that opened them. A
    copy is made on first use on each loop; a new loop, such as the one a forked child starts,
    gets a new copy and never touches the old one's connections. A copy is disposed of on its
    loop when that loop ends. For SQLite (``aiosqlite``) it is the application's engine itself.

    :param engine: the application's ``AsyncEngine``.
    :param timeout: the check's timeout in seconds (default 3), which bounds its driver calls.
    """

    def __init__(self, engine: AsyncEngine, *, timeout: float | None = None) -> None:
        super().__init__(timeout)
        self.source = engine
        # Async drivers' connections belong to the loop that opened them: one copy per loop,
        # disposed of when its loop ends.
        self._copies: PerLoop[AsyncEngine] = PerLoop(lambda copy: copy.dispose())

    @property
    def engine(self) -> AsyncEngine:
        """The engine for the running event loop: :attr:`source` for SQLite, else its copy.

        :raises RuntimeError: if no event loop is running in this thread.
        """
        if _is_sqlite(self.source.sync_engine):
            return self.source
        # Async drivers' connections belong to the loop that opened them: one copy per loop.
        return self._copies.setdefault(lambda: _copy_async_engine(self.source))

    async def dispose(self) -> None:
        """Close the running loop's copy; run it on that loop: ``bridge.call(e.dispose)``."""
        # Only the loop that opened a copy's connections may close them.
        await self._copies.discard()

    def __repr__(self) -> str:
        return f"AsyncCheckEngine({self.source!r})"


def sync_engine_of(db: object) -> Engine:
    """Return the sync engine that ``db`` is or has (``db.engine``).

    :raises TypeError: if there is none.
    """
    from sqlalchemy.engine import Engine

    if isinstance(db, Engine):
        return db
    # An AsyncEngine's .engine is its sync core, which cannot run outside of the async API.
    if isinstance(db, AsyncCheckEngine) or _is_async_engine(db):
        raise TypeError(f"{masked_repr(db)} is async: use check_database_connected_async")
    engine = getattr(db, "engine", None)  # Flask-SQLAlchemy: needs an application context
    if isinstance(engine, Engine):
        return engine
    raise TypeError(f"expected a sync engine: {_ACCEPTED}; got {masked_repr(db)}")


def _is_async_engine(db: object) -> TypeGuard[AsyncEngine]:
    """Whether ``db`` is a SQLAlchemy ``AsyncEngine``, without importing the asyncio extension.

    An ``AsyncEngine`` exists only once ``sqlalchemy.ext.asyncio`` was imported; importing it
    for a sync engine would need ``greenlet``, which SQLAlchemy 2.1 no longer installs by
    itself (only its ``asyncio`` extra does).
    """
    module = sys.modules.get("sqlalchemy.ext.asyncio")
    return module is not None and isinstance(db, module.AsyncEngine)


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


class NoAnswerError(TimeoutError):
    """The database did not answer within the check's bound."""


def _raised_by_driver(engine: AsyncEngine, exc: BaseException) -> bool:
    """Whether ``exc`` comes from the engine's DB-API driver itself (say ``asyncpg``)."""
    return type(exc).__module__.partition(".")[0] == engine.sync_engine.dialect.driver


class CannotConnectError(Exception):
    """A bounded check could not connect; :attr:`error` is the driver's error."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def run_on_connection_sync(
    engine: Engine, work: Callable[[Connection], T], bound: CheckEngine | None = None
) -> T:
    """Return ``work(connection)`` on a connection of ``engine``, retrying a dropped one once.

    SQLAlchemy invalidates a pooled connection that the server dropped (restart, failover, idle
    timeout); one more try on a fresh connection tells a dead server from a stale connection.

    :param bound: if given, the check engine whose :attr:`~Bounded.driver_timeout` bounds
        connecting and ``work`` in all (see the module for how each is bounded).
    :raises NoAnswerError: if the database did not answer within that time.
    """
    from sqlalchemy.exc import DBAPIError

    if bound is None:
        try:
            with engine.connect() as connection:
                return work(connection)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        with engine.connect() as connection:
            return work(connection)

    timeout, watchdog = bound.driver_timeout, bound.watchdog
    deadline = time.monotonic() + timeout
    bound_ms = _statement_timeout_ms(engine.dialect, timeout)
    token = _connect_timeout.set(timeout)
    try:
        for attempt in (1, 2):
            try:
                try:
                    connection = engine.connect()
                except DBAPIError as exc:
                    raise CannotConnectError(exc) from exc
                except BaseException as exc:  # a CancelledError the driver raised, say
                    if isinstance(exc, Exception) or not is_driver_failure(exc):
                        raise
                    raise CannotConnectError(exc) from exc
                with connection:
                    return _bounded_sync(connection, work, deadline, watchdog, bound_ms)
            except DBAPIError as exc:
                # A second try only for a dropped pooled connection, and only with time left.
                if attempt == 2 or not exc.connection_invalidated or _expired(deadline):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        _connect_timeout.reset(token)


async def run_on_connection(
    engine: AsyncEngine, work: Callable[[Connection], T], timeout: float | None = None
) -> T:
    """Return ``work(connection)`` on a connection of an ``AsyncEngine``; see the sync version.

    :param timeout: if given, the seconds that connecting and ``work`` may take in all; the
        call is cancelled then.
    :raises NoAnswerError: if the database did not answer within ``timeout``.
    """
    statement_ms = _statement_timeout_ms(engine.sync_engine.dialect, timeout)
    bounded = functools.partial(_with_statement_timeout, work, statement_ms)
    if timeout is None:
        return await _run_retrying(engine, bounded, wrap_connect=False)
    with anyio.move_on_after(timeout):
        return await _run_retrying(engine, bounded, wrap_connect=True)
    # Only a cancelled scope gets here: the bound ran out.
    raise NoAnswerError(f"no answer from the database within {timeout:g}s")


async def _run_retrying(
    engine: AsyncEngine, work: Callable[[Connection], T], *, wrap_connect: bool
) -> T:
    from sqlalchemy.exc import DBAPIError

    for attempt in (1, 2):
        connection = engine.connect()
        try:
            await connection.start()
        except BaseException as exc:
            # SQLAlchemy 2.0 lets an async driver's own errors through unwrapped when
            # connecting (asyncpg's): they are DB-API errors all the same. A CancelledError
            # the driver raised (not a cancellation of this task) is a failure to connect.
            if isinstance(exc, Exception):
                if not isinstance(exc, DBAPIError) and not _raised_by_driver(engine, exc):
                    raise
            elif not is_driver_failure(exc):
                raise
            if wrap_connect:
                raise CannotConnectError(exc) from exc
            raise
        try:
            return await connection.run_sync(work)
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
        except Exception as exc:
            # SQLAlchemy before 2.0.50 lets asyncpg's InternalClientError through unwrapped
            # ("cannot switch to state ..."): a pooled connection the server dropped, found
            # mid-operation. It is discarded and a fresh one tried, as for an invalidated one.
            if attempt == 2 or not _raised_by_driver(engine, exc):
                raise
            await connection.invalidate()
        finally:
            await connection.close()
    raise AssertionError("unreachable")  # pragma: no cover


def _expired(deadline: float) -> bool:
    return time.monotonic() >= deadline


def _bounded_sync(
    connection: Connection,
    work: Callable[[Connection], T],
    deadline: float,
    watchdog: Watchdog,
    bound_ms: int | None,
) -> T:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise NoAnswerError("no time left to query the database")
    statement_ms = _statement_timeout_ms(connection.dialect, remaining)
    preset: int = connection.connection.info.get(_STATEMENT_MS, -1)
    if statement_ms is not None and bound_ms is not None and 0 < preset <= bound_ms:
        # Set when the connection was made, within the check's bound (the socket deadline
        # ends the wait at the remaining time on this side).
        statement_ms = None
    with _socket_deadline(connection, remaining, watchdog) as fired:
        try:
            return _with_statement_timeout(work, statement_ms, connection)
        except Exception as exc:
            if fired.is_set():
                raise NoAnswerError(
                    f"no answer from the database within {round(remaining, 2):g}s"
                ) from exc
            raise


def _with_statement_timeout(
    work: Callable[[Connection], T], statement_ms: int | None, connection: Connection
) -> T:
    if statement_ms is not None:
        # For this transaction only: the connection goes back to the pool rolled back.
        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {statement_ms:d}")
    return work(connection)


def _statement_timeout_ms(dialect: Any, timeout: float | None) -> int | None:
    if timeout is None or dialect.name != "postgresql":
        return None
    return max(1, int(timeout * 1000))


@contextlib.contextmanager
def _socket_deadline(
    connection: Connection, seconds: float, watchdog: Watchdog
) -> Iterator[threading.Event]:
    """Shut the connection's socket down if the block is still running after ``seconds``.

    A blocking driver waits on a silent socket for as long as the operating system keeps it
    open; shutting it down from another thread wakes the driver up with an error, and SQLAlchemy
    then discards the connection. Drivers without ``fileno()`` are not bounded this way.
    """
    fired = threading.Event()
    raw: Any = connection.connection.dbapi_connection
    fileno = getattr(raw, "fileno", None)
    if not callable(fileno):
        yield fired
        return
    lock = threading.Lock()
    finished = False

    def shut_down() -> None:
        # Under the lock: the block must not have ended, or the connection may be back in the
        # pool and in use by the next check.
        with lock:
            if finished:
                return
            fired.set()
            # A duplicate descriptor: closing it leaves the driver's own open.
            with (
                contextlib.suppress(OSError, ValueError),
                socket.socket(fileno=os.dup(fileno())) as sock,
            ):
                sock.shutdown(socket.SHUT_RDWR)

    armed = watchdog.call_after(seconds, shut_down)
    try:
        yield fired
    finally:
        with lock:
            finished = True
        watchdog.cancel(armed)


#: Key in a check connection's ``info``: the ``statement_timeout`` (ms) it was made with.
_STATEMENT_MS = "dockerflow_statement_timeout_ms"

#: The connect timeout for connections that a check opens, read by :class:`_Connector`.
_connect_timeout: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "dockerflow_connect_timeout", default=None
)

# The connect timeout parameter of each sync PostgreSQL driver; libpq counts whole seconds and
# treats anything under 2 as 2.
_CONNECT_TIMEOUT_PARAMS = {"psycopg2": "connect_timeout", "psycopg": "connect_timeout"}


class _Connecting:
    """A connect of the check's own, under way in this context."""

    def __init__(self, dialect: Any, timeout: float | None) -> None:
        self.dialect = dialect
        self.timeout = timeout
        #: Whether create_engine's connect function made it (it calls the do_connect hooks).
        self.hooked = False


_connecting: contextvars.ContextVar[_Connecting | None] = contextvars.ContextVar(
    "dockerflow_connecting", default=None
)


class SharedConnectionError(Exception):
    """The application's engine hands everybody one connection: the check may only read
    through it (:meth:`CheckEngine.run`)."""

    def __init__(self, connector: _Connector | None) -> None:
        super().__init__(
            "the application's engine hands out one connection to everybody (a StaticPool, "
            "or a creator= that returns the same connection)"
        )
        self.connector = connector


def _connect_for_check(dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
    """``do_connect`` hook on the application's engine: acts on the check's connects only.

    The application's own connects are left to its arguments and hooks (this returns ``None``).
    A check's connect to PostgreSQL through psycopg2 or psycopg is made here, from copies of the
    arguments with the check's connect timeout: SQLAlchemy 2.0 hands every connect the engine's
    one list and dict, which must keep the application's values. The application's hooks added
    after this one run first, on the copies, as they would have.
    """
    connecting = _connecting.get()
    if connecting is None or connecting.dialect is not dialect:
        return None
    connecting.hooked = True
    param = _CONNECT_TIMEOUT_PARAMS.get(dialect.driver)
    if param is None or connecting.timeout is None:
        return None
    cargs, cparams = list(cargs), dict(cparams)
    ours = max(2, math.floor(connecting.timeout))
    try:
        given = int(cparams[param])
    except (KeyError, TypeError, ValueError):
        given = 0
    cparams[param] = ours if given <= 0 else min(given, ours)
    # The server-side bound, set once per connection: no SET LOCAL round trip on each run.
    statement_ms = _statement_timeout_ms(dialect, connecting.timeout)
    if statement_ms is not None:
        given_options = cparams.get("options")
        ours_option = f"-c statement_timeout={statement_ms:d}"
        cparams["options"] = f"{given_options} {ours_option}" if given_options else ours_option
        if record is not None:
            record.info[_STATEMENT_MS] = statement_ms
    hooks = list(dialect.dispatch.do_connect)
    later = hooks[hooks.index(_connect_for_check) + 1 :] if _connect_for_check in hooks else []
    for hook in later:
        connection = hook(dialect, record, cargs, cparams)
        if connection is not None:
            return connection
    return dialect.connect(*cargs, **cparams)


class _Connector:
    """The connection creator of a check's own pool: the application's.

    It tells the check's own connections from one the application hands out to everybody: a
    connection made by create_engine's connect function (the ``do_connect`` hook saw it) is
    new. A ``creator=`` of the application's is called twice on the first connect: one that
    returns the same connection both times is a shared one (:class:`SharedConnectionError`).
    """

    def __init__(self, source: Engine) -> None:
        # The application pool's creator: Pool.recreate() reads it the same way, and no public
        # name gives it (recreate() would also carry over the pool's class, settings and every
        # listener, which the check's pool must not have).
        creator: Any = source.pool._creator
        self._create: Callable[[Any], Any] = (
            creator if _takes_record(creator) else (lambda record: creator())
        )
        self._dialect = source.dialect
        self._fresh = False  # the application's creator= makes a new connection per call

    def connect(self, connection_record: Any = None) -> Any:
        """Make a connection for the check's pool (the pool's ``creator``).

        :raises SharedConnectionError: if it is the application's one shared connection.
        """
        connecting = _Connecting(self._dialect, _connect_timeout.get())
        token = _connecting.set(connecting)
        try:
            connection = self._create(connection_record)
            if connecting.hooked or self._fresh:
                return connection
            try:
                again = self._create(connection_record)
            except BaseException:
                connection.close()  # a new one: ours
                raise
        finally:
            _connecting.reset(token)
        if again is connection:
            raise SharedConnectionError(self)
        self._fresh = True
        with contextlib.suppress(Exception):
            again.close()
        return connection

    def shared(self) -> Any:
        """Return the application's one shared connection (its creator's)."""
        return self._create(None)


def _takes_record(creator: Callable[..., Any]) -> bool:
    """Whether SQLAlchemy calls ``creator`` with the connection record, as a pool does."""
    try:
        parameters = list(inspect.signature(creator).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if [p.name for p in positional] == ["connection_record"]:
        return True
    return len([p for p in positional if p.default is inspect.Parameter.empty]) == 1


def _static_sqlite(engine: Engine) -> bool:
    """Whether ``engine`` is SQLite on a ``StaticPool``: one connection (and in it, for an
    in-memory database, the database itself) for everybody."""
    from sqlalchemy.pool import StaticPool

    return _is_sqlite(engine) and isinstance(engine.pool, StaticPool)


def _on_shared(raw: Any, dialect: Any, work: Callable[[Any, Any], T]) -> T:
    """Return ``work(raw, dialect)`` on a connection the application shares with the check,
    leaving its transaction as it was; a driver's error is raised as ``DBAPIError``."""
    from sqlalchemy.exc import DBAPIError

    began = _in_transaction(raw) is False
    try:
        return work(raw, dialect)
    except dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(None, None, exc, dialect.loaded_dbapi.Error) from exc
    finally:
        # End only a transaction that the check's statement began (psycopg begins one before
        # a query when none is open; sqlite3 does not for a SELECT).
        if began and _in_transaction(raw):
            with contextlib.suppress(Exception):
                raw.rollback()


def _in_transaction(raw: Any) -> bool | None:
    """Whether a DB-API connection is in a transaction; ``None`` when the driver does not say."""
    in_transaction = getattr(raw, "in_transaction", None)  # sqlite3
    if isinstance(in_transaction, bool):
        return in_transaction
    status = getattr(getattr(raw, "info", None), "transaction_status", None)  # psycopg2, psycopg
    if status is None:
        return None
    return int(status) != 0  # 0 is IDLE for both


def _select_one(connection: Connection) -> object:
    from sqlalchemy import text

    raw: Any = connection.connection.dbapi_connection
    if (
        connection.dialect.driver in _CONNECT_TIMEOUT_PARAMS
        and not connection.in_transaction()
        and raw.autocommit is False
    ):
        # One read needs no transaction: without one there is no BEGIN and no ROLLBACK to send
        # (psycopg2 sends each as a round trip of its own), just the SELECT. The driver's own
        # switch, set back before the connection returns to the pool: it sends nothing, where
        # a change of isolation level through SQLAlchemy sends a SET when it is undone.
        try:
            raw.autocommit = True
        except Exception:
            # A connection the server dropped: the SELECT below fails the way SQLAlchemy
            # recognises (and the check retries on a fresh connection).
            return connection.execute(text("SELECT 1")).scalar()
        try:
            return connection.execute(text("SELECT 1")).scalar()
        finally:
            try:
                raw.autocommit = False
            except Exception:
                # It must not go back to the pool in autocommit: it is closed instead.
                connection.invalidate()
    return connection.execute(text("SELECT 1")).scalar()


def _select_one_shared(raw: Any, dialect: Any) -> object:
    cursor = raw.cursor()
    try:
        cursor.execute("SELECT 1")
        return cursor.fetchone()[0]
    finally:
        cursor.close()


def _is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _copy_engine(source: Engine) -> Engine:
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import NullPool, Pool, QueuePool

    # The one thing added to the application's engine: a hook that makes the check's own
    # connections with the check's connect timeout, and lets the application's be.
    if not event.contains(source, "do_connect", _connect_for_check):
        event.listen(source, "do_connect", _connect_for_check)
    connector = _Connector(source)
    pool: Pool
    if _is_sqlite(source) or isinstance(source.pool, NullPool):
        # SQLite: a connection costs no server, and may not be used by other threads.
        pool = NullPool(connector.connect)
    else:
        pool = QueuePool(connector.connect, **_POOL_SIZE)
    _copy_connect_listeners(source.pool, pool)
    return create_engine(
        source.url, pool=pool, execution_options=dict(source.get_execution_options())
    )


def _copy_async_engine(source: AsyncEngine) -> AsyncEngine:
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool, Pool

    app = source.sync_engine
    creator = app.pool._creator  # as in _Connector: no public name gives it
    pool: Pool
    if isinstance(app.pool, NullPool):
        pool = NullPool(creator)
    else:
        pool = AsyncAdaptedQueuePool(creator, **_POOL_SIZE)
    _copy_connect_listeners(app.pool, pool)
    return create_async_engine(
        source.url, pool=pool, execution_options=dict(app.get_execution_options())
    )


# The checks' own pool: one connection per check that uses it (two with the migrations check),
# room for runs that overlap, and no long wait for one.
_POOL_SIZE: dict[str, Any] = {"pool_size": 2, "max_overflow": 8, "timeout": 10}


def _copy_connect_listeners(source: Any, pool: Any) -> None:
    """Add the ``connect`` listeners of the application's pool to the check's.

    They set a connection up the way the application's queries see the database (isolation
    level, search_path, role, time zone, type adapters); the pool's other listeners (checkout,
    checkin, reset, close...) watch the application's own pool, and are left out.
    """
    from sqlalchemy import event

    everywhere = list(pool.dispatch.connect)  # class-level listeners: every pool runs them
    for listener in list(source.dispatch.connect):
        if listener not in everywhere:
            event.listen(pool, "connect", listener)
