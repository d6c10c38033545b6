"""The exceptions that dockerflow raises, at the bottom of the package: it imports none of it.

::

    DockerflowError                                       (dockerflow.engine)
    ├── ConfigurationError        (also a ValueError)     a setting or argument has a bad value
    │                                                     (dockerflow.engine)
    ├── CheckRegistrationError    (also a ValueError)     a check cannot be registered as asked
    │                                                     (dockerflow.engine)
    ├── UnknownCheckError         (also a LookupError)    a heartbeat named a check not registered
    │                                                     (dockerflow.engine)
    ├── UnknownGroupError         (also a LookupError)    a heartbeat named a group no check is in
    │                                                     (dockerflow.flask)
    ├── MissingDependencyError    (also an ImportError)   an optional driver is not installed
    │                                                     (dockerflow.integrations)
    ├── VersionFileError          (also a ValueError)     version.json exists but cannot be served
    │                                                     (dockerflow.version)
    ├── AlreadyInitializedError   (also a RuntimeError    another extension is set up on that app
    │                              and AssertionError)    (dockerflow.flask)
    ├── NotInitializedError       (also a RuntimeError)   the extension is not set up on that app
    │                                                     (dockerflow.flask)
    └── DrainError                (also a RuntimeError)   SIGTERM cannot be made to drain here
                                                          (dockerflow.flask)

Every layer takes its exceptions from here, so that raising one never imports another layer
(``dockerflow.version`` needs neither the engine nor the integrations). Each exception is
re-exported, raised and documented under its public name, in parentheses above: its
``__module__`` says so, whichever modules were imported.

Failures *inside* checks are never raised to the caller: the engine turns them into check messages
with stable IDs (see :mod:`dockerflow.health`).
"""

from __future__ import annotations


class DockerflowError(Exception):
    """Base class of every exception dockerflow raises."""

    __module__ = "dockerflow.engine"


class ConfigurationError(DockerflowError, ValueError):
    """A setting or argument has a value that dockerflow cannot use."""

    __module__ = "dockerflow.engine"


class CheckRegistrationError(DockerflowError, ValueError):
    """A check cannot be registered as asked (not callable, bad name or bad timeout)."""

    __module__ = "dockerflow.engine"


class UnknownCheckError(DockerflowError, LookupError):
    """A heartbeat asked to run a check name that is not registered."""

    __module__ = "dockerflow.engine"


class UnknownGroupError(DockerflowError, LookupError):
    """A heartbeat asked for a group that no check belongs to and no setting declares."""

    __module__ = "dockerflow.flask"


class MissingDependencyError(DockerflowError, ImportError):
    """An optional dependency of a built-in check or of the metrics cannot be imported.

    :param package: the import name that failed: the module that was missing
        (``ModuleNotFoundError.name``), or the one whose import raised.
    :param extra: the name of the ``dockerflow-async`` extra that installs it.
    :param needed_by: what needs it, such as ``"Dockerflow(db=...)"``; default "this check".
    :param reason: the import's own error when the module exists but its import failed (such as
        SQLAlchemy's asyncio module without ``greenlet``); ``None`` when the module is missing.
    """

    __module__ = "dockerflow.integrations"

    def __init__(
        self,
        package: str,
        extra: str,
        *,
        needed_by: str | None = None,
        reason: str | None = None,
    ) -> None:
        problem = (
            f"{package!r} is not installed"
            if reason is None
            else f"{package!r} cannot be imported ({reason})"
        )
        super().__init__(
            f"{problem}; {needed_by or 'this check'} needs it. "
            f"Install it with: pip install 'dockerflow-async[{extra}]'",
            name=package,
        )
        self.package = package
        self.extra = extra
        self.needed_by = needed_by
        self.reason = reason

    @classmethod
    def from_import_error(
        cls, exc: ImportError, package: str, extra: str, needed_by: str | None = None
    ) -> MissingDependencyError:
        """Return the error for ``exc``, raised while importing ``package``.

        The module named is the one that failed: ``exc.name`` for a missing module (a driver's
        own dependency, say), else ``package`` with ``exc``'s message as the reason.

        :param exc: the :class:`ImportError` raised.
        :param package: the module that was being imported.
        :param extra: the ``dockerflow-async`` extra that installs it.
        :param needed_by: what needs it.
        """
        if isinstance(exc, MissingDependencyError):
            needed_by = needed_by or exc.needed_by
            return cls(exc.package, exc.extra, needed_by=needed_by, reason=exc.reason)
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            # A submodule of the package itself means the package is missing.
            inside = exc.name.startswith(f"{package}.")
            return cls(package if inside else exc.name, extra, needed_by=needed_by)
        return cls(package, extra, needed_by=needed_by, reason=str(exc) or type(exc).__name__)


class VersionFileError(DockerflowError, ValueError):
    """``version.json`` exists but is not a regular file, is too large, or is not a JSON object."""

    __module__ = "dockerflow.version"


class AlreadyInitializedError(DockerflowError, RuntimeError, AssertionError):
    """A different Dockerflow extension is already set up on the application.

    Also an :class:`AssertionError`, so code written for python-dockerflow that loads the
    extension twice and catches ``AssertionError`` (Flask's error for a blueprint registered
    twice) keeps working.
    """

    __module__ = "dockerflow.flask"


class NotInitializedError(DockerflowError, RuntimeError):
    """The Dockerflow extension is used with an application it was not set up on."""

    __module__ = "dockerflow.flask"


class DrainError(DockerflowError, RuntimeError):
    """SIGTERM cannot be made to drain here: not in the main thread, under eventlet, or its
    handler was installed by C code (uWSGI's) and could not be handed the signal afterwards."""

    __module__ = "dockerflow.flask"
