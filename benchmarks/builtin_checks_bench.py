"""Heartbeat latency of the built-in checks against real PostgreSQL and Redis servers.

Run with ``python benchmarks/builtin_checks_bench.py``. Two variants, side by side:

* sync: a psycopg2 ``Engine`` (``SELECT 1``), ``redis.Redis`` (``PING``) and the migrations check
  on the sync engine; the engine runs them in worker threads;
* async: an asyncpg ``AsyncEngine``, an ``AsyncpgCheck``, ``redis.asyncio.Redis`` and the
  migrations check on the ``AsyncEngine``; all on the engine's event loop.

Each heartbeat goes through :meth:`Engine.run_sync`, the path of a WSGI request thread. The
migrations checks read a scratch database ``dockerflow_bench_<random>``, stamped at the head of a
two-revision script directory made for the run, and dropped at the end. The servers come from
``DOCKERFLOW_TEST_POSTGRES_URL`` and ``DOCKERFLOW_TEST_REDIS_URL`` (the tests' defaults).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg2
import redis
import redis.asyncio
import sqlalchemy
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from dockerflow.engine import Check, Engine
from dockerflow.integrations import (
    AsyncpgCheck,
    check_engine,
    database_check,
    migrations_check,
    redis_check,
)

POSTGRES_URL = os.environ.get(
    "DOCKERFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("DOCKERFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

REVISION = '''"""{doc}"""
revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
'''


def url(base: str, **parts: object) -> str:
    return make_url(base).set(**parts).render_as_string(hide_password=False)


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """A fresh database for the run, dropped at the end; yields its URL."""
    name = f"dockerflow_bench_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(POSTGRES_URL)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield url(POSTGRES_URL, database=name)
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


def write_scripts(directory: Path) -> str:
    """Write a two-revision script directory; return the script location."""
    versions = directory / "versions"
    versions.mkdir(parents=True)
    (versions / "0001_first.py").write_text(REVISION.format(doc="First.", rev="0001", down=None))
    (versions / "0002_second.py").write_text(
        REVISION.format(doc="Second.", rev="0002", down="0001")
    )
    return str(directory)


def stamp_head(database_url: str, script_location: str) -> None:
    config = Config()
    config.set_main_option("script_location", script_location)
    script = ScriptDirectory.from_config(config)
    engine = sqlalchemy.create_engine(url(database_url, drivername="postgresql+psycopg2"))
    with engine.begin() as connection:
        MigrationContext.configure(connection).stamp(script, "head")
    engine.dispose()


def time_heartbeats(engine: Engine, checks: Sequence[Check], count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        report = engine.run_sync(checks)
        times.append(time.perf_counter() - started)
        assert report.status == "ok", report.as_dict()
    return times


def row(label: str, times: list[float]) -> str:
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    p50, p90, p99 = (statistics.median(times), cuts[89], cuts[98])
    figures = [p50, p90, p99, max(times), statistics.fmean(times)]
    return f"| {label:<46} | " + " | ".join(f"{t * 1000:8.3f}" for t in figures) + " |"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heartbeats", type=int, default=500, help="heartbeats per case")
    parser.add_argument("--warmup", type=int, default=20, help="untimed heartbeats first")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the cases")
    args = parser.parse_args(argv)

    with scratch_database() as database, tempfile.TemporaryDirectory() as scripts_dir:
        scripts = write_scripts(Path(scripts_dir))
        stamp_head(database, scripts)
        engine = Engine(timeout=3.0)
        sync_engine = sqlalchemy.create_engine(url(database, drivername="postgresql+psycopg2"))
        async_engine = create_async_engine(url(database, drivername="postgresql+asyncpg"))
        sync_redis = redis.Redis.from_url(REDIS_URL)
        async_redis = redis.asyncio.Redis.from_url(REDIS_URL)
        asyncpg_check = AsyncpgCheck(url(database, drivername="postgresql"))
        sync_db, async_db = check_engine(sync_engine), check_engine(async_engine)
        sync_checks = {
            "SQLAlchemy psycopg2 SELECT 1": Check("db", database_check(sync_db)),
            "redis.Redis PING": Check("redis", redis_check(sync_redis)),
            "migrations (sync Engine)": Check(
                "migrations", migrations_check(script_location=scripts, engine=sync_db)
            ),
        }
        async_checks = {
            "SQLAlchemy AsyncEngine asyncpg SELECT 1": Check("db", database_check(async_db)),
            "AsyncpgCheck SELECT 1": Check("asyncpg", asyncpg_check),
            "redis.asyncio PING": Check("redis", redis_check(async_redis)),
            "migrations (AsyncEngine)": Check(
                "migrations", migrations_check(script_location=scripts, engine=async_db)
            ),
        }
        cases = [
            ("sync: all 3 built-in checks", list(sync_checks.values())),
            ("async: all 4 built-in checks", list(async_checks.values())),
            *((f"sync: {name}", [check]) for name, check in sync_checks.items()),
            *((f"async: {name}", [check]) for name, check in async_checks.items()),
        ]
        try:
            for _, checks in cases:
                time_heartbeats(engine, checks, args.warmup)
            # Rounds interleave the cases, so that a burst of load elsewhere on the machine
            # spreads over all of them instead of skewing one.
            times: dict[str, list[float]] = {label: [] for label, _ in cases}
            for _ in range(args.rounds):
                for label, checks in cases:
                    times[label] += time_heartbeats(engine, checks, args.heartbeats // args.rounds)
            header = "p50 ms | p90 ms | p99 ms | max ms | mean ms"
            print(
                f"{len(times[cases[0][0]])} heartbeats per case in {args.rounds} interleaved "
                f"rounds, after {args.warmup} untimed\n"
            )
            print(f"| {'case':<46} | " + " | ".join(f"{h:>8}" for h in header.split(" | ")) + " |")
            print(f"|{'-' * 48}|" + "|".join("-" * 10 for _ in range(5)) + "|")
            for label, _ in cases:
                print(row(label, times[label]))
        finally:
            engine.bridge.call(asyncpg_check.close)
            engine.bridge.call(async_db.dispose)
            engine.bridge.call(async_engine.dispose)
            engine.bridge.call(async_redis.aclose)
            engine.close()
            sync_db.dispose()
            sync_engine.dispose()
            sync_redis.close()


if __name__ == "__main__":
    main()
