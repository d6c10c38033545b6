"""What a check is: a name, a function and a timeout."""

from __future__ import annotations

import functools
import inspect
import math
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import InitVar, dataclass, field
from typing import Any

from ._exceptions import CheckRegistrationError

#: A check function: takes no arguments, returns a list of check messages (or ``None``),
#: either directly (``def``) or through an awaitable (``async def``).
CheckFunction = Callable[[], Any]

#: Timeout of a check that does not set its own.
DEFAULT_TIMEOUT = 3.0

#: A run still going after this many timeouts is started again beside it, by default: a few
#: timeouts, so that a check stuck on a dead connection recovers soon after its dependency,
#: while a run that merely returns a little late is not doubled.
RESTART_TIMEOUTS = 3

#: Largest number of seconds a duration setting takes (a day); larger ones are surely mistakes,
#: and past about 9e9 seconds the standard library's waits overflow.
MAX_SECONDS = 86400.0


def validate_timeout(value: object, what: str = "timeout") -> float:
    """Return ``value`` as a float of seconds, or raise if it is not in (0, :data:`MAX_SECONDS`].

    :param value: the number to check.
    :param what: the name of the setting, used in the error message.
    :raises CheckRegistrationError: if ``value`` is not a number of seconds in that range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckRegistrationError(f"{what} must be a number of seconds, got {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_SECONDS:
        raise CheckRegistrationError(
            f"{what} must be a number of seconds above 0 and at most {MAX_SECONDS:g}, got {value!r}"
        )
    return seconds


#: What a group name may hold: it is a path segment of ``/__heartbeat__/<group>``.
GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def validate_groups(value: object, what: str = "groups") -> tuple[str, ...]:
    """Return the group names in ``value`` as a tuple, in order, without duplicates.

    :param value: an iterable of group names (not a single string).
    :param what: the name of the argument, used in the error message.
    :raises CheckRegistrationError: if ``value`` is a string or not iterable, or a name does
        not match :data:`GROUP_NAME`.
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise CheckRegistrationError(
            f"{what} must be a list of group names, such as ['ready'], got {value!r}"
        )
    names = tuple(dict.fromkeys(value))
    bad = [name for name in names if not isinstance(name, str) or not GROUP_NAME.fullmatch(name)]
    if bad:
        raise CheckRegistrationError(
            f"{what}: not group names: {', '.join(repr(name) for name in bad)} (letters, "
            "digits, '_', '.' and '-', starting with a letter or digit)"
        )
    return names


def is_async_callable(func: object) -> bool:
    """Return whether calling ``func`` gives a coroutine (``async def``, partials, ``__call__``)."""
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - an async __call__ method
    return call is not None and inspect.iscoroutinefunction(call)


def callable_name(func: object) -> str:
    """Return the name a check gets when none is given: the function's ``__name__``."""
    while isinstance(func, functools.partial):
        func = func.func
    name = getattr(func, "__name__", None)
    return name if isinstance(name, str) else type(func).__name__


