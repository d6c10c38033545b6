"""The SQLAlchemy database checks, sync (psycopg2) and async (asyncpg), on a real PostgreSQL."""

from __future__ import annotations

import gc
import inspect
import logging
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dockerflow import health
from dockerflow.engine import Check, Engine
from dockerflow.integrations.sqlalchemy import (
    AsyncCheckEngine,
    CheckEngine,
    check_database_connected,
    check_database_connected_async,
    database_check,
)

from .helpers import (
    ANSWER,
    SECRET,
    SLACK,
    BlackHole,
    Proxy,
    count_backends,
    messages_of,
    only_message,
    terminate_backends,
    timed,
    unique_name,
    url_with,
    wait_until,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def make_engine() -> Iterator[Callable[..., sqlalchemy.Engine]]:
    """Make sync engines (psycopg2); they are disposed of at teardown."""
    engines: list[sqlalchemy.Engine] = []

    def make(url: str, **kwargs: Any) -> sqlalchemy.Engine:
        # SQLAlchemy 2.1 reads plain postgresql:// as psycopg 3; these tests use psycopg2.
        made = sqlalchemy.create_engine(url_with(url, drivername="postgresql+psycopg2"), **kwargs)
        engines.append(made)
        return made

    yield make
    for made in engines:
        made.dispose()


@pytest.fixture
def make_async_engine(engine: Engine) -> Iterator[Callable[..., AsyncEngine]]:
    """Make async engines (asyncpg); disposed of on the checks' loop at teardown."""
    engines: list[AsyncEngine] = []

    def make(url: str, **kwargs: Any) -> AsyncEngine:
        made = create_async_engine(url_with(url, drivername="postgresql+asyncpg"), **kwargs)
        engines.append(made)
        return made

    yield make
    for made in engines:
        engine.bridge.call(made.dispose)


def dispose(engine: Engine, check: Any) -> None:
    """Close the connections of the CheckEngine behind a check made by database_check()."""
    check_engine = check.args[0]
    if isinstance(check_engine, AsyncCheckEngine):
        engine.bridge.call(check_engine.dispose)
    else:
        check_engine.dispose()


# Sync: SQLAlchemy + psycopg2.


def test_sync_healthy(engine: Engine, make_engine: Callable[..., Any], postgres_url: str) -> None:
    func = database_check(make_engine(postgres_url))
    assert isinstance(func.args[0], CheckEngine)
    report, _ = timed(engine, Check("db", func, timeout=ANSWER))
    assert report.checks == {"db": "ok"}
    dispose(engine, func)


def test_python_dockerflow_function_takes_an_engine(
    engine: Engine, make_engine: Callable[..., Any], postgres_url: str
) -> None:
    app_engine = make_engine(postgres_url)
    assert check_database_connected(app_engine) == []
    report = engine.run_sync(
        [Check("db", lambda: check_database_connected(app_engine), timeout=ANSWER)]
    )
    assert report.checks == {"db": "ok"}


def test_sync_refused(
    engine: Engine, make_engine: Callable[..., Any], postgres_url: str, refused_port: int
) -> None:
    func = database_check(make_engine(url_with(postgres_url, port=refused_port)))
    report, took = timed(engine, Check("db", func))
    msg_id, text = only_message(report, "db")
    assert msg_id == health.ERROR_CANNOT_CONNECT_DATABASE  # an error while connecting
    assert "Connection refused" in text
    assert took < engine.timeout + SLACK


def test_sync_black_hole_is_reported_by_the_connect_timeout(
    engine: Engine, make_engine: Callable[..., Any], postgres_url: str, black_hole: BlackHole
) -> None:
    """The check connects with connect_timeout=2 (libpq's least) for a 2.5 s check timeout."""
    url = url_with(postgres_url, port=black_hole.port)
    check = Check("db", database_check(make_engine(url), timeout=2.5), timeout=2.5)
    for beat in range(2):
        report, took = timed(engine, check)
        msg_id, text = only_message(report, "db")
        assert msg_id == health.ERROR_CANNOT_CONNECT_DATABASE
        assert "timeout expired" in text
        if beat == 0:
            assert 2.0 <= took < 2.5 + SLACK
        else:  # failing slowly: answered at once while a run retries in the background
            assert took < 1.0


def test_sync_black_hole_with_a_shorter_connect_timeout_of_the_application(
    engine: Engine, make_engine: Callable[..., Any], postgres_url: str, black_hole: BlackHole
) -> None:
    """The application's own connect_timeout, when shorter than the check's bound, is kept."""
    url = url_with(postgres_url, port=black_hole.port, query={"connect_timeout": "1"})
    check = Check("db", database_check(make_engine(url), timeout=5), timeout=5)
    report, took = timed(engine, check)
    msg_id, text = only_message(report, "db")
    assert msg_id == health.ERROR_CANNOT_CONNECT_DATABASE
    assert "timeout expired" in text
    assert took < 2.5 + SLACK


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        ({"username": "no_such_role"}, 'role "no_such_role" does not exist'),
        ({"database": "no_such_database"}, 'database "no_such_database" does not exist'),
    ],
)
def test_sync_wrong_role_or_database_never_shows_the_password(
    engine: Engine,
    make_engine: Callable[..., Any],
    postgres_url: str,
    caplog: pytest.LogCaptureFixture,
    part: dict[str, str],
    expected: str,
) -> None:
    url = url_with(postgres_url, password=SECRET, **part)
    assert SECRET in url
    caplog.set_level(logging.DEBUG)
    report = engine.run_sync([Check("db", database_check(make_engine(url)), timeout=ANSWER)])
    msg_id, text = only_message(report, "db")
    assert msg_id == health.ERROR_CANNOT_CONNECT_DATABASE
    assert expected in text
    assert SECRET not in repr(report.as_dict())
    assert SECRET not in caplog.text
    assert expected in caplog.text  # the full error is logged, masked


