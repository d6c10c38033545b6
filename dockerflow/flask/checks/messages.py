"""python-dockerflow's ``dockerflow.flask.checks.messages`` module path, kept for imports.

The messages are those of :mod:`dockerflow.health`, also found in :mod:`dockerflow.checks`.
"""

from __future__ import annotations

from ...health import (
    CRITICAL,
    DEBUG,
    ERROR,
    INFO,
    STATUSES,
    WARNING,
    CheckMessage,
    Critical,
    Debug,
    Error,
    Info,
    Warning,
    level_to_text,
)

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
    "level_to_text",
]
