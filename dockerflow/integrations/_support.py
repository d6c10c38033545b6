"""What the built-in checks share: importing a driver, turning a driver's error into a message."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from .._redact import mask_secrets, short_error
from ..checks._messages import CheckMessage, Error
from ..engine._check import DEFAULT_TIMEOUT
from ..engine._exceptions import MissingDependencyError

logger = logging.getLogger("dockerflow.checks")

#: Seconds a driver may take to connect or answer, where a built-in check sets it. A little under
#: the engine's default check timeout, so that a slow server is reported with the driver's own
#: error (and a specific ID) rather than the engine's generic timeout.
DRIVER_TIMEOUT = DEFAULT_TIMEOUT - 0.5


@contextlib.contextmanager
def requires(package: str, extra: str) -> Iterator[None]:
    """Turn an :class:`ImportError` raised in the block into :class:`MissingDependencyError`.

    Wrap the lazy ``import`` of a driver in it::

        with requires("redis", extra="redis"):
            import redis

    :param package: the import name of the driver, shown in the message.
    :param extra: the ``dockerflow-async`` extra that installs it.
    :raises MissingDependencyError: if the block raises :class:`ImportError`.
    """
    try:
        yield
    except ImportError as exc:
        raise MissingDependencyError(package, extra) from exc


def failure(
    prefix: str, exc: BaseException, msg_id: str, cls: type[CheckMessage] = Error
) -> CheckMessage:
    """Log a driver's error in full and return a check message with its first line.

    Both texts are masked (:func:`~dockerflow._redact.mask_secrets`): a driver may echo a DSN. The
    traceback is not logged, since its last line would repeat the unmasked error text.

    :param prefix: what went wrong, such as ``"Could not connect to redis"``.
    :param exc: the driver's exception.
    :param msg_id: the message ID, from :mod:`dockerflow.health`.
    :param cls: the message class, :class:`~dockerflow.checks.Error` unless told.
    :returns: a message ``"<prefix>: <Type>: <first line>"``.
    """
    logger.error("%s (%s): %s", prefix, msg_id, mask_secrets(f"{type(exc).__name__}: {exc}"))
    return cls(f"{prefix}: {short_error(exc)}", id=msg_id)


def shown(obj: object, limit: int = 100) -> str:
    """Return ``repr(obj)`` for an error message: secrets masked, cut to ``limit`` characters."""
    text = mask_secrets(repr(obj))
    return text if len(text) <= limit else text[: limit - 1] + "…"
