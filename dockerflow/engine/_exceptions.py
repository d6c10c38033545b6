"""The exceptions that dockerflow raises.

::

    DockerflowError
    ├── ConfigurationError        (also a ValueError)   a setting or argument has a bad value
    ├── CheckRegistrationError    (also a ValueError)   a check cannot be registered as asked
    ├── AlreadyInitializedError   (also a RuntimeError, AssertionError) another extension is
    │                                                   set up on that app (dockerflow.flask)
    ├── NotInitializedError       (also a RuntimeError) the extension is not set up on that app
    │                                                   (dockerflow.flask)
    ├── DrainError                (also a RuntimeError) SIGTERM cannot be made to drain here
    │                                                   (dockerflow.flask)
    ├── UnknownCheckError         (also a LookupError)  a heartbeat named a check not registered
    ├── MissingDependencyError    (also an ImportError) an optional driver is not installed
    │                                                   (dockerflow.integrations)
    └── VersionFileError          (also a ValueError)   version.json exists but cannot be served
                                                        (dockerflow.version)

Each exception lives with the layer that raises it: the base class and the engine's own errors
are here. Each is raised and documented under its public name, such as
``dockerflow.engine.ConfigurationError``.

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


class UnknownCheckError(DockerflowError, LookupError):
    """A heartbeat asked to run a check name that is not registered."""
