"""The database check leaves the application's engine, pool, connections and arguments alone.

The check works through an engine of its own beside the application's, made from the app's
connection recipe (URL, ``connect_args``, ``creator=``, ``do_connect`` hooks) and set up like
the app's connections (its pool's ``connect`` listeners, its execution options and isolation
level); nothing it does may show in the application's own connections:

* the app's connect arguments stay the app's (SQLAlchemy 2.0 hands every connect the engine's
  one ``cparams`` dict: the check's connect timeout must not be written into it);
* the app's pool listeners other than ``connect`` never see the check's connections;
* a connection the app shares with everything (``StaticPool``, or a ``creator=`` that returns
  one connection) is never closed, shut down, rolled back or reconfigured by the check, even
  when the check times out on it.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy.pool import StaticPool

from dockerflow.engine import Check, Engine
from dockerflow.integrations import database_check, migrations_check, release
from dockerflow.integrations.sqlalchemy import CheckEngine

from .helpers import (
    ALEMBIC_APP,
    ANSWER,
    count_backends,
    messages_of,
    running_query,
    unique_name,
    url_with,
    wait_until,
)


@pytest.fixture
def made(engine: Engine) -> Iterator[Callable[[Any], Any]]:
    """Keep check functions and app engines; released / disposed of at teardown."""
    things: list[Any] = []

    def keep(thing: Any) -> Any:
        things.append(thing)
        return thing

    yield keep
    for thing in reversed(things):
        if isinstance(thing, sqlalchemy.Engine):
            thing.dispose()
        else:
            engine.bridge.call(release, thing)


def beats(engine: Engine, *checks: Check, times: int = 3) -> None:
    """Run ``times`` heartbeats of ``checks``; every check must pass."""
    for _ in range(times):
        report = engine.run_sync(checks)
        assert set(report.checks.values()) == {"ok"}, report.as_dict()


def check_connection(func: Any) -> sqlalchemy.Connection:
    """A connection of the check's own engine, set up as the check's connections are."""
    check_engine = func.args[0]
    assert isinstance(check_engine, CheckEngine)
    return check_engine.engine.connect()


# The application's connect arguments (issue 15, item 3).


@pytest.mark.postgres
@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_the_apps_connect_timeout_is_its_own_after_heartbeats(
    engine: Engine, postgres_url: str, made: Callable[[Any], Any], driver: str
) -> None:
    pytest.importorskip(driver)
    app = made(
        sqlalchemy.create_engine(
            url_with(postgres_url, drivername=f"postgresql+{driver}"),
            connect_args={"connect_timeout": 30},
        )
    )
    seen: list[object] = []

    @sqlalchemy.event.listens_for(app, "do_connect")
    def spy(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        seen.append(cparams.get("connect_timeout"))

    with app.connect():
        pass
    func = made(database_check(app, timeout=2.5))
    beats(engine, Check("db", func, timeout=2.5))
    app.dispose()
    with app.connect() as connection:
        raw: Any = connection.connection.dbapi_connection
        params = raw.get_dsn_parameters() if driver == "psycopg2" else raw.info.get_parameters()
    # The app's hook saw the app's own arguments at every connect, the check's included, and
    # the app's new connection has the app's timeout.
    assert seen and set(seen) == {30}
    assert params["connect_timeout"] == "30"
    # The check's own connection has the check's bound (libpq's whole seconds, at least 2).
    with check_connection(func) as connection:
        raw = connection.connection.dbapi_connection
        params = raw.get_dsn_parameters() if driver == "psycopg2" else raw.info.get_parameters()
    assert params["connect_timeout"] == "2"


# What the check's connections carry over from the application's engine (item 12).


@pytest.mark.postgres
def test_the_apps_pool_listeners_do_not_see_the_checks_connections(
    engine: Engine, postgres_url: str, made: Callable[[Any], Any]
) -> None:
    """A listener counting the app's checkouts counts the app's, not the heartbeats'."""
    app = made(sqlalchemy.create_engine(url_with(postgres_url, drivername="postgresql+psycopg2")))
    counted = {"checkout": 0, "checkin": 0, "reset": 0}
    for name in counted:
        sqlalchemy.event.listen(
            app, name, lambda *args, name=name: counted.update({name: counted[name] + 1})
        )
    with app.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT 1"))
    before = dict(counted)
    func = made(database_check(app))
    beats(engine, Check("db", func, timeout=ANSWER), times=5)
    assert counted == before


