"""Built-in checks for the services a Dockerflow application usually depends on.

One module per integration, each importing its driver only when a check is made or run, so that
importing this package needs none of them; a missing driver raises
:class:`~dockerflow.integrations.MissingDependencyError`, naming the extra to install.

========================  =====================================================================
module                    checks
========================  =====================================================================
:mod:`.sqlalchemy`        ``SELECT 1`` through a SQLAlchemy ``Engine`` or ``AsyncEngine``
:mod:`.asyncpg`           ``SELECT 1`` through an asyncpg pool
:mod:`.redis`             ``PING`` through ``redis.Redis`` or ``redis.asyncio.Redis``
:mod:`.alembic`           the database's migration heads against the scripts'
:mod:`.http`              an HTTP dependency's status, through httpx
:mod:`.disk`              free space on a file system
========================  =====================================================================
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

from .._errors import MissingDependencyError
from ..engine import CheckFunction
from ._support import bounded_parts, driver_timeout
from .alembic import UnboundMigrationsCheck, check_migrations_applied, migrations_check
from .asyncpg import AsyncpgCheck
from .disk import DiskSpaceCheck, disk_space_check
from .http import HttpCheck, http_check
from .redis import (
    AsyncRedisCheck,
    RedisCheck,
    check_redis_connected,
    check_redis_connected_async,
    redis_check,
)
from .sqlalchemy import (
    AsyncCheckEngine,
    CheckEngine,
    check_database_connected,
    check_database_connected_async,
    check_engine,
    database_check,
)

__all__ = [
    "AsyncCheckEngine",
    "AsyncRedisCheck",
    "AsyncpgCheck",
    "CheckEngine",
    "DiskSpaceCheck",
    "HttpCheck",
    "MissingDependencyError",
    "RedisCheck",
    "UnboundMigrationsCheck",
    "builtin_checks",
    "check_database_connected",
    "check_database_connected_async",
    "check_engine",
    "check_migrations_applied",
    "check_redis_connected",
    "check_redis_connected_async",
    "database_check",
    "disk_space_check",
    "driver_timeout",
    "follow_timeout",
    "http_check",
    "migrations_check",
    "redis_check",
    "release",
]


def builtin_checks(
    *,
    db: object = None,
    redis: object = None,
    migrate: object = None,
    timeout: float | None = None,
) -> list[tuple[str, CheckFunction]]:
    """Return the built-in checks for the given services, under python-dockerflow's names.

    ``check_database_connected`` for ``db`` (:func:`database_check`), ``check_redis_connected``
    for ``redis`` (:func:`redis_check`) and ``check_migrations_applied`` for ``migrate``
    (:func:`migrations_check`); a service left ``None`` gets no check. When ``migrate.db`` is
    ``db``, both database checks share one :class:`CheckEngine`, so one pool of the checks' own.

    The checks of a Flask-SQLAlchemy ``db`` or a Flask-Migrate ``migrate`` need an application
    context when they run (``db.engine``, ``migrate.get_config()``).

    :param db: a Flask-SQLAlchemy ``SQLAlchemy`` object, or a SQLAlchemy ``Engine`` or
        ``AsyncEngine``.
    :param redis: a ``redis.Redis`` or ``redis.asyncio.Redis``, or a Flask-Redis store.
    :param migrate: a ``flask_migrate.Migrate``; one made without its database (``Migrate()``
        of an application factory) gets an :class:`UnboundMigrationsCheck`, made into the check
        once ``migrate.init_app(app, db)`` has run.
    :param timeout: the timeout the checks run under, in seconds (default 3): their driver calls
        are bounded a little under it. Left ``None``, :func:`follow_timeout` may set it later.
    :returns: ``(name, function)`` pairs, in that order.
    :raises TypeError: if a service is of a type that no check takes (the message names the
        argument).
    :raises MissingDependencyError: if a service's driver is not installed (the message names
        the argument, the module that failed to import and the extra to install).
    """
    checks: list[tuple[str, CheckFunction]] = []
    engine = None
    if db is not None:
        with _argument("db"):
            engine = check_engine(db, timeout=timeout)
            checks.append(("check_database_connected", database_check(engine)))
    if redis is not None:
        with _argument("redis"):
            checks.append(("check_redis_connected", redis_check(redis, timeout=timeout)))
    if migrate is not None:
        with _argument("migrate"):
            checks.append(("check_migrations_applied", _migrations(migrate, db, engine, timeout)))
    return checks


def _migrations(
    migrate: object, db: object, engine: object, timeout: float | None
) -> CheckFunction:
    # Both database checks share one CheckEngine when migrate.db is db, also for a Migrate()
    # whose database is set later (migrate.init_app(app, db)).
    def make(bound: float | None) -> CheckFunction:
        shared = engine if db is not None and getattr(migrate, "db", None) is db else None
        return migrations_check(migrate=migrate, engine=shared, timeout=bound)

    if getattr(migrate, "db", None) is None and hasattr(migrate, "init_app"):
        return UnboundMigrationsCheck(migrate, make, timeout=timeout)
    return make(timeout)


@contextlib.contextmanager
def _argument(name: str) -> Iterator[None]:
    """Name the argument of ``Dockerflow(...)`` in the errors raised by the block."""
    where = f"Dockerflow({name}=...)"
    try:
        yield
    except MissingDependencyError as exc:
        raise MissingDependencyError.from_import_error(exc, exc.package, exc.extra, where) from exc
    except TypeError as exc:
        raise TypeError(f"{where}: {exc}") from exc


def follow_timeout(func: object, seconds: float) -> None:
    """Bound a built-in check's driver calls by ``seconds``, the timeout it runs under.

    Only a check whose timeout was not given when it was made follows; when it is told several
    timeouts (one extension serving applications with different ``DOCKERFLOW_CHECK_TIMEOUT``),
    it keeps the smallest. Any other function is left alone.

    :param func: a check function, as returned by :func:`builtin_checks`, or any other.
    :param seconds: the check's timeout in seconds.
    :raises CheckRegistrationError: if ``seconds`` is not a positive number of seconds.
    """
    for part in bounded_parts(func):
        part.follow(seconds)


async def release(func: object) -> None:
    """Close the connections a built-in check keeps open (its own pools); a no-op otherwise.

    Run it on the loop the checks ran on, e.g. ``engine.bridge.call(release, func)``:
    connections of async drivers may only be closed by the loop that opened them. A check that
    runs again afterwards opens new connections.

    :param func: a check function, as returned by :func:`builtin_checks`, or any other.
    """
    for part in _parts(func):
        if isinstance(part, UnboundMigrationsCheck):
            if part.bound is not None:
                await release(part.bound)
        elif isinstance(part, CheckEngine):
            part.dispose()
        elif isinstance(part, RedisCheck):
            part.close()
        elif isinstance(part, AsyncCheckEngine):
            await part.dispose()
        elif isinstance(part, (AsyncpgCheck, AsyncRedisCheck, HttpCheck)):
            await part.close()


def _parts(func: object) -> list[object]:
    # A built-in check is a check object, or a partial whose arguments hold one.
    return [func, *func.args] if isinstance(func, functools.partial) else [func]
