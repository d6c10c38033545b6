"""AsyncpgCheck against a real PostgreSQL: pools per loop, faults, and the message IDs."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import asyncpg
import pytest

from dockerflow import health
from dockerflow.engine import Check, CheckRegistrationError, Engine
from dockerflow.integrations import AsyncpgCheck
from dockerflow.integrations.asyncpg import _is_connection_error

from .helpers import (
    ANSWER,
    SECRET,
    SLACK,
    BlackHole,
    asyncpg_dsn,
    count_backends,
    only_message,
    terminate_backends,
    timed,
    unique_name,
    url_with,
    wait_until,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def make_check(engine: Engine) -> Iterator[Callable[..., AsyncpgCheck]]:
    """Make AsyncpgChecks; their pools are closed on the checks' loop at teardown."""
    made: list[AsyncpgCheck] = []

    def make(*args: Any, **kwargs: Any) -> AsyncpgCheck:
        check = AsyncpgCheck(*args, **kwargs)
        made.append(check)
        return check

    yield make
    for check in made:
        engine.bridge.call(check.close)


def test_healthy(
    engine: Engine, make_check: Callable[..., AsyncpgCheck], postgres_url: str
) -> None:
    check = make_check(asyncpg_dsn(postgres_url))
    assert engine.run_sync([Check("pg", check, timeout=ANSWER)]).checks == {"pg": "ok"}


def test_refused(
    engine: Engine, make_check: Callable[..., AsyncpgCheck], postgres_url: str, refused_port: int
) -> None:
    check = make_check(asyncpg_dsn(url_with(postgres_url, port=refused_port)))
    report, took = timed(engine, Check("pg", check))
    msg_id, text = only_message(report, "pg")
    assert msg_id == health.ERROR_CANNOT_CONNECT_DATABASE
    assert "Connect call failed" in text
    assert took < engine.timeout + SLACK


def test_black_hole_reported_by_asyncpgs_timeout(
    engine: Engine,
    make_check: Callable[..., AsyncpgCheck],
    postgres_url: str,
    black_hole: BlackHole,
) -> None:
    """The check's bound (0.8 s) is under its timeout (1 s): E001, not the engine's E011."""
    dsn = asyncpg_dsn(url_with(postgres_url, port=black_hole.port))
    check = make_check(dsn, timeout=engine.timeout)
    for beat in range(2):
        report, took = timed(engine, Check("pg", check))
        msg_id, text = only_message(report, "pg")
        assert msg_id == health.ERROR_CANNOT_CONNECT_DATABASE
        assert text == "Cannot connect to database: TimeoutError: no answer within 0.8s"
        if beat == 0:
            assert 0.8 <= took < 0.8 + SLACK
        else:  # failing slowly: answered at once while a run retries in the background
            assert took < 0.4