@dataclass(frozen=True, eq=False)
class Check:
    """A health check: a name, a function and how long it may take.

    :param name: the key of the check in the heartbeat report.
    :param func: a ``def`` or ``async def`` taking no arguments and returning a list of
        :class:`~dockerflow.checks.CheckMessage` (``None`` counts as an empty list).
    :param timeout: seconds the check may run; ``None`` takes the engine's default timeout.
    :param interval: if set, the engine runs the check in the background every ``interval``
        seconds and heartbeats serve its latest result at once (background refresh).
    :param max_age: with ``interval``: a latest result older than this many seconds is reported
        as an error (``dockerflow.health.E014``); default ``2 * interval + timeout``.
    :param failure_threshold: report a failure only from this many consecutive failing runs on
        (flap damping); default 1 reports the first failure.
    :param failure_delay: report a failure only once the check has been failing for this many
        seconds (flap damping); default 0. With both set, whichever is reached first reports.
        A failure held back is shown as an Info message (``dockerflow.health.I002``).
    :param restart_after: seconds after which a run that is still going (stuck, say, on a
        socket whose peer went silent) is given up and a new run is started beside it; ``None``
        takes the engine's ``restart_after`` (default: 3 x the timeout). At most two runs of a
        check function are ever stuck past their timeout in a process.
    :param critical: ``False`` makes a failure of the check count as a warning (status
        ``"warning"``, ``"critical": false`` in the report's details), so that a non-essential
        dependency being down does not fail the heartbeat. Logs, signals and metrics still see
        the check failing.
    :param groups: the named groups the check belongs to (a heartbeat may be asked for one
        group, ``/__heartbeat__/<group>``); names of letters, digits, ``_``, ``.`` and ``-``.
        Any iterable of names but a single string; kept as a tuple, duplicates dropped.
    :param failure_grace: deprecated name of ``failure_delay`` (a ``DeprecationWarning``):
        "grace" is the startup grace's word.
    :raises CheckRegistrationError: if the name is empty, ``func`` is not callable, a number
        is out of range or a group name is not valid.

    Checks compare by identity: the engine keeps per-check state (the run in progress, the
    threads a stuck check occupies) keyed by the check object.
    """

    name: str
    func: CheckFunction
    timeout: float | None = None
    interval: float | None = None
    max_age: float | None = None
    failure_threshold: int = 1
    failure_delay: float = 0.0
    restart_after: float | None = None
    critical: bool = True
    groups: tuple[str, ...] = ()
    is_async: bool = field(init=False, compare=False)
    failure_grace: InitVar[float | None] = None

    def __post_init__(self, failure_grace: float | None) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise CheckRegistrationError(f"a check needs a non-empty name, got {self.name!r}")
        if not callable(self.func):
            raise CheckRegistrationError(
                f"check {self.name!r}: expected a function, got {self.func!r}"
            )
        for attr in ("timeout", "interval", "max_age", "restart_after"):
            value = getattr(self, attr)
            if value is not None:
                object.__setattr__(self, attr, validate_timeout(value, f"{self.name}: {attr}"))
        if self.max_age is not None and self.interval is None:
            raise CheckRegistrationError(f"{self.name}: max_age needs an interval")
        threshold = self.failure_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise CheckRegistrationError(
                f"{self.name}: failure_threshold must be an integer >= 1, got {threshold!r}"
            )
        delay, what = self.failure_delay, "failure_delay"
        if failure_grace is not None and not isinstance(failure_grace, property):
            warnings.warn(
                "Check(failure_grace=...) is deprecated: use failure_delay=",
                DeprecationWarning,
                stacklevel=3,
            )
            delay, what = failure_grace, "failure_grace"
        if (
            isinstance(delay, bool)
            or not isinstance(delay, (int, float))
            or not 0 <= delay <= MAX_SECONDS
        ):
            raise CheckRegistrationError(
                f"{self.name}: {what} must be a number of seconds from 0 to "
                f"{MAX_SECONDS:g}, got {delay!r}"
            )
        object.__setattr__(self, "failure_delay", float(delay))
        if not isinstance(self.critical, bool):
            raise CheckRegistrationError(
                f"{self.name}: critical must be True or False, got {self.critical!r}"
            )
        object.__setattr__(self, "groups", validate_groups(self.groups, f"{self.name}: groups"))
        object.__setattr__(self, "is_async", is_async_callable(self.func))

    @property
    def damped(self) -> bool:
        """Whether failures of this check are held back (flap damping)."""
        return self.failure_threshold > 1 or self.failure_delay > 0


def _deprecated_failure_grace(check: Check) -> float:
    warnings.warn(
        "Check.failure_grace is deprecated: read failure_delay", DeprecationWarning, stacklevel=2
    )
    return check.failure_delay


# The old name, read: set after the dataclass took its default for the init-only alias.
Check.failure_grace = property(_deprecated_failure_grace)  # type: ignore[attr-defined]


def restart_delay(check: Check, timeout: float, default: float | None) -> float:
    """Return after how many seconds a run of ``check`` that is still going is started again.

    :param timeout: the check's timeout in seconds.
    :param default: the engine's setting, or ``None`` for :data:`RESTART_TIMEOUTS` x timeout.
    """
    if check.restart_after is not None:
        return check.restart_after
    if default is not None:
        return default
    return RESTART_TIMEOUTS * timeout


class CheckRegistry:
    """An ordered set of checks, keyed by name. Owned by whoever runs the checks.

    Registering a check under a name that is taken replaces the earlier check, as
    python-dockerflow does.
    """

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}

    def add(self, check: Check) -> Check:
        """Add ``check``, replacing any check of the same name, and return it."""
        self._checks[check.name] = check
        return check

    def remove(self, name: str) -> None:
        """Remove the check called ``name``; do nothing if there is none."""
        self._checks.pop(name, None)

    def clear(self) -> None:
        """Remove every check."""
        self._checks.clear()

    def get(self, name: str) -> Check | None:
        """Return the check called ``name``, or ``None``."""
        return self._checks.get(name)

    def names(self) -> list[str]:
        """Return the names of the checks, in registration order."""
        return list(self._checks)

    def __iter__(self) -> Iterator[Check]:
        return iter(list(self._checks.values()))

    def __len__(self) -> int:
        return len(self._checks)

    def __contains__(self, name: object) -> bool:
        return name in self._checks
