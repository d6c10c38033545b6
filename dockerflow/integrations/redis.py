"""Redis checks: does the server answer ``PING``?

:func:`check_redis_connected` and :func:`check_redis_connected_async` are python-dockerflow's
check: they call ``ping()`` on the object they are given (a client, a Flask-Redis store, a test's
patched double), with its connection pool, timeouts and retry policy. Message IDs, those of
python-dockerflow:

* ``redis.ConnectionError`` (which includes authentication errors) →
  :data:`~dockerflow.health.ERROR_CANNOT_CONNECT_REDIS` (``E004``);
* any other ``redis.RedisError`` → :data:`~dockerflow.health.ERROR_REDIS_EXCEPTION` (``E010``);
* a falsy reply to ``PING`` → :data:`~dockerflow.health.ERROR_REDIS_PING_FAILED` (``E007``);
* a Flask-Redis store whose ``init_app`` was never called →
  :data:`~dockerflow.health.ERROR_MISSING_REDIS_CLIENT` (``E005``).

:func:`redis_check` is what :func:`~dockerflow.integrations.builtin_checks` registers, a
:class:`RedisCheck` or :class:`AsyncRedisCheck`. Its ``PING`` is bounded by a little less than the
check's timeout (:func:`~dockerflow.integrations.driver_timeout`), so that a server that refuses
connections is reported at once and one that stops answering within the timeout, both as
``E004``, and the check passes again as soon as the server answers:

* for a redis-py client on a plain TCP, TLS or Unix socket connection, the check pings through a
  client of its own made from the client's connection settings (host, port, database, password,
  TLS, client name...), with ``socket_connect_timeout`` and ``socket_timeout`` set to that bound
  and no retries. It holds **one** connection per worker process (per event loop for an asyncio
  client), opened at the first heartbeat and kept. Runs of one check may overlap (a stuck run
  being replaced; one check in two applications): a ping in flight when the own client is
  replaced (a new timeout, a new client given) or released finishes on it, and the last such
  ping closes it;
* any other client (a cluster or Sentinel client, a test double, one whose ``ping`` was
  replaced on the instance or by a subclass) is pinged as it is, bounded by its own timeouts;
  an asyncio one is cancelled at the bound. A blocking client of redis-py without a
  ``socket_timeout`` under the check's timeout is then logged once per check (however many runs
  find it at the same time), as a warning on
  ``dockerflow.integrations``: a server that stops answering holds the check's thread until
  the operating system gives up on the socket.

A ``redis.TimeoutError`` (no answer within the bound) is ``E004`` in these checks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from typing import Any

import anyio

from .. import health
from ..engine import CheckFunction, after_fork_in_child
from ..health import CheckData, CheckMessage, Error
from ..masking import masked_repr
from ._support import Bounded, PerLoop, failure, is_driver_failure, requires

logger = logging.getLogger("dockerflow.integrations")

_ACCEPTED = "a redis.Redis, a redis.asyncio.Redis or a Flask-Redis store"
_NOT_SET = object()
_CANNOT_CONNECT = "Could not connect to redis"
# Keys of a redis-py pool's connection settings that belong to that pool, not to a connection.
_POOL_OWN_PREFIXES = ("maint_notifications", "orig_")


def check_redis_connected(client: Any) -> list[CheckMessage]:
    """Check that Redis answers ``PING``: python-dockerflow's check, blocking.

    :param client: a ``redis.Redis`` (or ``redis.RedisCluster``), a Flask-Redis ``FlaskRedis``
        store, or anything with a blocking ``ping()``; its ``ping()`` is called.
    :returns: no message if Redis answered, else one :class:`~dockerflow.checks.Error` (see the
        module for the IDs).
    :raises MissingDependencyError: if redis-py is not installed.
    :raises TypeError: if ``client`` is an asyncio client (use
        :func:`check_redis_connected_async`).
    """
    with requires("redis", extra="redis"):
        import redis
    if _is_empty_store(client):
        return [_missing_client()]
    try:
        reply = _pingable(client, _client_of(client)).ping()
    except redis.ConnectionError as exc:
        return [failure(_CANNOT_CONNECT, exc, health.ERROR_CANNOT_CONNECT_REDIS)]
    except redis.RedisError as exc:
        return [failure("Redis error", exc, health.ERROR_REDIS_EXCEPTION)]
    except BaseException as exc:  # a CancelledError the client raised, say
        if isinstance(exc, Exception) or not is_driver_failure(exc):
            raise
        return [failure("Redis error", exc, health.ERROR_REDIS_EXCEPTION)]
    if asyncio.iscoroutine(reply):
        reply.close()  # never awaited: close it so Python does not warn about it
        raise TypeError(
            f"{masked_repr(client)} is an asyncio client: use check_redis_connected_async"
        )
    return _reply(reply)


async def check_redis_connected_async(client: Any) -> list[CheckMessage]:
    """Check that Redis answers ``PING`` through an asyncio client.

    The same check and message IDs as :func:`check_redis_connected`. The client's connections
    belong to the event loop that opened them: give the check a client that only dockerflow's
    loop uses.

    :param client: a ``redis.asyncio.Redis`` (or ``redis.asyncio.RedisCluster``), or a Flask-Redis
        store that wraps one; its ``ping()`` is awaited.
    :returns: no message if Redis answered, else one :class:`~dockerflow.checks.Error`.
    :raises MissingDependencyError: if redis-py is not installed.
    """
    with requires("redis", extra="redis"):
        import redis
    if _is_empty_store(client):
        return [_missing_client()]
    try:
        reply = await _pingable(client, _client_of(client)).ping()
    except redis.ConnectionError as exc:
        return [failure(_CANNOT_CONNECT, exc, health.ERROR_CANNOT_CONNECT_REDIS)]
    except redis.RedisError as exc:
        return [failure("Redis error", exc, health.ERROR_REDIS_EXCEPTION)]
    except BaseException as exc:  # a CancelledError the client raised, say
        if isinstance(exc, Exception) or not is_driver_failure(exc):
            raise
        return [failure("Redis error", exc, health.ERROR_REDIS_EXCEPTION)]
    return _reply(reply)


def redis_check(client: Any, *, timeout: float | None = None) -> CheckFunction:
    """Return the Redis check for ``client``: async for an asyncio client, sync otherwise.

    :param client: a ``redis.Redis`` or ``redis.asyncio.Redis`` (or a cluster client), a
        Flask-Redis store (its client is looked up at each check, so ``init_app`` may come
        later), or anything with a blocking ``ping()``.
    :param timeout: the timeout the check runs under, in seconds (default 3); ``PING`` is
        bounded a little under it. The Flask extension sets it from ``DOCKERFLOW_CHECK_TIMEOUT``
        when it is not given.
    :returns: an :class:`AsyncRedisCheck` for an asyncio client, else a :class:`RedisCheck`.
    :raises TypeError: if ``client`` has no ``ping()``.
    :raises MissingDependencyError: if redis-py is not installed.
    :raises CheckRegistrationError: if ``timeout`` is not a positive number of seconds.
    """
    with requires("redis", extra="redis"):
        import redis.asyncio
    if client is None:
        raise TypeError(f"a Redis check takes {_ACCEPTED}; got None")
    target = _client_of(client)
    if isinstance(target, (redis.asyncio.Redis, redis.asyncio.RedisCluster)):
        return AsyncRedisCheck(client, timeout=timeout)
    if target is not None and not callable(getattr(target, "ping", None)):
        raise TypeError(f"a Redis check takes {_ACCEPTED}; got {masked_repr(client)}")
    return RedisCheck(client, timeout=timeout)


class _Own:
    """The check's own client, what it was made from and with, and the pings using it now.

    Runs of one check may overlap (a stuck run being replaced, one check in two apps): a client
    that is replaced, or released, while a ping is in flight on it is closed by its last user.
    """

    def __init__(self, target: Any, bound: float, client: Any) -> None:
        self.target = target
        self.bound = bound
        self.client = client
        self.users = 0
        self.retired = False

    def fits(self, target: Any, bound: float) -> bool:
        return self.target is target and self.bound == bound

    def retire(self) -> bool:
        """Mark it replaced; return whether it is unused, to be closed now."""
        self.retired = True
        return self.users == 0

    def leave(self) -> bool:
        """One ping is done with it; return whether it is to be closed now."""
        self.users -= 1
        return self.retired and self.users == 0


class RedisCheck(Bounded):
    """The blocking Redis check, bounded by its timeout (see the module).

    :param client: as for :func:`redis_check`.
    :param timeout: the check's timeout in seconds (default 3).
    """

    def __init__(self, client: Any, *, timeout: float | None = None) -> None:
        super().__init__(timeout)
        self.client = client
        # Runs of the check may overlap, in threads: the lock guards _own and _warned.
        self._lock = threading.Lock()
        self._own: _Own | None = None
        self._warned = False
        # The server's version, read once through the own client; forgotten on a failure
        # (the server may come back upgraded).
        self._version: str | None = None
        # Its connections are closed when the check is let go, or by close().
        weakref.finalize(self, _close_own, self.__dict__)
        after_fork_in_child(self, RedisCheck._forget_inherited)

    def _forget_inherited(self) -> None:
        # In a forked child: the lock may have been held by a thread of the parent, and the own
        # client's connections are the parent's (redis-py drops them untouched in a child).
        self._lock = threading.Lock()
        self._own = None

    def __call__(self) -> list[CheckMessage | CheckData]:
        """Ping Redis; return no message, or one :class:`~dockerflow.checks.Error`; an answer
        also gives the values ``round_trip`` (seconds) and, through the check's own client,
        ``server_version`` (read once, again after a failure)."""
        with requires("redis", extra="redis"):
            import redis
        target = _client_of(self.client)
        if target is None:
            return [_missing_client()]
        own = self._use_own_client(target)
        if own is None:
            self._warn_if_unbounded(target)
        pinged = own.client if own is not None else _pingable(self.client, target)
        self._version, version = None, self._version
        try:
            started = time.perf_counter()
            reply = pinged.ping()
            round_trip = time.perf_counter() - started
            if reply and own is not None and not asyncio.iscoroutine(reply):
                version = version or _read_version(own.client)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            return [failure(_CANNOT_CONNECT, exc, health.ERROR_CANNOT_CONNECT_REDIS)]
        except redis.RedisError as exc:
            return [failure("Redis error", exc, health.ERROR_REDIS_EXCEPTION)]
        except BaseException as exc:  # a CancelledError the client raised, say
            if isinstance(exc, Exception) or not is_driver_failure(exc):
                raise
            return [failure("Redis error", exc, health.ERROR_REDIS_EXCEPTION)]
        finally:
            if own is not None:
                self._done_with(own)
        if asyncio.iscoroutine(reply):
            reply.close()  # never awaited: close it so Python does not warn about it
            raise TypeError(f"{masked_repr(target)} is an asyncio client: use AsyncRedisCheck")
        self._version = version
        return [*_reply(reply), *_data(round_trip, version)]

    def _use_own_client(self, target: Any) -> _Own | None:
        """Return the own client for ``target``, counted as in use, or ``None`` to ping as given."""
        import redis

        bound = self.driver_timeout
        retired = None
        with self._lock:
            own = self._own
            if own is None or not own.fits(target, bound):
                if own is not None and own.retire():
                    retired = own
                own = self._own = None
                if isinstance(target, redis.Redis) and not _pinged_as_given(
                    self.client, target, redis.Redis
                ):
                    pool = _bounded_pool(redis, target, bound)
                    if pool is not None:
                        own = self._own = _Own(target, bound, redis.Redis.from_pool(pool))
            if own is not None:
                own.users += 1
        if retired is not None:
            retired.client.close()
        return own

    def _done_with(self, own: _Own) -> None:
        with self._lock:
            close = own.leave()
        if close:
            own.client.close()

    def _warn_if_unbounded(self, target: Any) -> None:
        import redis

        if self._warned or not isinstance(target, redis.Redis):
            return
        settings = getattr(getattr(target, "connection_pool", None), "connection_kwargs", {})
        socket_timeout = settings.get("socket_timeout")
        if socket_timeout is not None and socket_timeout < self.timeout:
            return
        with self._lock:  # runs in several threads at once must log it once
            warned, self._warned = self._warned, True
        if not warned:
            logger.warning(
                "The Redis check pings %s as it is, and its socket_timeout (%s) is not under "
                "the check's timeout (%gs): a server that stops answering holds the check's "
                "thread. Give the client a socket_timeout.",
                masked_repr(target),
                socket_timeout,
                self.timeout,
            )

    def close(self) -> None:
        """Close the connections of the check's own client, once no ping uses it any more.

        A later check opens new ones.
        """
        with self._lock:
            own, self._own = self._own, None
            close = own is not None and own.retire()
        if close:
            assert own is not None
            own.client.close()

    def __repr__(self) -> str:
        return f"RedisCheck({masked_repr(self.client)}, timeout={self.timeout:g})"


def _close_own(attributes: dict[str, Any]) -> None:
    # The finalizer of a RedisCheck: given the check's __dict__, never the check itself.
    own = attributes.get("_own")
    if own is not None:
        own.client.close()


class AsyncRedisCheck(Bounded):
    """The asyncio Redis check, bounded by its timeout (see the module).

    The connections of an asyncio client belong to the event loop that opened them: the check's
    own client is made per loop. When it pings the given client as it is, on another loop than
    last time (a forked worker, a restarted loop), it first drops that client's pooled
    connections, untouched.

    :param client: a ``redis.asyncio.Redis`` or a Flask-Redis store wrapping one.
    :param timeout: the check's timeout in seconds (default 3).
    """

    def __init__(self, client: Any, *, timeout: float | None = None) -> None:
        super().__init__(timeout)
        self.client = client
        # The check's own client per loop, closed when its loop ends (once no ping uses it).
        self._own: PerLoop[_Own] = PerLoop(_retire_async)
        # A strong reference: the id of a collected loop may be reused by the next loop.
        self._last_loop: asyncio.AbstractEventLoop | None = None
        # As RedisCheck's: read once through the own client, forgotten on a failure.
        self._version: str | None = None

    async def __call__(self) -> list[CheckMessage | CheckData]:
        """Ping Redis; return no message, or one :class:`~dockerflow.checks.Error`; an answer
        also gives the values ``round_trip`` and ``server_version``, as :class:`RedisCheck`'s."""
        with requires("redis", extra="redis"):
            import redis
        target = _client_of(self.client)
        if target is None:
            return [_missing_client()]
        loop = asyncio.get_running_loop()
        own = await self._use_own_client(target)
        if own is None and self._last_loop is not None and self._last_loop is not loop:
            # The pooled connections belong to the loop the client last ran on (a forked
            # child's parent's, or a stopped one): drop them untouched.
            pool = getattr(target, "connection_pool", None)
            if pool is not None:
                pool.reset()
        self._last_loop = loop
        bound = self.driver_timeout
        self._version, version = None, self._version
        try:
            with anyio.fail_after(bound):
                pinged = own.client if own is not None else _pingable(self.client, target)
                started = time.perf_counter()
                reply = await pinged.ping()
                round_trip = time.perf_counter() - started
                if reply and own is not None:
                    version = version or await _read_version_async(own.client)
        except TimeoutError as exc:
            # anyio's own timeout, or redis.TimeoutError (which is not a builtin TimeoutError).
            error = exc if str(exc) else TimeoutError(f"no answer within {bound:g}s")
            return [failure(_CANNOT_CONNECT, error, health.ERROR_CANNOT_CONNECT_REDIS)]
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            return [failure(_CANNOT_CONNECT, exc, health.ERROR_CANNOT_CONNECT_REDIS)]
        except redis.RedisError as exc:
            return [failure("Redis error", exc, health.ERROR_REDIS_EXCEPTION)]
        except BaseException as exc:  # a CancelledError the client raised, say
            if isinstance(exc, Exception) or not is_driver_failure(exc):
                raise
            return [failure("Redis error", exc, health.ERROR_REDIS_EXCEPTION)]
        finally:
            if own is not None and own.leave():
                # The last user of a replaced client closes it; not cut short by a cancel.
                with anyio.CancelScope(shield=True):
                    await own.client.aclose()
        self._version = version
        return [*_reply(reply), *_data(round_trip, version)]

    async def _use_own_client(self, target: Any) -> _Own | None:
        """Return the running loop's own client for ``target``, counted as in use, or ``None``
        to ping the client as given."""
        import redis.asyncio

        bound = self.driver_timeout
        # No await between looking at the loop's client and counting its use: coroutines of
        # the loop take turns only at an await.
        own = self._own.current()
        if own is not None and own.fits(target, bound):
            own.users += 1
            return own
        if own is not None:
            await self._own.discard()  # retired: closed now if unused, else by its last user
        if not isinstance(target, redis.asyncio.Redis) or _pinged_as_given(
            self.client, target, redis.asyncio.Redis
        ):
            return None
        pool = _bounded_pool(redis.asyncio, target, bound)
        if pool is None:
            return None

        async def make() -> _Own:
            return _Own(target, bound, redis.asyncio.Redis.from_pool(pool))

        own = await self._own.get(make)
        if not own.fits(target, bound):  # another run made one meanwhile, for another bound
            return None
        own.users += 1
        return own

    async def close(self) -> None:
        """Close the running loop's own client (once no ping uses it); run it on the loop the
        checks run on."""
        # Only the loop that opened a client's connections may close them.
        await self._own.discard()

    def __repr__(self) -> str:
        return f"AsyncRedisCheck({masked_repr(self.client)}, timeout={self.timeout:g})"


