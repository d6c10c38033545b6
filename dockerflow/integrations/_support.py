"""What the built-in checks share: importing a driver, turning a driver's error into a message."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from ..engine import DEFAULT_TIMEOUT, DockerflowError
from ..health import CheckMessage, Error
from ..masking import mask_secrets, short_error

logger = logging.getLogger("dockerflow.checks")


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

    Both texts are masked (:func:`~dockerflow.masking.mask_secrets`): a driver may echo a DSN. The
    traceback is not logged, since its last line would repeat the unmasked error text.

    :param prefix: what went wrong, such as ``"Could not connect to redis"``.
    :param exc: the driver's exception.
    :param msg_id: the message ID, from :mod:`dockerflow.health`.
    :param cls: the message class, :class:`~dockerflow.checks.Error` unless told.
    :returns: a message ``"<prefix>: <Type>: <first line>"``.
    """
    logger.error("%s (%s): %s", prefix, msg_id, mask_secrets(f"{type(exc).__name__}: {exc}"))
    return cls(f"{prefix}: {short_error(exc)}", id=msg_id)