def test_sync_check_does_not_wait_behind_a_busy_application_pool(
    engine: Engine, make_engine: Callable[..., Any], postgres_url: str
) -> None:
    """The application's only connection is held; its pool would make a request wait 30 s."""
    app_engine = make_engine(postgres_url, pool_size=1, max_overflow=0, pool_timeout=30)
    func = database_check(app_engine)
    with app_engine.connect():
        report, took = timed(engine, Check("db", func))
    assert report.checks == {"db": "ok"}
    assert took < engine.timeout
    dispose(engine, func)


def test_python_dockerflow_function_waits_behind_a_busy_pool(
    engine: Engine, make_engine: Callable[..., Any], postgres_url: str
) -> None:
    """What database_check() avoids: the plain check queues on the application's pool."""
    app_engine = make_engine(postgres_url, pool_size=1, max_overflow=0, pool_timeout=1.5)
    check = Check("db", lambda: check_database_connected(app_engine), timeout=0.5)
    with app_engine.connect():
        report, took = timed(engine, check)
        assert only_message(report, "db")[0] == health.ERROR_CHECK_TIMEOUT
        assert took < 0.5 + SLACK
        report, _ = timed(engine, check)
        assert "still running" in only_message(report, "db")[1]
        # The pool gives up after pool_timeout and the thread returns.
        wait_until(lambda: "still running" not in repr(engine.run_sync([check]).details))


def test_sync_check_uses_the_application_engines_connect_args(
    engine: Engine, make_engine: Callable[..., Any], postgres_url: str
) -> None:
    """The copy shares the creator: connect_args apply, and it keeps one connection."""
    name = unique_name()
    app_engine = make_engine(postgres_url, connect_args={"application_name": name})
    func = database_check(app_engine)
    for _ in range(20):
        assert engine.run_sync([Check("db", func, timeout=ANSWER)]).checks == {"db": "ok"}
    assert count_backends(postgres_url, name) == 1
    assert func.args[0].engine is func.args[0].engine
    dispose(engine, func)
    wait_until(lambda: count_backends(postgres_url, name) == 0)  # the server notices shortly


def test_sync_check_survives_a_dropped_connection(
    engine: Engine, make_engine: Callable[..., Any], postgres_url: str
) -> None:
    """After a server restart or failover, the stale pooled connection is retried once."""
    name = unique_name()
    func = database_check(make_engine(postgres_url, connect_args={"application_name": name}))
    check = Check("db", func, timeout=ANSWER)
    assert engine.run_sync([check]).checks == {"db": "ok"}
    assert terminate_backends(postgres_url, name) == 1
    assert engine.run_sync([check]).checks == {"db": "ok"}
    dispose(engine, func)


# Async: SQLAlchemy AsyncEngine + asyncpg.


def test_async_healthy(
    engine: Engine, make_async_engine: Callable[..., AsyncEngine], postgres_url: str
) -> None:
    func = database_check(make_async_engine(postgres_url))
    assert inspect.iscoroutinefunction(func)
    report = engine.run_sync([Check("db", func, timeout=ANSWER)])
    assert report.checks == {"db": "ok"}
    dispose(engine, func)


