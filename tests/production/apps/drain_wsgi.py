"""The drain tests' app as a WSGI module, for uWSGI (``module = drain_wsgi``)."""

from __future__ import annotations

from drain_app import create_app

application = create_app()