@pytest.mark.postgres
def test_the_apps_connect_listeners_set_up_the_checks_connections(
    engine: Engine, postgres_url: str, made: Callable[[Any], Any]
) -> None:
    """A ``connect`` listener is how an app sets up its sessions (search_path, role, time
    zone): the check's connections are set up the same way, so that the migrations check finds
    the version table the app's own queries find."""
    app = made(sqlalchemy.create_engine(url_with(postgres_url, drivername="postgresql+psycopg2")))

    @sqlalchemy.event.listens_for(app, "connect")
    def set_search_path(dbapi_connection: Any, record: Any) -> None:
        # SQLAlchemy's recipe: outside of a transaction, so that no rollback undoes it.
        dbapi_connection.autocommit = True
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET SESSION search_path TO dockerflow_elsewhere, public")
        dbapi_connection.autocommit = False

    with app.connect() as connection:
        assert connection.exec_driver_sql("SHOW search_path").scalar().startswith("dockerflow")
    func = made(database_check(app))
    beats(engine, Check("db", func, timeout=ANSWER))
    with check_connection(func) as connection:
        path = connection.exec_driver_sql("SHOW search_path").scalar()
    assert path == "dockerflow_elsewhere, public"


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"execution_options": {"isolation_level": "REPEATABLE READ"}}, "repeatable read"),
        ({"isolation_level": "SERIALIZABLE"}, "serializable"),
        ({"execution_options": {"isolation_level": "AUTOCOMMIT"}}, None),
    ],
    ids=["execution-options", "dialect-isolation-level", "autocommit"],
)
def test_the_checks_connections_keep_the_apps_isolation_level(
    engine: Engine,
    postgres_url: str,
    made: Callable[[Any], Any],
    options: dict[str, Any],
    expected: str | None,
) -> None:
    app = made(
        sqlalchemy.create_engine(
            url_with(postgres_url, drivername="postgresql+psycopg2"), **options
        )
    )
    func = made(database_check(app))
    beats(engine, Check("db", func, timeout=ANSWER))
    with check_connection(func) as connection:
        raw: Any = connection.connection.dbapi_connection
        if expected is None:
            assert raw.autocommit is True
        else:
            level = connection.exec_driver_sql("SHOW transaction_isolation").scalar()
            assert level == expected


# Connections the check does not own (item 12).


def _sqlite_static_app() -> sqlalchemy.Engine:
    """An in-memory database as Flask-SQLAlchemy makes it: one connection, shared by threads."""
    app = sqlalchemy.create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    with app.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE app_rows (name TEXT)")
    return app


def test_static_pool_the_apps_connection_and_database_survive_heartbeats(
    engine: Engine, made: Callable[[Any], Any]
) -> None:
    app = made(_sqlite_static_app())
    func = made(database_check(app))
    connection = app.connect()
    connection.exec_driver_sql("INSERT INTO app_rows VALUES ('made by the app')")
    # Committed first: on a StaticPool the check goes through the application's own engine, as
    # python-dockerflow's does, and its connection's return to the pool rolls back an open
    # transaction on the one shared connection (python-dockerflow's check does the same).
    connection.commit()
    beats(engine, Check("db", func, timeout=ANSWER))
    engine.bridge.call(release, func)
    connection.close()
    with app.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM app_rows").scalar() == 1


