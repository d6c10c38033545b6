"""builtin_checks(), lazy driver imports and the errors for missing drivers."""

from __future__ import annotations

import functools
import inspect
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
import redis
import sqlalchemy
from sqlalchemy.ext.asyncio import create_async_engine

from dockerflow.engine import Check, Engine
from dockerflow.integrations import (
    AsyncpgCheck,
    CheckEngine,
    MissingDependencyError,
    builtin_checks,
    check_database_connected,
    check_redis_connected,
    database_check,
    migrations_check,
    redis_check,
)

from .helpers import ALEMBIC_APP, url_with

DRIVERS = ["sqlalchemy", "asyncpg", "redis", "alembic", "flask", "flask_sqlalchemy"]


def block(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make ``import package`` (and its submodules) fail, as if it were not installed."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


@pytest.mark.parametrize(
    ("package", "extra", "make"),
    [
        ("redis", "redis", lambda: redis_check(object())),
        ("redis", "redis", lambda: check_redis_connected(object())),
        ("sqlalchemy", "sqlalchemy", lambda: database_check(object())),
        ("sqlalchemy", "sqlalchemy", lambda: check_database_connected(object())),  # type: ignore[arg-type]
        ("asyncpg", "postgres", lambda: AsyncpgCheck("postgresql://localhost/db")),
        ("alembic", "alembic", lambda: migrations_check(script_location=ALEMBIC_APP)),
    ],
)
def test_missing_driver_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, package: str, extra: str, make: Callable[[], Any]
) -> None:
    block(monkeypatch, package)
    with pytest.raises(MissingDependencyError) as caught:
        make()
    assert caught.value.package == package
    assert caught.value.extra == extra
    assert f"pip install 'dockerflow-async[{extra}]'" in str(caught.value)


def test_builtin_checks_fail_early_without_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    block(monkeypatch, "redis")
    with pytest.raises(MissingDependencyError, match=r"dockerflow-async\[redis\]"):
        builtin_checks(redis=object())


def test_missing_driver_at_a_heartbeat_is_a_check_error(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine(timeout=1)
    try:
        check = Check("redis", lambda: check_redis_connected(object()))
        block(monkeypatch, "redis")
        report = engine.run_sync([check])
    finally:
        engine.close()
    (text,) = report.results["redis"].messages.values()
    assert "pip install 'dockerflow-async[redis]'" in text


def test_package_imports_without_any_driver() -> None:
    """A fresh interpreter where no driver can be imported still imports the integrations."""
    code = textwrap.dedent(
        f"""
        import sys

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {DRIVERS!r}:
                    raise ImportError(f"{{name}} is blocked")

        sys.meta_path.insert(0, Blocker())
        import dockerflow.integrations
        from dockerflow.integrations import alembic, asyncpg, redis, sqlalchemy
        loaded = sorted({{n.split(".")[0] for n in sys.modules}} & set({DRIVERS!r}))
        assert not loaded, loaded
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_builtin_checks_names_and_kinds(postgres_url: str, redis_url: str) -> None:
    engine = sqlalchemy.create_engine(url_with(postgres_url, drivername="postgresql+psycopg2"))
    client = redis.Redis.from_url(redis_url)
    try:
        checks = builtin_checks(db=engine, redis=client)
        assert [name for name, _ in checks] == ["check_database_connected", "check_redis_connected"]
        assert all(not inspect.iscoroutinefunction(func) for _, func in checks)
        assert isinstance(checks[0][1].args[0], CheckEngine)
    finally:
        client.close()
        engine.dispose()
    assert builtin_checks() == []


def is_async(func: object) -> bool:
    """Whether calling ``func`` returns a coroutine: an async function, or an async __call__."""
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(type(func), "__call__", None)  # noqa: B004 - an async __call__ method
    )


def test_builtin_checks_async_kinds(postgres_url: str, redis_url: str) -> None:
    import redis.asyncio

    engine = create_async_engine(url_with(postgres_url, drivername="postgresql+asyncpg"))
    client = redis.asyncio.Redis.from_url(redis_url)  # not connected until used
    checks = builtin_checks(db=engine, redis=client)
    assert [name for name, _ in checks] == ["check_database_connected", "check_redis_connected"]
    assert all(is_async(func) for _, func in checks)


def test_builtin_checks_reject_unknown_objects() -> None:
    with pytest.raises(TypeError, match="a database check takes") as caught:
        builtin_checks(db="postgresql://user:s3cr3t-pw@localhost/db")
    assert "s3cr3t-pw" not in str(caught.value)
    with pytest.raises(TypeError, match="a Redis check takes"):
        builtin_checks(redis=42)


def test_check_objects_never_show_passwords_in_their_repr(postgres_url: str) -> None:
    engine = sqlalchemy.create_engine(
        url_with(postgres_url, drivername="postgresql+psycopg2", password="s3cr3t-pw")
    )
    func = database_check(engine)
    assert "s3cr3t-pw" not in repr(func)
    assert "s3cr3t-pw" not in repr(Check("db", func))
    engine.dispose()
