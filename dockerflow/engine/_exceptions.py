"""The engine's exceptions: defined with the rest of the tree in :mod:`dockerflow._errors`.

Engine modules import them from here; ``dockerflow.engine`` re-exports them under their public
names, such as ``dockerflow.engine.ConfigurationError``.
"""

from __future__ import annotations

from .._errors import (
    CheckRegistrationError,
    ConfigurationError,
    DockerflowError,
    UnknownCheckError,
)

__all__ = [
    "CheckRegistrationError",
    "ConfigurationError",
    "DockerflowError",
    "UnknownCheckError",
]
