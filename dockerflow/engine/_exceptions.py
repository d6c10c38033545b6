"""The exceptions that dockerflow raises.

::

    DockerflowError
    ├── ConfigurationError        (also a ValueError)   a setting or argument has a bad value
    ├── CheckRegistrationError    (also a ValueError)   a check cannot be registered as asked
    ├── AlreadyInitializedError   (also a RuntimeError) the extension is already set up on that app
    ├── NotInitializedError       (also a RuntimeError) the extension is not set up on that app
    ├── UnknownCheckError         (also a LookupError)  a heartbeat named a check not registered
    ├── MissingDependencyError    (also an ImportError) an optional driver is not installed
    └── VersionFileError          (also a ValueError)   version.json exists but cannot be served

Failures *inside* checks are never raised to the caller: the engine turns them into check messages
with stable IDs (see :mod:`dockerflow.health`).
"""

from __future__ import annotations


class DockerflowError(Exception):
    """Base class of every exception dockerflow raises."""


class ConfigurationError(DockerflowError, ValueError):
    """A setting or argument has a value that dockerflow cannot use."""


class CheckRegistrationError(DockerflowError, ValueError):
    """A check cannot be registered as asked (not callable, bad name or bad timeout)."""


class AlreadyInitializedError(DockerflowError, RuntimeError):
    """The Dockerflow extension was set up twice on the same application."""


class NotInitializedError(DockerflowError, RuntimeError):
    """The Dockerflow extension is used with an application it was not set up on."""


class UnknownCheckError(DockerflowError, LookupError):
    """A heartbeat asked to run a check name that is not registered."""


class MissingDependencyError(DockerflowError, ImportError):
    """An optional driver needed by a built-in check is not installed.

    :param package: the import name that is missing.
    :param extra: the name of the ``dockerflow-async`` extra that installs it.
    """

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package!r} is not installed; it is needed for this check. "
            f"Install it with: pip install 'dockerflow-async[{extra}]'"
        )
        self.package = package
        self.extra = extra


class VersionFileError(DockerflowError, ValueError):
    """``version.json`` exists but is not a regular file, is too large, or is not a JSON object."""
