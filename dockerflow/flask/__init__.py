"""Dockerflow for Flask: ``/__version__``, ``/__heartbeat__``, ``/__lbheartbeat__``, request logs.

::

    from dockerflow.flask import Dockerflow, checks
"""

from __future__ import annotations

from .._errors import (
    AlreadyInitializedError,
    DrainError,
    NotInitializedError,
    UnknownGroupError,
)
from ..engine import UnknownCheckError

# app is python-dockerflow's module path; imported so that its has_flask_login is read.
from . import app as app
from . import checks, signals
from ._extension import Dockerflow

__all__ = [
    "AlreadyInitializedError",
    "Dockerflow",
    "DrainError",
    "NotInitializedError",
    "UnknownCheckError",
    "UnknownGroupError",
    "checks",
    "signals",
]
