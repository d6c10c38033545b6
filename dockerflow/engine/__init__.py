"""The checks engine: runs health checks concurrently, each under its own timeout.

This package knows nothing of HTTP; it uses anyio and the standard library only.
"""

from __future__ import annotations

from ._bridge import LoopThread
from ._check import (
    DEFAULT_TIMEOUT,
    MAX_SECONDS,
    Check,
    CheckFunction,
    CheckRegistry,
    callable_name,
    validate_groups,
    validate_timeout,
)
from ._engine import Engine
from ._exceptions import (
    CheckRegistrationError,
    ConfigurationError,
    DockerflowError,
    UnknownCheckError,
)
from ._fork import after_fork_in_child
from ._history import CheckHistory, Entry, History
from ._report import CheckDetail, CheckResult, Report, aggregate
from ._startup import StartupGrace

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_SECONDS",
    "Check",
    "CheckDetail",
    "CheckFunction",
    "CheckHistory",
    "CheckRegistrationError",
    "CheckRegistry",
    "CheckResult",
    "ConfigurationError",
    "DockerflowError",
    "Engine",
    "Entry",
    "History",
    "LoopThread",
    "Report",
    "StartupGrace",
    "UnknownCheckError",
    "after_fork_in_child",
    "aggregate",
    "callable_name",
    "validate_groups",
    "validate_timeout",
]

# Public classes show their public module in tracebacks and reprs, not the private one.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith(f"{__name__}._"):
        _obj.__module__ = __name__
del _name, _obj