def test_async_python_dockerflow_style_function(
    engine: Engine, make_async_engine: Callable[..., AsyncEngine], postgres_url: str
) -> None:
    app_engine = make_async_engine(postgres_url)

    async def check() -> Any:
        return await check_database_connected_async(app_engine)

    assert engine.run_sync([Check("db", check, timeout=ANSWER)]).checks == {"db": "ok"}


def test_async_refused(
    engine: Engine,
    make_async_engine: Callable[..., AsyncEngine],
    postgres_url: str,
    refused_port: int,
) -> None:
    func = database_check(make_async_engine(url_with(postgres_url, port=refused_port)))
    report, took = timed(engine, Check("db", func))
    msg_id, text = only_message(report, "db")
    assert msg_id == health.ERROR_CANNOT_CONNECT_DATABASE
    assert "Connect call failed" in text
    assert took < engine.timeout + SLACK
    dispose(engine, func)


def test_async_black_hole_is_cancelled_at_the_timeout(
    engine: Engine,
    make_async_engine: Callable[..., AsyncEngine],
    postgres_url: str,
    black_hole: BlackHole,
) -> None:
    func = database_check(make_async_engine(url_with(postgres_url, port=black_hole.port)))
    check = Check("db", func)
    for beat in range(2):
        report, took = timed(engine, check)
        msg_id, text = only_message(report, "db")
        assert (msg_id, text) == (health.ERROR_CHECK_TIMEOUT, "Check timed out after 1s")
        if beat == 0:
            assert engine.timeout <= took < engine.timeout + SLACK
        else:  # failing by timeout: answered at once while a run retries in the background
            assert took < engine.timeout / 2
    dispose(engine, func)


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        ({"username": "no_such_role"}, 'role "no_such_role" does not exist'),
        ({"database": "no_such_database"}, 'database "no_such_database" does not exist'),
    ],
)
def test_async_wrong_role_or_database_never_shows_the_password(
    engine: Engine,
    make_async_engine: Callable[..., AsyncEngine],
    postgres_url: str,
    caplog: pytest.LogCaptureFixture,
    part: dict[str, str],
    expected: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    func = database_check(make_async_engine(url_with(postgres_url, password=SECRET, **part)))
    report = engine.run_sync([Check("db", func, timeout=ANSWER)])
    msg_id, text = only_message(report, "db")
    assert msg_id == health.ERROR_CANNOT_CONNECT_DATABASE
    assert expected in text
    assert SECRET not in repr(report.as_dict())
    assert SECRET not in caplog.text
    dispose(engine, func)


def test_async_check_does_not_wait_behind_a_busy_application_pool(
    engine: Engine, make_async_engine: Callable[..., AsyncEngine], postgres_url: str
) -> None:
    app_engine = make_async_engine(postgres_url, pool_size=1, max_overflow=0, pool_timeout=30)
    func = database_check(app_engine)
    held = engine.bridge.call(app_engine.connect().start)
    try:
        report, took = timed(engine, Check("db", func))
    finally:
        engine.bridge.call(held.close)
    assert report.checks == {"db": "ok"}
    assert took < engine.timeout
    dispose(engine, func)


def test_async_python_dockerflow_function_on_a_busy_pool(
    engine: Engine, make_async_engine: Callable[..., AsyncEngine], postgres_url: str
) -> None:
    """Without a pool of its own the check waits for the application's pool, then gives up."""
    app_engine = make_async_engine(postgres_url, pool_size=1, max_overflow=0, pool_timeout=0.2)

    async def check() -> Any:
        return await check_database_connected_async(app_engine)

    held = engine.bridge.call(app_engine.connect().start)
    try:
        report = engine.run_sync([Check("db", check, timeout=ANSWER)])
    finally:
        engine.bridge.call(held.close)
    msg_id, text = only_message(report, "db")
    assert msg_id == health.ERROR_SQLALCHEMY_EXCEPTION
    assert "QueuePool limit of size 1 overflow 0 reached" in text


def test_async_check_survives_a_dropped_connection(
    engine: Engine, make_async_engine: Callable[..., AsyncEngine], postgres_url: str
) -> None:
    name = unique_name()
    app_engine = make_async_engine(
        postgres_url, connect_args={"server_settings": {"application_name": name}}
    )
    func = database_check(app_engine)
    check = Check("db", func, timeout=ANSWER)
    assert engine.run_sync([check]).checks == {"db": "ok"}
    assert terminate_backends(postgres_url, name) == 1
    assert engine.run_sync([check]).checks == {"db": "ok"}
    dispose(engine, func)


def test_async_check_retries_a_connection_dropped_behind_its_back(
    engine: Engine, make_async_engine: Callable[..., AsyncEngine], postgres_url: str
) -> None:
    """The server hangs up while the loop is busy, so asyncpg has not noticed by the query."""
    name = unique_name()
    app_engine = make_async_engine(
        postgres_url, connect_args={"server_settings": {"application_name": name}}
    )
    func = database_check(app_engine)
    assert engine.run_sync([Check("db", func, timeout=ANSWER)]).checks == {"db": "ok"}

    async def terminate_then_check() -> Any:
        # Blocking calls on purpose: the loop cannot read the server's goodbye until the check.
        assert terminate_backends(postgres_url, name) == 1
        wait_until(lambda: count_backends(postgres_url, name) == 0)
        return await func()

    assert messages_of(engine.bridge.call(terminate_then_check)) == []
    dispose(engine, func)


def test_async_check_engine_makes_one_copy_per_loop(
    make_async_engine: Callable[..., AsyncEngine], postgres_url: str
) -> None:
    """A second loop (another engine's thread, or a forked child) gets its own copy."""
    first, second = Engine(timeout=2), Engine(timeout=2)
    try:
        check_engine = AsyncCheckEngine(make_async_engine(postgres_url))
        check = Check("db", database_check(check_engine), timeout=ANSWER)
        assert first.run_sync([check]).checks == {"db": "ok"}
        copy_on_first = first.bridge.call(_engine_of, check_engine)
        assert second.run_sync([check]).checks == {"db": "ok"}
        assert second.bridge.call(_engine_of, check_engine) is not copy_on_first
        # The first loop's copy was left alone and still works.
        assert first.bridge.call(_engine_of, check_engine) is copy_on_first
        assert first.run_sync([check]).checks == {"db": "ok"}
        first.bridge.call(check_engine.dispose)
        second.bridge.call(check_engine.dispose)
    finally:
        first.close()
        second.close()


async def _engine_of(check_engine: AsyncCheckEngine) -> AsyncEngine:
    return check_engine.engine


def test_database_check_rejects_other_objects() -> None:
    with pytest.raises(TypeError, match="SQLAlchemy Engine or AsyncEngine, a Flask-SQLAlchemy"):
        database_check("postgresql://localhost/db")


def test_sync_function_refuses_an_async_engine(postgres_url: str) -> None:
    async_engine = create_async_engine(url_with(postgres_url, drivername="postgresql+asyncpg"))
    with pytest.raises(TypeError, match="use check_database_connected_async"):
        check_database_connected(async_engine)  # type: ignore[arg-type]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sync_forked_child_makes_its_own_copy(
    engine: Engine, make_engine: Callable[..., sqlalchemy.Engine], postgres_url: str
) -> None:
    name = unique_name()
    func = database_check(make_engine(postgres_url, connect_args={"application_name": name}))
    check_engine = func.args[0]
    assert engine.run_sync([Check("db", func, timeout=ANSWER)]).checks == {"db": "ok"}
    parent_copy = check_engine.engine

    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only, never return into pytest
        code = 1
        try:
            ok = engine.run_sync([Check("db", func, timeout=ANSWER)]).checks == {"db": "ok"}
            code = 0 if ok and check_engine.engine is not parent_copy else 2
            gc.collect()  # the parent's copy, let go of, must not close the parent's connection
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert check_engine.engine is parent_copy
    # The parent's pooled connection still works: no reconnect, so still one server connection.
    with parent_copy.connect() as connection:
        assert connection.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
    assert count_backends(postgres_url, name) == 1
    dispose(engine, func)


def test_a_silent_pooled_connection_is_reported_with_a_sane_duration(
    engine: Engine, make_engine: Callable[..., Any], postgres_url: str, postgres_proxy: Proxy
) -> None:
    """The query's bound is what was left of the check's after connecting: shown rounded
    ("within 0.8s"), not to the microsecond ("within 0.79991s", issue 20 item 9)."""
    func = database_check(make_engine(postgres_proxy.url(postgres_url)), timeout=engine.timeout)
    check = Check("db", func)
    assert engine.run_sync([check]).checks == {"db": "ok"}
    postgres_proxy.black_hole()  # the pooled connection goes silent mid-query
    msg_id, text = only_message(engine.run_sync([check]), "db")
    assert "no answer from the database within" in text, (msg_id, text)
    assert re.search(r"within \d+(\.\d{1,2})?s", text), text
    dispose(engine, func)
