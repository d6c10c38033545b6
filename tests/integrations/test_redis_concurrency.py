"""The Redis checks run concurrently: a ping in flight keeps its client.

Heartbeats share one run of a check, but two runs of one check can overlap (a stuck run being
replaced, one check object registered in two apps). When the check's own client is replaced
(the check's timeout changed, or the client it was given), a ping still in flight on the old
one must finish on it: the old client is closed by its last user, not under a running ping.
A :class:`~.helpers.Gate` in front of the real server holds the first ping's answer back while
the second run replaces the client.
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.to_thread
import pytest
import redis
import redis.asyncio

from dockerflow.integrations import release
from dockerflow.integrations.redis import AsyncRedisCheck, RedisCheck

from .helpers import Gate, messages_of

pytestmark = pytest.mark.redis

PING = b"PING"


def test_sync_ping_in_flight_keeps_its_client_when_another_run_replaces_it(
    redis_url: str, redis_gate: Gate
) -> None:
    client = redis.Redis.from_url(redis_gate.url(redis_url))
    check = RedisCheck(client, timeout=3)
    try:
        assert messages_of(check()) == []  # the check's own client is connected, through the gate
        redis_gate.shut()
        results: dict[str, Any] = {}
        first = threading.Thread(target=lambda: results.setdefault("first", check()))
        first.start()
        redis_gate.wait_for(containing=PING, count=2)  # the first run's ping is on its way

        check.timeout = 2.5  # a new bound: the next run makes a new client
        second = threading.Thread(target=lambda: results.setdefault("second", check()))
        second.start()
        # The second run connects through the gate once it has replaced the first's client.
        redis_gate.wait_for(connections=2)
        redis_gate.open()
        first.join(10)
        second.join(10)
        assert {name: messages_of(result) for name, result in results.items()} == {
            "first": [],
            "second": [],
        }
    finally:
        check.close()
        client.close()


@pytest.mark.anyio
async def test_async_ping_in_flight_keeps_its_client_when_another_run_replaces_it(
    redis_url: str, redis_gate: Gate
) -> None:
    client = redis.asyncio.Redis.from_url(redis_gate.url(redis_url))
    check = AsyncRedisCheck(client, timeout=3)
    results: dict[str, Any] = {}

    async def run(name: str) -> None:
        results[name] = await check()

    try:
        assert messages_of(await check()) == []
        redis_gate.shut()
        async with anyio.create_task_group() as group:
            group.start_soon(run, "first")
            await anyio.to_thread.run_sync(lambda: redis_gate.wait_for(containing=PING, count=2))
            check.timeout = 2.5
            group.start_soon(run, "second")
            await anyio.to_thread.run_sync(lambda: redis_gate.wait_for(connections=2))
            redis_gate.open()
        assert {name: messages_of(result) for name, result in results.items()} == {
            "first": [],
            "second": [],
        }
    finally:
        await release(check)
        await client.aclose()


def test_sync_release_during_a_ping_closes_the_client_after_it(
    redis_url: str, redis_gate: Gate
) -> None:
    """release() (the extension's close()) while a ping is in flight: the ping still answers."""
    client = redis.Redis.from_url(redis_gate.url(redis_url))
    check = RedisCheck(client, timeout=3)
    try:
        assert messages_of(check()) == []
        redis_gate.shut()
        results: list[Any] = []
        first = threading.Thread(target=lambda: results.append(check()))
        first.start()
        redis_gate.wait_for(containing=PING, count=2)
        check.close()
        redis_gate.open()
        first.join(10)
        assert [messages_of(result) for result in results] == [[]]
        assert messages_of(check()) == []  # a later run opens a new client
    finally:
        check.close()
        client.close()
