"""python-dockerflow's ``dockerflow.flask.checks``: check messages and the built-in checks.

The built-in checks import their drivers only when called, so importing this module needs none
of sqlalchemy, redis or alembic.
"""

from __future__ import annotations

from typing import Any

from ...health import (
    CRITICAL,
    DEBUG,
    ERROR,
    INFO,
    STATUSES,
    WARNING,
    CheckData,
    CheckMessage,
    Critical,
    Debug,
    Error,
    Info,
    Warning,
    level_to_text,
)


def check_database_connected(db: Any) -> list[CheckMessage | CheckData]:
    """Run ``SELECT 1`` on a Flask-SQLAlchemy ``db`` or SQLAlchemy ``Engine``.

    See :func:`dockerflow.integrations.sqlalchemy.check_database_connected`.
    """
    from ...integrations.sqlalchemy import check_database_connected as check

    return check(db)


def check_redis_connected(client: Any) -> list[CheckMessage]:
    """Send ``PING`` with a ``redis.Redis`` client or Flask-Redis store.

    See :func:`dockerflow.integrations.redis.check_redis_connected`.
    """
    from ...integrations.redis import check_redis_connected as check

    return check(client)


def check_migrations_applied(migrate: Any) -> list[CheckMessage | CheckData]:
    """Compare the database's Alembic heads with the script heads of a Flask-Migrate ``migrate``.

    See :func:`dockerflow.integrations.alembic.check_migrations_applied`.
    """
    from ...integrations.alembic import check_migrations_applied as check

    return check(migrate)


__all__ = [
    "CRITICAL",
    "DEBUG",
    "ERROR",
    "INFO",
    "STATUSES",
    "WARNING",
    "CheckMessage",
    "Critical",
    "Debug",
    "Error",
    "Info",
    "Warning",
    "check_database_connected",
    "check_migrations_applied",
    "check_redis_connected",
    "level_to_text",
]
