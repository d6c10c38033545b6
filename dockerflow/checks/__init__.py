"""Check messages, levels and python-dockerflow's module-level check registry."""

from __future__ import annotations

from .messages import (
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
from .registry import (
    ChecksResults,
    clear_checks,
    get_checks,
    register,
    register_partial,
    run_checks,
    run_checks_async,
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
    "ChecksResults",
    "Critical",
    "Debug",
    "Error",
    "Info",
    "Warning",
    "clear_checks",
    "get_checks",
    "level_to_text",
    "register",
    "register_partial",
    "run_checks",
    "run_checks_async",
]
