"""Mozlog JSON logging for the demo under servers other than gunicorn (uWSGI, ``flask run``).

gunicorn gets the same configuration from ``logconfig_dict`` in ``examples/gunicorn.conf.py``.
"""

from __future__ import annotations

from typing import Any

#: The mozlog ``Logger`` field of every line: the name of the service.
SERVICE_NAME = "dockerflow-demo"
#: The app's top-level package, whose loggers (and Flask's ``app.logger``) log at INFO.
APP_PACKAGE = "examples.demo"

#: A ``logging.config.dictConfig`` configuration: JSON lines on stdout; the app's records,
#: request.summary and dockerflow's at INFO, everything else at WARNING.
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "dockerflow.logging.JsonLogFormatter", "logger_name": SERVICE_NAME},
    },
    "filters": {
        "request_id": {"()": "dockerflow.logging.RequestIdLogFilter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "json",
            "filters": ["request_id"],
        },
    },
    "loggers": {
        APP_PACKAGE: {"handlers": ["console"], "level": "INFO", "propagate": False},
        "request.summary": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "dockerflow": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
}
