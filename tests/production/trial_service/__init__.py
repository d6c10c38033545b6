"""The service of the migration trial (issue 22): written for python-dockerflow, run unchanged.

An application factory; every extension is made at import time without its app (``Migrate()``
and ``Dockerflow()`` too) and set up in :func:`create_app`. Flask-SQLAlchemy on PostgreSQL,
Flask-Migrate, redis-py, Flask-Login and one custom check. ``test_migration_trial.py`` copies
this package out of the checkout and serves it with gunicorn from a clean virtual environment
holding only the built wheel, its extras and these libraries.
"""

from __future__ import annotations

import os

import redis
from flask import Flask, jsonify
from flask_login import LoginManager, UserMixin, login_user
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

from dockerflow.flask import Dockerflow
from dockerflow.flask.checks import Warning

db = SQLAlchemy()
migrate = Migrate()
cache = redis.Redis.from_url(os.environ["TRIAL_REDIS_URL"])
dockerflow = Dockerflow(db=db, migrate=migrate, redis=cache)
login_manager = LoginManager()


class User(UserMixin, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "trial_users"
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(80), nullable=False)


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    return db.session.get(User, int(user_id))


@dockerflow.check
def queue_depth() -> list[Warning]:
    """The service's own check, python-dockerflow style."""
    depth = int(cache.get("trial:queue-depth") or 0)
    return [Warning(f"{depth} jobs waiting", id="trial.W001")] if depth > 100 else []


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["TRIAL_DATABASE_URL"]
    app.config["SECRET_KEY"] = "trial"
    db.init_app(app)
    migrate.init_app(app, db, directory=os.path.join(os.path.dirname(__file__), "migrations"))
    login_manager.init_app(app)
    dockerflow.init_app(app)

    @app.route("/login/<int:user_id>")
    def login(user_id: int) -> object:
        user = db.session.get(User, user_id)
        if user is None:
            user = User(id=user_id, name=f"user {user_id}")
            db.session.add(user)
            db.session.commit()
        login_user(user)
        return jsonify(user=user.id)

    return app
