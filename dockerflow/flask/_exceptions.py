"""The exceptions the Flask extension raises about its set-up on an application.

::

    DockerflowError                            (dockerflow.engine)
    ├── AlreadyInitializedError   (also a RuntimeError and an AssertionError)
    │                             a different Dockerflow extension is already set up on the app
    ├── NotInitializedError       (also a RuntimeError)
    │                             the extension is used with an app it was not set up on
    └── DrainError                (also a RuntimeError)
                                  SIGTERM cannot be made to drain here

All are re-exported from :mod:`dockerflow.flask`.
"""

from __future__ import annotations

from ..engine import DockerflowError


class AlreadyInitializedError(DockerflowError, RuntimeError, AssertionError):
    """A different Dockerflow extension is already set up on the application.

    Also an :class:`AssertionError`, so code written for python-dockerflow that loads the
    extension twice and catches ``AssertionError`` (Flask's error for a blueprint registered
    twice) keeps working.
    """


class NotInitializedError(DockerflowError, RuntimeError):
    """The Dockerflow extension is used with an application it was not set up on."""


class DrainError(DockerflowError, RuntimeError):
    """SIGTERM cannot be made to drain here: not in the main thread, or its handler was
    installed by C code (uWSGI's) and could not be handed the signal afterwards."""
