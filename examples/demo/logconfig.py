"""Mozlog JSON logging for the demo under servers other than gunicorn (uWSGI, ``flask run``).

gunicorn gets the same configuration from ``logconfig_dict`` in ``examples/gunicorn.conf.py``.
"""

from __future__ import annotations

import os
from typing import Any

#: The ``Logger`` field of every line.
LOGGER_NAME = os.environ.get("DOCKERFLOW_LOGGER_NAME", "dockerflow-demo")

#: A ``logging.config.dictConfig`` configuration: JSON lines on stdout, request.summary at INFO.
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "dockerflow.logging.JsonLogFormatter", "logger_name": LOGGER_NAME},
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
        "request.summary": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "dockerflow": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
}
