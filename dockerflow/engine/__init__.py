"""The checks engine: runs health checks concurrently, each under its own timeout.

This package knows nothing of HTTP; it uses anyio and the standard library only.
"""

from __future__ import annotations

from ._bridge import LoopThread
from ._check import DEFAULT_TIMEOUT, Check, CheckFunction, CheckRegistry
from ._exceptions import (
    AlreadyInitializedError,
    CheckRegistrationError,
    ConfigurationError,
    DockerflowError,
    MissingDependencyError,
    NotInitializedError,
    UnknownCheckError,
    VersionFileError,
)
from ._report import CheckDetail, CheckResult, Report, aggregate
from ._runner import Engine

__all__ = [
    "DEFAULT_TIMEOUT",
    "AlreadyInitializedError",
    "Check",
    "CheckDetail",
    "CheckFunction",
    "CheckRegistrationError",
    "CheckRegistry",
    "CheckResult",
    "ConfigurationError",
    "DockerflowError",
    "Engine",
    "LoopThread",
    "MissingDependencyError",
    "NotInitializedError",
    "Report",
    "UnknownCheckError",
    "VersionFileError",
    "aggregate",
]
