"""A PostgreSQL check straight through asyncpg: does the server answer ``SELECT 1``?

Message IDs. Whether the check could reach a usable session decides between the two:

* :data:`~dockerflow.health.ERROR_CANNOT_CONNECT_DATABASE` (``E001``), the connection failed: the
  server refused or did not answer in time (``OSError``, a timeout), it rejected the role or
  password (SQLSTATE class ``28``), the database does not exist (``3D000``), too many connections
  (``53300``), the server is starting or shutting down (``57P01`` to ``57P05``), or the connection
  broke (class ``08``);
* :data:`~dockerflow.health.ERROR_MISCONFIGURED_DATABASE` (``E003``), asyncpg rejected the DSN or
  the connection options (``ValueError``, such as ``ClientConfigurationError``);
* :data:`~dockerflow.health.ERROR_DB_API_EXCEPTION` (``E008``), connected but the query failed:
  any other PostgreSQL error or asyncpg interface error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from typing import Any

import anyio

from .. import health
from ..health import CheckMessage
from ..masking import mask_secrets
from ._support import Bounded, PerLoop, failure, is_driver_failure, requires

# SQLSTATEs (and classes of two characters) that mean "could not get a usable connection".
_CONNECTION_SQLSTATES = frozenset(
    {"08", "28", "3D000", "53300", "57P01", "57P02", "57P03", "57P04", "57P05"}
)


class AsyncpgCheck(Bounded):
    """An async check that runs ``SELECT 1`` on PostgreSQL through an asyncpg pool.

    Built from a DSN, it makes one small pool (``min_size=1``, ``max_size=2``) on the running event
    loop the first time it runs, and uses it heartbeat after heartbeat. asyncpg connections belong
    to the loop that opened them, so on another loop (such as the one a forked child starts) it
    makes a fresh pool for that loop and never touches the old one. A pool that fails to open is
    not kept: the next heartbeat tries again. A pooled connection that the server dropped (after a
    restart or failover) is discarded and the query retried once on a fresh one.

    Built from a pool, it uses that pool as it is, which must belong to the loop the checks run on
    (create it there: ``engine.bridge.call(asyncpg.create_pool, dsn)``); :meth:`close` leaves it
    open.

    :param dsn: a ``postgresql://`` or ``postgres://`` DSN. A SQLAlchemy URL naming a driver
        (``postgresql+asyncpg://``) is taken without it.
    :param pool: an ``asyncpg.Pool`` to use instead of a DSN.
    :param timeout: the timeout the check runs under, in seconds (default 3). Connecting,
        waiting for a pooled connection and the query are each bounded a little under it
        (:func:`~dockerflow.integrations.driver_timeout`, 2.5 s for 3 s), so that a slow server
        is reported as ``E001`` with asyncpg's message rather than as the engine's timeout. The
        Flask extension sets it from ``DOCKERFLOW_CHECK_TIMEOUT`` when it is not given.
    :param connect_kwargs: more arguments for ``asyncpg.create_pool``, such as
        ``server_settings={"application_name": "web-heartbeat"}``.
    :raises TypeError: unless exactly one of ``dsn`` and ``pool`` is given.
    :raises ValueError: if ``dsn`` is not a PostgreSQL URL.
    :raises CheckRegistrationError: if ``timeout`` is not a positive number.
    :raises MissingDependencyError: if asyncpg is not installed.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: Any = None,
        timeout: float | None = None,
        **connect_kwargs: Any,
    ) -> None:
        super().__init__(timeout)
        if (dsn is None) == (pool is None):
            raise TypeError("AsyncpgCheck takes either a dsn or a pool")
        if pool is not None and connect_kwargs:
            raise TypeError("connection arguments apply to a dsn, not to a given pool")
        with requires("asyncpg", extra="postgres"):
            import asyncpg  # noqa: F401 - fail here, where the check is made, not at a heartbeat
        self.dsn = None if dsn is None else _asyncpg_dsn(dsn)
        self._pool = pool
        # A given pool belongs to the process (and loop) that opened it.
        self._pool_pid = os.getpid()
        self._connect_kwargs: Mapping[str, Any] = connect_kwargs
        # asyncpg connections belong to the loop that opened them: one pool per loop, closed
        # when its loop ends.
        # A pool of a loop closed without closing it is terminated: its connections end on the
        # server's side at once (the loop can no longer close them properly).
        self._pools: PerLoop[Any] = PerLoop(
            lambda pool: pool.close(), lambda pool: pool.terminate()
        )

    async def __call__(self) -> list[CheckMessage]:
        """Run ``SELECT 1`` and return no message, or one :class:`~dockerflow.checks.Error`."""
        with requires("asyncpg", extra="postgres"):
            import asyncpg
        misplaced = self._misplaced_pool()
        if misplaced:
            return [health.Error(misplaced, id=health.ERROR_MISCONFIGURED_DATABASE)]
        try:
            # One bound for opening the pool, acquiring and querying together.
            with anyio.fail_after(self.driver_timeout):
                await self._select_one(await self.get_pool())
        except ValueError as exc:  # a bad DSN or option (ClientConfigurationError is one)
            return [failure("Database misconfigured", exc, health.ERROR_MISCONFIGURED_DATABASE)]
        except (OSError, asyncio.TimeoutError) as exc:
            if not str(exc):  # a timeout, which says nothing of itself
                exc = TimeoutError(f"no answer within {self.driver_timeout:g}s")
            return [
                failure("Cannot connect to database", exc, health.ERROR_CANNOT_CONNECT_DATABASE)
            ]
        except asyncpg.PostgresError as exc:
            if _is_connection_error(exc):
                return [
                    failure("Cannot connect to database", exc, health.ERROR_CANNOT_CONNECT_DATABASE)
                ]
            return [failure("Database error", exc, health.ERROR_DB_API_EXCEPTION)]
        except (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError) as exc:
            return [failure("Database error", exc, health.ERROR_DB_API_EXCEPTION)]
        except BaseException as exc:  # a CancelledError asyncpg raised, say
            if isinstance(exc, Exception) or not is_driver_failure(exc):
                raise
            return [failure("Database error", exc, health.ERROR_DB_API_EXCEPTION)]
        return []

    def _misplaced_pool(self) -> str:
        """Say why a given pool cannot be used here, or ``""``: its connections belong to the
        process and the event loop that opened it (asyncpg itself would only say "another
        operation is in progress")."""
        if self._pool is None:
            return ""
        if os.getpid() != self._pool_pid:
            return (
                "Database misconfigured: the asyncpg pool given to AsyncpgCheck was opened in "
                f"the parent process (pid {self._pool_pid}) and cannot be used in this forked "
                "one; pass dsn= so that each process opens its own pool"
            )
        # asyncpg keeps no public record of a pool's loop; "_loop" has been its name throughout.
        loop = getattr(self._pool, "_loop", None)
        if loop is not None and loop is not asyncio.get_running_loop():
            return (
                "Database misconfigured: the asyncpg pool given to AsyncpgCheck belongs to "
                "another event loop than the one the check runs on; create it on that loop "
                "(engine.bridge.call(asyncpg.create_pool, dsn) for sync callers) or pass dsn="
            )
        return ""

    async def _select_one(self, pool: Any) -> None:
        import asyncpg

        for attempt in (1, 2):
            async with pool.acquire(timeout=self.driver_timeout) as connection:
                try:
                    await connection.fetchval("SELECT 1", timeout=self.driver_timeout)
                    return
                except Exception as exc:
                    if attempt == 2 or not _is_dropped_connection(exc):
                        raise
                    # The server dropped this pooled connection (restart, failover, idle
                    # timeout) and asyncpg may notice only now: discard it, try a fresh one.
                    # asyncpg may have handed a lost connection back to the pool already.
                    with contextlib.suppress(asyncpg.InterfaceError):
                        connection.terminate()

    async def get_pool(self) -> Any:
        """Return the pool for the running event loop, opening it first if needed.

        :raises OSError, asyncio.TimeoutError, asyncpg.PostgresError: if the pool cannot open.
        """
        if self._pool is not None:
            return self._pool
        return await self._pools.get(self._open_pool)

    async def close(self) -> None:
        """Close the running loop's pool, if this check opened it.

        Run it on the loop the checks run on: ``engine.bridge.call(check.close)``. A later heartbeat
        opens a new pool.
        """
        # Only the loop that opened a pool may close it; other loops' pools are left alone.
        await self._pools.discard()

    async def _open_pool(self) -> Any:
        import asyncpg

        # On failure (or cancellation) asyncpg closes the pool's connections itself.
        return await asyncpg.create_pool(
            self.dsn,
            min_size=1,
            max_size=2,
            timeout=self.driver_timeout,
            command_timeout=self.driver_timeout,
            **self._connect_kwargs,
        )

    def __repr__(self) -> str:
        target = (
            f"dsn={mask_secrets(repr(self.dsn))}"
            if self.dsn is not None
            else f"pool={self._pool!r}"
        )
        return f"AsyncpgCheck({target}, timeout={self.timeout!r})"


def _asyncpg_dsn(dsn: str) -> str:
    """Return ``dsn`` without a SQLAlchemy driver name; reject what is not PostgreSQL's."""
    if not isinstance(dsn, str):
        raise TypeError(f"AsyncpgCheck takes a DSN string, got {type(dsn).__name__}")
    scheme, sep, rest = dsn.partition("://")
    dialect, _, _driver = scheme.partition("+")
    if not sep or dialect.lower() not in ("postgresql", "postgres"):
        raise ValueError(f"AsyncpgCheck takes a postgresql:// DSN, got {mask_secrets(repr(dsn))}")
    # SQLAlchemy's postgresql+asyncpg:// (or +psycopg...): asyncpg knows only postgresql://.
    return f"{dialect}{sep}{rest}"


def _is_connection_error(exc: BaseException) -> bool:
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return sqlstate in _CONNECTION_SQLSTATES or sqlstate[:2] in _CONNECTION_SQLSTATES


def _is_dropped_connection(exc: BaseException) -> bool:
    import asyncpg

    if isinstance(exc, (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)):
        return True
    return isinstance(exc, asyncpg.PostgresError) and _is_connection_error(exc)