async def _retire_async(own: _Own) -> None:
    if own.retire():
        await own.client.aclose()


def _bounded_pool(module: Any, target: Any, bound: float) -> Any:
    """Return a pool with ``target``'s connection settings, ``bound`` timeouts and no retries.

    ``module`` is ``redis`` or ``redis.asyncio``; ``None`` when ``target``'s connections are not
    redis-py's plain TCP, TLS or Unix socket ones (Sentinel, a test double's...).
    """
    from redis.backoff import NoBackoff

    pool = getattr(target, "connection_pool", None)
    plain = (module.Connection, module.SSLConnection, module.UnixDomainSocketConnection)
    if pool is None or type(pool) is not module.ConnectionPool:
        return None
    if pool.connection_class not in plain:
        return None
    settings = {
        key: value
        for key, value in pool.connection_kwargs.items()
        if not key.startswith(_POOL_OWN_PREFIXES)
    }
    settings.update(
        socket_timeout=bound,
        socket_connect_timeout=bound,
        retry=module.retry.Retry(NoBackoff(), 0),
        retry_on_error=[],
    )
    return module.ConnectionPool(connection_class=pool.connection_class, **settings)


def _pinged_as_given(client: Any, target: Any, base: Any) -> bool:
    # A ping replaced on the instance (a test's patch) or by a subclass is what the user wants
    # called: only redis-py's own ping may be sent through the check's own client.
    return (
        "ping" in getattr(client, "__dict__", {})
        or "ping" in getattr(target, "__dict__", {})
        or getattr(type(target), "ping", None) is not base.ping
    )


