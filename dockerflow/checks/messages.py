"""python-dockerflow's ``dockerflow.checks.messages`` module path; the messages live in
:mod:`dockerflow.health`."""

from __future__ import annotations

from ..health import (
    CRITICAL,
    DEBUG,
    ERROR,
    INFO,
    STATUSES,
    WARNING,
    CheckData,
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
    "CheckData",
    "CheckMessage",
    "Critical",
    "Debug",
    "Error",
    "Info",
    "Warning",
    "level_to_text",
]