def test_static_pool_the_migrations_check_reads_the_apps_database_and_leaves_it(
    engine: Engine, made: Callable[[Any], Any]
) -> None:
    from alembic import command
    from alembic.config import Config

    app = made(_sqlite_static_app())
    with app.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(ALEMBIC_APP))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    check_engine = CheckEngine(app)
    checks = [
        Check("db", made(database_check(check_engine)), timeout=ANSWER),
        Check(
            "migrations", made(migrations_check(script_location=ALEMBIC_APP, engine=check_engine))
        ),
    ]
    connection = app.connect()
    connection.exec_driver_sql("INSERT INTO app_rows VALUES ('made by the app')")
    # Committed first: on a StaticPool the check goes through the application's own engine, as
    # python-dockerflow's does, and its connection's return to the pool rolls back an open
    # transaction on the one shared connection (python-dockerflow's check does the same).
    connection.commit()
    beats(engine, *checks)
    connection.close()
    with app.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM app_rows").scalar() == 1


def test_static_pool_a_check_timeout_leaves_the_apps_connection_and_database(
    engine: Engine, made: Callable[[Any], Any]
) -> None:
    """The app's query holds its one connection past the check's timeout."""
    app = made(_sqlite_static_app())
    func = made(database_check(app, timeout=0.3))
    check = Check("db", func, timeout=0.3)
    go_on = threading.Event()
    waiting = threading.Event()

    def wait_for_the_test() -> bool:
        waiting.set()
        return go_on.wait(30)

    connection = app.connect()
    raw: Any = connection.connection.dbapi_connection
    raw.create_function("wait_for_the_test", 0, wait_for_the_test)
    connection.exec_driver_sql("INSERT INTO app_rows VALUES ('made by the app')")
    # Committed first: on a StaticPool the check goes through the application's own engine, as
    # python-dockerflow's does, and its connection's return to the pool rolls back an open
    # transaction on the one shared connection (python-dockerflow's check does the same).
    connection.commit()
    query = threading.Thread(
        target=lambda: connection.exec_driver_sql("SELECT wait_for_the_test()").all()
    )
    query.start()
    try:
        assert waiting.wait(10)  # the app's query holds the one connection
        report = engine.run_sync([check])
        assert report.checks == {"db": "error"}  # timed out behind the app's query
    finally:
        go_on.set()
        query.join(10)
    wait_until(lambda: engine.run_sync([check]).checks == {"db": "ok"})
    connection.close()
    with app.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM app_rows").scalar() == 1


def test_singleton_thread_pool_checks_from_many_threads_leave_the_apps_database(
    made: Callable[[Any], Any],
) -> None:
    """SQLAlchemy's default pool for ``sqlite://`` keeps one connection per thread and closes
    some when more threads come: checks run in threads of their own, and must not make it
    close the app's (and with it the app's in-memory database)."""
    for _ in range(5):
        app = made(sqlalchemy.create_engine("sqlite://"))
        with app.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE app_rows (name TEXT)")
        func = made(database_check(app))
        results: list[Any] = []

        def run(func: Any = func, results: list[Any] = results) -> None:
            results.append(func())

        threads = [threading.Thread(target=run) for _ in range(8)]
        for thread in threads:
            thread.start()
            thread.join(10)
        assert [messages_of(result) for result in results] == [[]] * 8
        with app.connect() as connection:
            assert connection.exec_driver_sql("SELECT count(*) FROM app_rows").scalar() == 0


@pytest.fixture
def shared_psycopg2(postgres_url: str) -> Iterator[tuple[Any, str]]:
    """One psycopg2 connection, the only one an app's ``creator=`` hands out."""
    import psycopg2

    name = unique_name("shared")
    shared = psycopg2.connect(postgres_url, application_name=name)
    yield shared, name
    shared.close()


@pytest.mark.postgres
def test_shared_creator_connection_survives_heartbeats_and_release(
    engine: Engine,
    postgres_url: str,
    shared_psycopg2: tuple[Any, str],
    made: Callable[[Any], Any],
) -> None:
    shared, name = shared_psycopg2
    app = made(sqlalchemy.create_engine("postgresql+psycopg2://", creator=lambda: shared))
    func = made(database_check(app))
    connection = app.connect()
    connection.exec_driver_sql("CREATE TEMPORARY TABLE app_rows (name TEXT)")
    connection.exec_driver_sql("INSERT INTO app_rows VALUES ('made by the app')")  # not committed
    beats(engine, Check("db", func, timeout=ANSWER))
    assert connection.exec_driver_sql("SHOW statement_timeout").scalar() == "0"  # the app's own
    engine.bridge.call(release, func)
    connection.commit()
    assert connection.exec_driver_sql("SELECT count(*) FROM app_rows").scalar() == 1
    connection.close()
    assert shared.closed == 0
    assert count_backends(postgres_url, name) == 1
    beats(engine, Check("db", func, timeout=ANSWER))
    # Idle between the app's transactions, the shared connection is left idle.
    from psycopg2.extensions import TRANSACTION_STATUS_IDLE

    assert shared.info.transaction_status == TRANSACTION_STATUS_IDLE


