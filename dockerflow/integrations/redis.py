"""Redis checks: does the server answer ``PING``?

Message IDs, those of python-dockerflow:

* ``redis.ConnectionError`` (which includes authentication errors) or ``redis.TimeoutError`` →
  :data:`~dockerflow.health.ERROR_CANNOT_CONNECT_REDIS` (``E004``);
* any other ``redis.RedisError`` → :data:`~dockerflow.health.ERROR_REDIS_EXCEPTION` (``E010``);
* a falsy reply to ``PING`` → :data:`~dockerflow.health.ERROR_REDIS_PING_FAILED` (``E007``);
* a Flask-Redis store whose ``init_app`` was never called →
  :data:`~dockerflow.health.ERROR_MISSING_REDIS_CLIENT` (``E005``).

The checks use the client they are given, with its connection pool, socket timeouts and retry
policy. The engine bounds every heartbeat by the check's timeout: an async check is cancelled,
while a sync check's thread is abandoned and the check reported as still running until the thread
returns. Against a server that accepts connections but never answers, that is when the client
gives up: after ``socket_timeout`` (redis-py 8: 5 s by default) times the attempts of its
``retry`` policy (redis-py 8: up to 11, with backoff). A client for the check alone, with
``socket_timeout`` under the check's timeout and ``retry=Retry(NoBackoff(), 0)``, reports such a
server as ``E004`` within the timeout instead.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any

from .. import health
from ..engine import CheckFunction
from ..health import CheckMessage, Error
from ..masking import masked_repr
from ._support import failure, requires

_ACCEPTED = "a redis.Redis, a redis.asyncio.Redis or a Flask-Redis store"
_NOT_SET = object()


def check_redis_connected(client: Any) -> list[CheckMessage]:
    """Check that Redis answers ``PING``: python-dockerflow's check, blocking.

    :param client: a ``redis.Redis`` (or ``redis.RedisCluster``), a Flask-Redis ``FlaskRedis``
        store, or anything with a blocking ``ping()``.
    :returns: no message if Redis answered, else one :class:`~dockerflow.checks.Error` (see the
        module for the IDs).
    :raises MissingDependencyError: if redis-py is not installed.
    :raises TypeError: if ``client`` is an asyncio client (use
        :func:`check_redis_connected_async`).
    """
    with requires("redis", extra="redis"):
        import redis
    target = _client_of(client)
    if target is None:
        return [_missing_client()]
    try:
        reply = target.ping()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return [failure("Could not connect to redis", exc, health.ERROR_CANNOT_CONNECT_REDIS)]
    except redis.RedisError as exc:
        return [failure("Redis error", exc, health.ERROR_REDIS_EXCEPTION)]
    if inspect.isawaitable(reply):
        if inspect.iscoroutine(reply):
            reply.close()  # never awaited: close it so Python does not warn about it
        raise TypeError(
            f"{masked_repr(target)} is an asyncio client: use check_redis_connected_async"
        )
    return [] if reply else [Error("Redis ping failed", id=health.ERROR_REDIS_PING_FAILED)]


async def check_redis_connected_async(client: Any) -> list[CheckMessage]:
    """Check that Redis answers ``PING`` through an asyncio client.

    The same check and message IDs as :func:`check_redis_connected`. The client's connections
    belong to the event loop that opened them: give the check a client that only dockerflow's
    loop uses.

    :param client: a ``redis.asyncio.Redis`` (or ``redis.asyncio.RedisCluster``), or a Flask-Redis
        store that wraps one.
    :returns: no message if Redis answered, else one :class:`~dockerflow.checks.Error`.
    :raises MissingDependencyError: if redis-py is not installed.
    """
    with requires("redis", extra="redis"):
        import redis
    target = _client_of(client)
    if target is None:
        return [_missing_client()]
    try:
        reply = await target.ping()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return [failure("Could not connect to redis", exc, health.ERROR_CANNOT_CONNECT_REDIS)]
    except redis.RedisError as exc:
        return [failure("Redis error", exc, health.ERROR_REDIS_EXCEPTION)]
    return [] if reply else [Error("Redis ping failed", id=health.ERROR_REDIS_PING_FAILED)]


def redis_check(client: Any) -> CheckFunction:
    """Return the Redis check for ``client``: async for an asyncio client, sync otherwise.

    :param client: a ``redis.Redis`` or ``redis.asyncio.Redis`` (or a cluster client), a
        Flask-Redis store (its client is looked up at each check, so ``init_app`` may come
        later), or anything with a blocking ``ping()``.
    :returns: a function taking no arguments: :func:`check_redis_connected` for a blocking
        client; for an asyncio client, :func:`check_redis_connected_async` that first drops
        the client's pooled connections when it runs on another loop than last time (a forked
        worker, a restarted loop), as they belong to the loop that opened them.
    :raises TypeError: if ``client`` has no ``ping()``.
    :raises MissingDependencyError: if redis-py is not installed.
    """
    with requires("redis", extra="redis"):
        import redis
        import redis.asyncio
    target = _client_of(client)
    if client is None:
        raise TypeError(f"a Redis check takes {_ACCEPTED}; got None")
    if isinstance(target, (redis.asyncio.Redis, redis.asyncio.RedisCluster)):
        return functools.partial(_check_on_current_loop, _LastLoop(), client)
    if target is not None and not callable(getattr(target, "ping", None)):
        raise TypeError(f"a Redis check takes {_ACCEPTED}; got {masked_repr(client)}")
    return functools.partial(check_redis_connected, client)


class _LastLoop:
    """The event loop a check last ran its client on."""

    def __init__(self) -> None:
        # A strong reference: the id of a collected loop may be reused by the next loop.
        self.loop: asyncio.AbstractEventLoop | None = None


async def _check_on_current_loop(last: _LastLoop, client: Any) -> list[CheckMessage]:
    loop = asyncio.get_running_loop()
    if last.loop is not None and last.loop is not loop:
        # The pooled connections belong to the loop the client last ran on (a forked child's
        # parent's, or a stopped one): drop them untouched, their loop does not run here.
        pool = getattr(_client_of(client), "connection_pool", None)
        if pool is not None:
            pool.reset()
    last.loop = loop
    return await check_redis_connected_async(client)


def _client_of(client: Any) -> Any:
    # A Flask-Redis store keeps its client in _redis_client, None until init_app.
    inner = getattr(client, "_redis_client", _NOT_SET)
    return client if inner is _NOT_SET else inner


def _missing_client() -> CheckMessage:
    return Error(
        "Redis client not set up: the Flask-Redis store has no client (call its init_app)",
        id=health.ERROR_MISSING_REDIS_CLIENT,
    )
