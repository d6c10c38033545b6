"""Alembic environment of the demo.

The demo's ``flask db upgrade`` (``examples.demo.app``) runs the upgrade on a connection of its
own engine, handed over in ``config.attributes["connection"]``. Run from the ``alembic`` command
line instead, the database URL comes from ``-x url=...`` or the demo's default.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from examples.demo.app import database_url

config = context.config


def run_offline() -> None:
    url = context.get_x_argument(as_dictionary=True).get("url") or database_url()
    context.configure(url=url, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or database_url()
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
