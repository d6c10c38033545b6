"""Migration checks through Alembic: are the database's migrations those of the code?

Message IDs, those of python-dockerflow:

* the database's heads differ from the migration scripts' heads →
  :data:`~dockerflow.health.WARNING_UNAPPLIED_MIGRATION` (``W001``), a warning naming the
  revisions not applied yet, in upgrade order (or the database's revisions that the scripts do not
  know, when the database runs ahead of the code);
* the database cannot be reached to find out → :data:`~dockerflow.health.INFO_CANT_CHECK_MIGRATIONS`
  (``I001``), only informative: the database check reports that failure.

The migration scripts are read on the first check and kept: they do not change while the process
runs. The database's heads are read on every check, through a
:class:`~dockerflow.integrations.sqlalchemy.CheckEngine` (a pool of the checks' own).
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from .. import health
from .._errors import ConfigurationError
from ..engine import CheckFunction
from ..health import CheckData, CheckMessage, Info, Warning
from ._support import Bounded, bounded_parts, failure, is_driver_failure, requires
from .sqlalchemy import (
    AsyncCheckEngine,
    CannotConnectError,
    CheckEngine,
    SharedConnectionError,
    check_engine,
    run_on_connection,
    run_on_connection_sync,
    sync_engine_of,
)

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Connection, Engine

# Unapplied revisions named in the message; the rest are counted.
_SHOWN = 10


def check_migrations_applied(migrate: Any) -> list[CheckMessage | CheckData]:
    """Check that a Flask-Migrate application's migrations are applied: python-dockerflow's check.

    Blocking; it reads the migration scripts on every call and uses the application's engine and
    pool. Call it in an application context: ``migrate.get_config()`` reads ``flask.g`` and
    ``migrate.db.engine`` the current application.

    :param migrate: a ``flask_migrate.Migrate`` set up with a Flask-SQLAlchemy ``db``.
    :returns: no message if the database is at the scripts' heads, else one
        :class:`~dockerflow.checks.Warning` (``W001``) or :class:`~dockerflow.checks.Info`
        (``I001``).
    :raises MissingDependencyError: if Alembic or SQLAlchemy is not installed.
    """
    with requires("alembic", extra="alembic"):
        from alembic.script import ScriptDirectory
    script = ScriptDirectory.from_config(migrate.get_config(directory=migrate.directory))
    return _migrations_applied(lambda: script, sync_engine_of(migrate.db), _version_opts(migrate))


def migrations_check(
    *,
    migrate: Any = None,
    config: Config | None = None,
    script_location: str | os.PathLike[str] | None = None,
    engine: object = None,
    version_table: str | None = None,
    version_table_schema: str | None = None,
    timeout: float | None = None,
) -> CheckFunction:
    """Return a migrations check: the scripts' heads against the database's.

    Give the scripts as one of ``migrate``, ``config`` or ``script_location``, and the database as
    ``engine`` (taken from ``migrate.db`` when not given).

    :param migrate: a ``flask_migrate.Migrate``; unless ``engine`` is given, the check then needs
        an application context for ``migrate.db.engine``.
    :param config: an ``alembic.config.Config`` whose ``script_location`` is set.
    :param script_location: the directory of the migration scripts (with its ``env.py``).
    :param engine: a SQLAlchemy ``Engine`` or ``AsyncEngine``, a Flask-SQLAlchemy object, or a
        :class:`~dockerflow.integrations.sqlalchemy.CheckEngine` or
        :class:`~dockerflow.integrations.sqlalchemy.AsyncCheckEngine` to share with the database
        check.
    :param version_table: the table of applied revisions, if ``env.py`` renames it; taken from
        ``Migrate(..., version_table=...)`` when not given, else Alembic's ``alembic_version``.
    :param version_table_schema: the schema of that table, likewise.
    :param timeout: the timeout the check runs under, in seconds (default 3); its database calls
        are bounded a little under it, as the database check's are. The Flask extension sets it
        from ``DOCKERFLOW_CHECK_TIMEOUT`` when it is not given.
    :returns: a function of no arguments, ``async`` for an ``AsyncEngine``. Once it has read
        the database's revision, its result also holds it, as the value ``database_head``
        (:class:`~dockerflow.health.CheckData`; ``None`` before any migration).
    :raises TypeError: unless exactly one source of scripts and a database are given.
    :raises MissingDependencyError: if Alembic or SQLAlchemy is not installed.
    """
    with requires("alembic", extra="alembic"):
        from alembic.config import Config
    sources = [migrate, config, script_location]
    if sum(source is not None for source in sources) != 1:
        raise TypeError("give exactly one of migrate, config or script_location")
    if engine is None and migrate is not None and getattr(migrate, "db", None) is None:
        # Migrate() of an application factory: its database comes with init_app(app, db).
        return UnboundMigrationsCheck(
            migrate,
            lambda bound: migrations_check(
                migrate=migrate,
                version_table=version_table,
                version_table_schema=version_table_schema,
                timeout=bound,
            ),
            timeout=timeout,
        )
    if engine is None:
        if migrate is None:
            raise TypeError("give the engine of the migrated database")
        engine = migrate.db
    database = check_engine(engine, timeout=timeout)

    load_config: Callable[[], Config]
    if migrate is not None:
        load_config = functools.partial(_flask_migrate_config, Config, migrate)
    elif config is not None:
        load_config = functools.partial(_same, config)
    else:
        assert script_location is not None  # exactly one source, counted above
        load_config = functools.partial(_config_for, Config, os.fspath(script_location))

    opts = _version_opts(migrate, version_table, version_table_schema)
    scripts = _Scripts(load_config)
    if isinstance(database, AsyncCheckEngine):
        return functools.partial(_migrations_applied_async, scripts, database, opts)
    return functools.partial(_migrations_applied, scripts, database, opts)


class UnboundMigrationsCheck(Bounded):
    """The migrations check of a Flask-Migrate ``Migrate()`` not yet given its database.

    An application factory makes ``migrate = Migrate()`` at import time and calls
    ``migrate.init_app(app, db)`` later, as python-dockerflow allows. The check is made by
    :meth:`bind` once ``migrate.db`` is set: the Flask extension calls it in ``init_app``, and
    the first run does if that was too early. A run while ``migrate.db`` is still ``None``
    raises :class:`~dockerflow.engine.ConfigurationError` (reported as the check's error)
    saying to call ``migrate.init_app(app, db)``.

    :param migrate: the ``flask_migrate.Migrate``.
    :param make: ``make(timeout)`` returns the check once ``migrate.db`` is set.
    :param timeout: as for :func:`migrations_check`.
    """

    def __init__(
        self,
        migrate: Any,
        make: Callable[[float | None], CheckFunction],
        *,
        timeout: float | None = None,
    ) -> None:
        super().__init__(timeout)
        self.migrate = migrate
        self._make = make
        self._lock = threading.Lock()
        self._check: CheckFunction | None = None

    @property
    def bound(self) -> CheckFunction | None:
        """The check, once :meth:`bind` made it; else ``None``."""
        return self._check

    def bind(self) -> CheckFunction | None:
        """Make the check if ``migrate.db`` is set now; return it, or ``None`` while it is not.

        :raises TypeError: if ``migrate.db`` is of a type no database check takes.
        """
        # Runs of the check in several worker threads may bind at once: one check is made.
        with self._lock:
            if self._check is None and getattr(self.migrate, "db", None) is not None:
                check = self._make(self.timeout if self._explicit else None)
                if self._followed:
                    for part in bounded_parts(check):
                        part.follow(self.timeout)
                self._check = check
            return self._check

    def follow(self, seconds: float) -> None:
        """Take ``seconds`` as the timeout, as :meth:`Bounded.follow`, and tell the check."""
        super().follow(seconds)
        if self._check is not None:
            for part in bounded_parts(self._check):
                part.follow(seconds)

    def __call__(self) -> Any:
        check = self.bind()
        if check is None:
            raise ConfigurationError(
                "migrate= was given a Flask-Migrate Migrate() whose database is not set "
                "(migrate.db is None): call migrate.init_app(app, db) in the app factory"
            )
        return check()

    def __repr__(self) -> str:
        return f"UnboundMigrationsCheck({self.migrate!r})"


class _Scripts:
    """The migration scripts, read on first use and kept."""

    def __init__(self, load_config: Callable[[], Config]) -> None:
        self._load_config = load_config
        self._script: ScriptDirectory | None = None

    @property
    def loaded(self) -> bool:
        return self._script is not None

    def __call__(self) -> ScriptDirectory:
        from alembic.script import ScriptDirectory

        # Two threads may both read the scripts the first time; both get the same heads.
        if self._script is None:
            self._script = ScriptDirectory.from_config(self._load_config())
        return self._script


def _migrations_applied(
    scripts: Callable[[], ScriptDirectory],
    engine: Engine | CheckEngine,
    opts: Mapping[str, Any],
) -> list[CheckMessage | CheckData]:
    from sqlalchemy.exc import SQLAlchemyError

    script = scripts()
    heads = functools.partial(_current_heads, opts=opts)
    try:
        if isinstance(engine, CheckEngine):
            db_heads = engine.run(heads, functools.partial(_current_heads_shared, opts=opts))
        else:
            db_heads = run_on_connection_sync(sync_engine_of(engine), heads)
    except CannotConnectError as exc:
        return [_cannot_check(exc.error)]
    except (SQLAlchemyError, OSError, asyncio.TimeoutError, SharedConnectionError) as exc:
        return [_cannot_check(exc)]
    except BaseException as exc:  # a CancelledError the driver raised, say
        if isinstance(exc, Exception) or not is_driver_failure(exc):
            raise
        return [_cannot_check(exc)]
    if not isinstance(engine, CheckEngine):
        return [*_compare(script, db_heads)]  # python-dockerflow's check: messages only
    return [*_compare(script, db_heads), _head_data(db_heads)]


async def _migrations_applied_async(
    scripts: _Scripts, engine: AsyncCheckEngine, opts: Mapping[str, Any]
) -> list[CheckMessage | CheckData]:
    from sqlalchemy.exc import SQLAlchemyError

    # Reading the scripts parses every revision file: not on the event loop.
    script = scripts() if scripts.loaded else await anyio.to_thread.run_sync(scripts)
    try:
        db_heads = await run_on_connection(
            engine.engine, functools.partial(_current_heads, opts=opts), engine.driver_timeout
        )
    except CannotConnectError as exc:
        return [_cannot_check(exc.error)]
    except (SQLAlchemyError, OSError, asyncio.TimeoutError) as exc:
        return [_cannot_check(exc)]
    except BaseException as exc:  # a CancelledError the driver raised, say
        if isinstance(exc, Exception) or not is_driver_failure(exc):
            raise
        return [_cannot_check(exc)]
    return [*_compare(script, db_heads), _head_data(db_heads)]


def _head_data(db_heads: Iterable[str]) -> CheckData:
    """The database's revision(s), ``None`` before any migration: cheap, read already."""
    return CheckData("database_head", ", ".join(sorted(db_heads)) or None)


def _current_heads(connection: Connection, opts: Mapping[str, Any]) -> tuple[str, ...]:
    from alembic.migration import MigrationContext

    return MigrationContext.configure(connection, opts=dict(opts)).get_current_heads()


def _current_heads_shared(raw: Any, dialect: Any, opts: Mapping[str, Any]) -> tuple[str, ...]:
    """The database's heads, read through a SQLite connection the application shares with the
    check: plain SELECTs, which leave its transaction as it is (Alembic's own reading goes
    through a SQLAlchemy connection, which would end it).

    :raises SharedConnectionError: for another database: only SQLite is read this way.
    """
    if dialect.name != "sqlite":
        raise SharedConnectionError(None)
    schema = _quoted(opts.get("version_table_schema") or "main")
    table = opts.get("version_table") or "alembic_version"
    cursor = raw.cursor()
    try:
        cursor.execute(
            f"SELECT count(*) FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?",
            (table,),
        )
        if not cursor.fetchone()[0]:
            return ()
        cursor.execute(f"SELECT version_num FROM {schema}.{_quoted(table)}")
        return tuple(row[0] for row in cursor.fetchall())
    finally:
        cursor.close()


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _compare(script: ScriptDirectory, db_heads: Iterable[str]) -> list[CheckMessage]:
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    db_heads = set(db_heads)
    if db_heads == set(script.get_heads()):
        return []
    applied: set[str] = set()
    unknown: list[str] = []
    for head in sorted(db_heads):
        try:
            applied.update(s.revision for s in script.iterate_revisions(head, "base"))
        except (RevisionError, CommandError):
            unknown.append(head)
    if unknown:
        text = f"Database has migrations that the scripts do not know: {', '.join(unknown)}"
        return [Warning(text, id=health.WARNING_UNAPPLIED_MIGRATION)]
    pending = [
        s.revision for s in reversed(list(script.walk_revisions())) if s.revision not in applied
    ]
    shown = ", ".join(pending[:_SHOWN])
    more = f" and {len(pending) - _SHOWN} more" if len(pending) > _SHOWN else ""
    return [
        Warning(f"Unapplied migrations found: {shown}{more}", id=health.WARNING_UNAPPLIED_MIGRATION)
    ]


def _cannot_check(exc: BaseException) -> CheckMessage:
    return failure(
        "Can't connect to database to check migrations",
        exc,
        health.INFO_CANT_CHECK_MIGRATIONS,
        cls=Info,
    )


def _flask_migrate_config(config_class: type[Config], migrate: Any) -> Config:
    # Migrate.get_config() without its reading of flask.g (for the CLI's -x arguments), so that
    # the scripts can be read outside of an application context.
    directory = os.fspath(migrate.directory)
    config = config_class(os.path.join(directory, "alembic.ini"))
    config.set_main_option("script_location", directory)
    configured: Config = migrate.call_configure_callbacks(config)
    return configured


def _same(config: Config) -> Config:
    return config


def _config_for(config_class: type[Config], script_location: str) -> Config:
    config = config_class()
    config.set_main_option("script_location", script_location)
    return config


def _version_opts(
    migrate: Any, version_table: str | None = None, version_table_schema: str | None = None
) -> dict[str, Any]:
    # Flask-Migrate passes Migrate(..., **kwargs) to context.configure() in its env.py.
    given = getattr(migrate, "alembic_ctx_kwargs", None) or {}
    opts: dict[str, Any] = {}
    table = version_table or given.get("version_table")
    schema = version_table_schema or given.get("version_table_schema")
    if table:
        opts["version_table"] = table
    if schema:
        opts["version_table_schema"] = schema
    return opts
