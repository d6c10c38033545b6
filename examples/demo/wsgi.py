"""WSGI entry point for servers that take a module-level application (uWSGI, mod_wsgi).

Sets up mozlog JSON logging first; under gunicorn use ``examples.demo.app:create_app()`` and
``examples/gunicorn.conf.py``, which does that itself.
"""

from __future__ import annotations

import logging.config

from .app import create_app
from .logconfig import LOGGING

logging.config.dictConfig(LOGGING)

application = create_app()
