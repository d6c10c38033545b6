"""gunicorn settings for a Dockerflow service (used by ``make demo``).

    gunicorn -c examples/gunicorn.conf.py 'examples.demo.app:create_app()'

Every line on stdout is mozlog JSON: the ``request.summary`` records, the app's own log records
(INFO and above), the checks' messages and gunicorn's own log all go through
``dockerflow.logging.JsonLogFormatter``. To use it for your service, change the two names below.
"""

from __future__ import annotations

import os

# Dockerflow: listen on $PORT, on every interface (inside a container, 127.0.0.1 is unreachable).
bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"

workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threads per worker: other requests are served beside a heartbeat waiting on a slow check, as
# long as threads are left over: heartbeats/s x the seconds each may wait must stay below
# workers x threads, and clients that never finish a request hold threads too (a proxy in front
# reads requests whole). See "Threads: the arithmetic" in docs/deployment.rst.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))

# A heartbeat answers within about its largest check timeout (DOCKERFLOW_CHECK_TIMEOUT, 3 s by
# default; 1 s for the demo's slow check). The worker timeout must be well above that, or gunicorn
# kills the worker before the heartbeat can report which check is failing.
timeout = 30
graceful_timeout = 10

# request.summary is the access log; gunicorn's own would repeat every request in another format.
accesslog = None

# The mozlog "Logger" field of every line: the name of your service.
SERVICE_NAME = "dockerflow-demo"
# Your application's top-level package. Its loggers log INFO and above to stdout: those of its
# modules (logging.getLogger(__name__)) and Flask's app.logger, named after the app's import name
# (here examples.demo.app). Without this entry only WARNING and above would get through the root.
APP_PACKAGE = "examples.demo"

logconfig_dict = {
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
        "gunicorn.error": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
}