@pytest.mark.postgres
def test_shared_creator_connection_survives_a_check_timeout(
    engine: Engine,
    postgres_url: str,
    shared_psycopg2: tuple[Any, str],
    made: Callable[[Any], Any],
) -> None:
    """The app's slow query holds the shared connection past the check's timeout: the query
    must not be cut off by the check's socket deadline."""
    shared, name = shared_psycopg2
    app = made(sqlalchemy.create_engine("postgresql+psycopg2://", creator=lambda: shared))
    func = made(database_check(app, timeout=0.5))
    check = Check("db", func, timeout=0.5)
    beats(engine, check, times=1)
    outcome: list[Any] = []
    # The app's query waits on an advisory lock this test holds until the heartbeat has
    # answered: it outlasts the check's timeout however slow the machine is.
    key = secrets.randbits(62)
    holder = made(
        sqlalchemy.create_engine(url_with(postgres_url, drivername="postgresql+psycopg2"))
    )

    def slow_query() -> None:
        try:
            with app.connect() as connection:
                outcome.append(
                    connection.exec_driver_sql(
                        f"SELECT pg_advisory_xact_lock_shared({key}), 1"
                    ).all()
                )
        except Exception as exc:  # the test reports it below
            outcome.append(exc)

    with holder.connect() as lock:
        lock.exec_driver_sql(f"SELECT pg_advisory_lock({key})")
        query = threading.Thread(target=slow_query)
        query.start()
        wait_until(lambda: running_query(postgres_url, name, "pg_advisory") or bool(outcome))
        report = engine.run_sync([check])
        lock.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
    query.join(10)
    assert report.checks == {"db": "error"}  # timed out behind the app's query
    assert outcome == [[("", 1)]]
    assert shared.closed == 0
    with contextlib.closing(shared.cursor()) as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    shared.rollback()
    wait_until(lambda: engine.run_sync([check]).checks == {"db": "ok"})


@pytest.mark.postgres
def test_a_creator_of_new_connections_gives_the_check_one_of_its_own(
    engine: Engine, postgres_url: str, made: Callable[[Any], Any]
) -> None:
    """A creator= that connects anew on each call (a cloud connector's): asked twice at the
    first connect, it is told apart from a shared one, and the spare connection is closed."""
    import psycopg2

    name = unique_name("creator")
    app = made(
        sqlalchemy.create_engine(
            "postgresql+psycopg2://",
            creator=lambda: psycopg2.connect(postgres_url, application_name=name),
        )
    )
    func = made(database_check(app))
    beats(engine, Check("db", func, timeout=ANSWER), times=5)
    assert count_backends(postgres_url, name) == 1  # the check's own, kept; the app has none


@pytest.mark.postgres
def test_the_apps_do_connect_hooks_added_later_apply_to_the_checks_connections(
    engine: Engine, postgres_url: str, made: Callable[[Any], Any]
) -> None:
    """A hook the app adds after the check's own (say, a token fetched per connect) still
    runs for the check's connects, on the check's copy of the arguments."""
    name = unique_name("later-hook")
    app = made(sqlalchemy.create_engine(url_with(postgres_url, drivername="postgresql+psycopg2")))
    func = made(database_check(app))
    beats(engine, Check("db", func, timeout=ANSWER), times=1)
    engine.bridge.call(release, func)  # the check's next connect is a new one

    @sqlalchemy.event.listens_for(app, "do_connect")
    def name_it(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["application_name"] = name

    beats(engine, Check("db", func, timeout=ANSWER), times=1)
    assert count_backends(postgres_url, name) == 1