def _pingable(client: Any, target: Any) -> Any:
    # A Flask-Redis store passes ping() on to its client (or to a test's patch of it).
    return client if callable(getattr(client, "ping", None)) else target


def _reply(reply: object) -> list[CheckMessage]:
    return [] if reply else [Error("Redis ping failed", id=health.ERROR_REDIS_PING_FAILED)]


def _data(round_trip: float, version: str | None) -> list[CheckData]:
    data = [CheckData("round_trip", round(round_trip, 6), unit="s")]
    if version is not None:
        data.append(CheckData("server_version", version))
    return data


def _read_version(client: Any) -> str | None:
    # INFO may be refused (an ACL, a renamed command): the version is left out, the check
    # passes all the same.
    import redis

    try:
        return _server_version(client.info("server"))
    except redis.RedisError:
        return None


async def _read_version_async(client: Any) -> str | None:
    import redis

    try:
        return _server_version(await client.info("server"))
    except redis.RedisError:
        return None


def _server_version(info: object) -> str | None:
    version = info.get("redis_version") if isinstance(info, dict) else None
    return None if version is None else str(version)


def _client_of(client: Any) -> Any:
    # A Flask-Redis store keeps its client in _redis_client, None until init_app.
    inner = getattr(client, "_redis_client", _NOT_SET)
    return client if inner is _NOT_SET else inner


def _is_empty_store(client: Any) -> bool:
    return getattr(client, "_redis_client", _NOT_SET) is None


def _missing_client() -> CheckMessage:
    return Error(
        "Redis client not set up: the Flask-Redis store has no client (call its init_app)",
        id=health.ERROR_MISSING_REDIS_CLIENT,
    )