def test_black_hole_cancelled_by_the_engine(
    engine: Engine,
    make_check: Callable[..., AsyncpgCheck],
    postgres_url: str,
    black_hole: BlackHole,
) -> None:
    """With asyncpg's timeout over the check's, the engine cancels the connect: E011, bounded."""
    check = Check(
        "pg", make_check(asyncpg_dsn(url_with(postgres_url, port=black_hole.port)), timeout=30)
    )
    for beat in range(2):
        report, took = timed(engine, check)
        assert only_message(report, "pg")[0] == health.ERROR_CHECK_TIMEOUT
        if beat == 0:
            assert engine.timeout <= took < engine.timeout + SLACK
        else:  # failing by timeout: answered at once while a run retries in the background
            assert took < engine.timeout / 2


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        ({"username": "no_such_role"}, 'role "no_such_role" does not exist'),
        ({"database": "no_such_database"}, 'database "no_such_database" does not exist'),
    ],
)
def test_wrong_role_or_database_never_shows_the_password(
    engine: Engine,
    make_check: Callable[..., AsyncpgCheck],
    postgres_url: str,
    caplog: pytest.LogCaptureFixture,
    part: dict[str, str],
    expected: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    dsn = asyncpg_dsn(url_with(postgres_url, password=SECRET, **part))
    check = make_check(dsn)
    assert SECRET not in repr(check)
    report = engine.run_sync([Check("pg", check, timeout=ANSWER)])
    msg_id, text = only_message(report, "pg")
    assert msg_id == health.ERROR_CANNOT_CONNECT_DATABASE
    assert expected in text
    assert SECRET not in repr(report.as_dict())
    assert SECRET not in caplog.text


def test_bad_dsn_is_a_misconfiguration(
    engine: Engine, make_check: Callable[..., AsyncpgCheck], postgres_url: str
) -> None:
    check = make_check(asyncpg_dsn(postgres_url) + f"?sslmode=bogus&password={SECRET}")
    report = engine.run_sync([Check("pg", check, timeout=ANSWER)])
    msg_id, text = only_message(report, "pg")
    assert msg_id == health.ERROR_MISCONFIGURED_DATABASE
    assert "sslmode" in text
    assert SECRET not in repr(check)


def test_server_side_error_is_a_database_error(
    engine: Engine, make_check: Callable[..., AsyncpgCheck], postgres_url: str
) -> None:
    """A session setting the server rejects fails after the connection was made: E008."""
    check = make_check(
        asyncpg_dsn(postgres_url), server_settings={"default_transaction_isolation": "bogus"}
    )
    msg_id, text = only_message(engine.run_sync([Check("pg", check, timeout=ANSWER)]), "pg")
    assert msg_id == health.ERROR_DB_API_EXCEPTION
    assert "default_transaction_isolation" in text


def test_sqlstates_split_connection_and_query_errors() -> None:
    connection_errors = [
        asyncpg.exceptions.InvalidPasswordError,
        asyncpg.exceptions.InvalidCatalogNameError,
        asyncpg.exceptions.TooManyConnectionsError,
        asyncpg.exceptions.CannotConnectNowError,
        asyncpg.exceptions.AdminShutdownError,
        asyncpg.exceptions.ConnectionDoesNotExistError,
    ]
    query_errors = [
        asyncpg.exceptions.QueryCanceledError,
        asyncpg.exceptions.DivisionByZeroError,
        asyncpg.exceptions.ReadOnlySQLTransactionError,
    ]
    assert all(_is_connection_error(cls("x")) for cls in connection_errors)
    assert not any(_is_connection_error(cls("x")) for cls in query_errors)


def test_one_pool_reused_across_heartbeats(
    engine: Engine, make_check: Callable[..., AsyncpgCheck], postgres_url: str
) -> None:
    name = unique_name()
    check = make_check(asyncpg_dsn(postgres_url), server_settings={"application_name": name})
    for _ in range(100):
        assert engine.run_sync([Check("pg", check, timeout=ANSWER)]).checks == {"pg": "ok"}
    pool = engine.bridge.call(check.get_pool)
    assert count_backends(postgres_url, name) == 1
    for _ in range(10):
        engine.run_sync([Check("pg", check, timeout=ANSWER)])
    assert engine.bridge.call(check.get_pool) is pool


def test_heartbeats_arriving_together_open_one_pool(
    engine: Engine, make_check: Callable[..., AsyncpgCheck], postgres_url: str
) -> None:
    name = unique_name()
    check = make_check(asyncpg_dsn(postgres_url), server_settings={"application_name": name})

    async def twenty_at_once() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(check)

    engine.bridge.call(twenty_at_once)
    assert count_backends(postgres_url, name) <= 2  # the pool's max_size


def test_survives_a_dropped_connection(
    engine: Engine, make_check: Callable[..., AsyncpgCheck], postgres_url: str
) -> None:
    name = unique_name()
    check = Check(
        "pg", make_check(asyncpg_dsn(postgres_url), server_settings={"application_name": name})
    )
    assert engine.run_sync([check]).checks == {"pg": "ok"}
    assert terminate_backends(postgres_url, name) == 1
    assert engine.run_sync([check]).checks == {"pg": "ok"}


def test_retries_a_connection_dropped_behind_its_back(
    engine: Engine, make_check: Callable[..., AsyncpgCheck], postgres_url: str
) -> None:
    """The server hangs up while the loop is busy, so asyncpg has not noticed by the query."""
    name = unique_name()
    check = make_check(asyncpg_dsn(postgres_url), server_settings={"application_name": name})
    assert engine.run_sync([Check("pg", check, timeout=ANSWER)]).checks == {"pg": "ok"}
    pool = engine.bridge.call(check.get_pool)

    async def terminate_then_check() -> Any:
        # Blocking calls on purpose: the loop cannot read the server's goodbye until the check.
        assert terminate_backends(postgres_url, name) == 1
        wait_until(lambda: count_backends(postgres_url, name) == 0)
        return await check()

    assert engine.bridge.call(terminate_then_check) == []
    assert engine.bridge.call(check.get_pool) is pool


def test_a_new_loop_gets_a_new_pool_and_the_old_one_is_left_alone(postgres_url: str) -> None:
    first, second = Engine(timeout=2), Engine(timeout=2)
    check = AsyncpgCheck(asyncpg_dsn(postgres_url))
    try:
        assert first.run_sync([Check("pg", check)]).checks == {"pg": "ok"}
        old_pool = first.bridge.call(check.get_pool)
        assert second.run_sync([Check("pg", check)]).checks == {"pg": "ok"}
        assert second.bridge.call(check.get_pool) is not old_pool
        assert first.bridge.call(check.get_pool) is old_pool
        assert first.run_sync([Check("pg", check)]).checks == {"pg": "ok"}
    finally:
        first.bridge.call(check.close)
        second.bridge.call(check.close)
        first.close()
        second.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_opens_its_own_pool(
    engine: Engine, make_check: Callable[..., AsyncpgCheck], postgres_url: str
) -> None:
    name = unique_name()
    check = make_check(asyncpg_dsn(postgres_url), server_settings={"application_name": name})
    assert engine.run_sync([Check("pg", check, timeout=ANSWER)]).checks == {"pg": "ok"}
    parent_pool = engine.bridge.call(check.get_pool)

    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only, never return into pytest
        code = 1
        try:
            ok = engine.run_sync([Check("pg", check, timeout=ANSWER)]).checks == {"pg": "ok"}
            own_pool = engine.bridge.call(check.get_pool) is not parent_pool
            code = 0 if ok and own_pool else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's pool and connection were not touched by the child.
    assert engine.run_sync([Check("pg", check, timeout=ANSWER)]).checks == {"pg": "ok"}
    assert engine.bridge.call(check.get_pool) is parent_pool


def test_given_pool_is_used_and_left_open(engine: Engine, postgres_url: str) -> None:
    pool = engine.bridge.call(_create_pool, asyncpg_dsn(postgres_url))
    try:
        check = AsyncpgCheck(pool=pool)
        assert engine.run_sync([Check("pg", check, timeout=ANSWER)]).checks == {"pg": "ok"}
        engine.bridge.call(check.close)
        assert not pool._closed
        assert engine.run_sync([Check("pg", check, timeout=ANSWER)]).checks == {"pg": "ok"}
    finally:
        engine.bridge.call(pool.close)


async def _create_pool(dsn: str) -> Any:
    return await asyncpg.create_pool(dsn, min_size=1, max_size=1)


def test_takes_a_dsn_or_a_pool() -> None:
    with pytest.raises(TypeError, match="either a dsn or a pool"):
        AsyncpgCheck()
    with pytest.raises(TypeError, match="either a dsn or a pool"):
        AsyncpgCheck("postgresql://localhost/db", pool=object())
    with pytest.raises(TypeError, match="apply to a dsn"):
        AsyncpgCheck(pool=object(), server_settings={})


def test_timeout_must_be_positive() -> None:
    with pytest.raises(CheckRegistrationError, match="above 0"):
        AsyncpgCheck("postgresql://localhost/db", timeout=0)


# --- async callers, each on a loop of their own (issue 20 items 7 and 9) ----------------------


def _heartbeats_on_new_loops(engine: Engine, check: Check, count: int, close_only: bool) -> None:
    for _ in range(count):
        if close_only:  # run_until_complete, then close: the loop's tasks are never cancelled
            loop = asyncio.new_event_loop()
            report = loop.run_until_complete(engine.run([check]))
            loop.close()
            del loop
        else:
            report = asyncio.run(engine.run([check]))
        assert report.checks == {"pg": "ok"}, report.details


@pytest.mark.parametrize("close_only", [False, True], ids=["asyncio.run", "close"])
def test_many_loops_leave_no_pool_and_no_server_connection_behind(
    engine: Engine, postgres_url: str, close_only: bool
) -> None:
    name = unique_name()
    check = Check(
        "pg",
        AsyncpgCheck(asyncpg_dsn(postgres_url), server_settings={"application_name": name}),
        # About the connections left behind, not the timeout: room for a loaded machine's
        # connects (each new loop makes a new pool).
        timeout=ANSWER,
    )
    with warnings.catch_warnings():
        # A loop closed with its connections open: Python warns of the transports when they
        # are collected, and closes their sockets then.
        warnings.simplefilter("ignore", ResourceWarning)
        _heartbeats_on_new_loops(engine, check, 300, close_only)
        assert len(engine.scheduler._hosts) <= 2
        assert count_backends(postgres_url, name) <= 2
        # One more loop, shut down properly: it lets the last closed one go.
        _heartbeats_on_new_loops(engine, check, 1, close_only=False)
        del check
        gc.collect()
    wait_until(lambda: count_backends(postgres_url, name) == 0, timeout=15)


def test_a_given_pool_of_another_loop_fails_clearly(engine: Engine, postgres_url: str) -> None:
    loop = asyncio.new_event_loop()
    pool = loop.run_until_complete(_create_pool(asyncpg_dsn(postgres_url)))
    try:
        report = engine.run_sync([Check("pg", AsyncpgCheck(pool=pool))])
        message = only_message(report, "pg")[1]
        assert "another event loop" in message, message
        assert "another operation is in progress" not in message
    finally:
        loop.run_until_complete(pool.close())
        loop.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_given_pool_of_the_parent_fails_clearly_in_a_forked_child(
    engine: Engine, postgres_url: str
) -> None:
    pool = engine.bridge.call(_create_pool, asyncpg_dsn(postgres_url))
    try:
        check = AsyncpgCheck(pool=pool)
        assert engine.run_sync([Check("pg", check)]).checks == {"pg": "ok"}
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report through the pipe only, never return into pytest
            try:
                report = engine.run_sync([Check("pg", check)])
                os.write(write, only_message(report, "pg")[1].encode()[:500])
            finally:
                os._exit(0)
        os.close(write)
        message = os.read(read, 1000).decode()
        os.close(read)
        os.waitpid(pid, 0)
        assert "parent process" in message, message
        assert engine.run_sync([Check("pg", check)]).checks == {"pg": "ok"}
    finally:
        engine.bridge.call(pool.close)
