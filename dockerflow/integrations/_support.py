"""What the built-in checks share: importing a driver, the driver's time bound, error messages."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from ..engine import DEFAULT_TIMEOUT, DockerflowError, validate_timeout
from ..health import CheckMessage, Error
from ..masking import mask_secrets, short_error

logger = logging.getLogger("dockerflow.integrations")


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


def driver_timeout(check_timeout: float) -> float:
    """Return the seconds a driver may take within a check of ``check_timeout`` seconds.

    A little under the check's timeout (a fifth of it, at most half a second less), so that a
    server that does not answer is reported with the driver's own error and a specific message ID
    before the engine gives up on the check and reports its generic timeout (``E011``).

    :param check_timeout: the check's timeout in seconds.
    :returns: the driver's bound in seconds: 2.5 for 3, 0.8 for 1.
    """
    return max(check_timeout * 0.8, check_timeout - 0.5)


#: The driver's bound within a check of the default timeout (:data:`DEFAULT_TIMEOUT`).
DRIVER_TIMEOUT = driver_timeout(DEFAULT_TIMEOUT)


class Bounded:
    """Something that holds a built-in check's connections and bounds its driver calls.

    :param timeout: the check's timeout in seconds (default: the engine's default, 3 s); the
        driver calls are bounded by :attr:`driver_timeout`, a little under it.
    :raises CheckRegistrationError: if ``timeout`` is not a positive number of seconds.
    """

    def __init__(self, timeout: float | None = None) -> None:
        self._timeout = DEFAULT_TIMEOUT
        self._explicit = timeout is not None
        self._followed = False
        if timeout is not None:
            self.timeout = timeout

    @property
    def timeout(self) -> float:
        """The check's timeout, in seconds; set it to the timeout the check runs under."""
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._timeout = validate_timeout(seconds)

    @property
    def driver_timeout(self) -> float:
        """Seconds the driver may take to connect and answer: :func:`driver_timeout`."""
        return driver_timeout(self._timeout)

    def follow(self, seconds: float) -> None:
        """Take ``seconds`` as the check's timeout unless one was given when this was made.

        The Flask extension calls it with ``DOCKERFLOW_CHECK_TIMEOUT`` (the smallest one, for an
        extension serving several applications).
        """
        if self._explicit:
            return
        seconds = validate_timeout(seconds)
        self._timeout = min(seconds, self._timeout) if self._followed else seconds
        self._followed = True


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
    """Return a check message with the first line of a driver's error.

    The message is not logged here: the engine logs every check message once, masked. The
    driver's full error is logged at DEBUG on ``dockerflow.integrations``, masked too (a driver
    may echo a DSN); the traceback is left out, since its last line would repeat the unmasked
    error text.

    :param prefix: what went wrong, such as ``"Could not connect to redis"``.
    :param exc: the driver's exception.
    :param msg_id: the message ID, from :mod:`dockerflow.health`.
    :param cls: the message class, :class:`~dockerflow.checks.Error` unless told.
    :returns: a message ``"<prefix>: <Type>: <first line>"``.
    """
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s (%s): %s", prefix, msg_id, mask_secrets(f"{type(exc).__name__}: {exc}"))
    return cls(f"{prefix}: {short_error(exc)}", id=msg_id)
