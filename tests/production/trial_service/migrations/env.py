"""Flask-Migrate's environment, reduced: migrations run on the app's Flask-SQLAlchemy engine."""

from __future__ import annotations

from alembic import context
from flask import current_app

db = current_app.extensions["migrate"].db

with db.engine.connect() as connection:
    context.configure(connection=connection, target_metadata=db.metadata)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
