"""Check messages, their levels, and the stable IDs of the messages dockerflow itself produces.

This module sits below everything else in dockerflow and imports none of it: the engine, the
built-in checks and python-dockerflow's module paths (:mod:`dockerflow.checks`,
:mod:`dockerflow.checks.messages`) all take their messages from here.

The message classes follow python-dockerflow's (and Django's) semantics. The IDs up to ``E010``,
``W001`` and ``I001`` carry the same meaning as in python-dockerflow, so silencing lists and
alerting rules written for it keep working. Later IDs are ours.
"""

from __future__ import annotations

import math
from typing import Any

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40
CRITICAL = 50

#: Status text of each level; ``0`` means that a check found nothing to report.
STATUSES: dict[int, str] = {
    0: "ok",
    DEBUG: "debug",
    INFO: "info",
    WARNING: "warning",
    ERROR: "error",
    CRITICAL: "critical",
}


def level_to_text(level: int) -> str:
    """Return the status text of a level.

    :param level: a level such as :data:`ERROR`, or ``0`` for no message.
    :returns: ``"ok"``, ``"debug"`` ... ``"critical"``, or ``"unknown"`` for other numbers.
    """
    return STATUSES.get(level, "unknown")


class CheckMessage:
    """One finding of a health check.

    Checks return a list of these; use the subclasses :class:`Debug`, :class:`Info`,
    :class:`Warning`, :class:`Error` and :class:`Critical` rather than this class.

    :param msg: short text shown in the heartbeat report.
    :param level: overrides the level of the subclass.
    :param hint: optional advice on how to fix the problem.
    :param obj: optional object the message is about.
    :param id: stable ID such as ``"myservice.health.E001"``; silencing works by ID.
    """

    level: int = 0

    def __init__(
        self,
        msg: str,
        level: int | None = None,
        hint: str | None = None,
        obj: Any = None,
        id: str | None = None,  # noqa: A002 - python-dockerflow's keyword
    ) -> None:
        self.msg = msg
        if level:
            self.level = int(level)
        self.hint = hint
        self.obj = obj
        self.id = id

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, self.__class__):
            return False
        return (self.level, self.msg, self.hint, self.obj, self.id) == (
            other.level,
            other.msg,
            other.hint,
            other.obj,
            other.id,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable and compared by value

    def __str__(self) -> str:
        subject = "?" if self.obj is None else self.obj
        ident = f"({self.id}) " if self.id else ""
        hint = f"\n\tHINT: {self.hint}" if self.hint else ""
        return f"{subject}: {ident}{self.msg}{hint}"

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__}: level={self.level!r}, msg={self.msg!r}, "
            f"hint={self.hint!r}, obj={self.obj!r}, id={self.id!r}>"
        )

    def is_serious(self, level: int = ERROR) -> bool:
        """Return whether this message is at or above ``level`` (default :data:`ERROR`)."""
        return self.level >= level


class Debug(CheckMessage):
    """A check message at :data:`DEBUG` level."""

    level = DEBUG


class Info(CheckMessage):
    """A check message at :data:`INFO` level."""

    level = INFO


class Warning(CheckMessage):  # noqa: A001 - python-dockerflow's name
    """A check message at :data:`WARNING` level."""

    level = WARNING


class Error(CheckMessage):
    """A check message at :data:`ERROR` level."""

    level = ERROR


class Critical(CheckMessage):
    """A check message at :data:`CRITICAL` level."""

    level = CRITICAL


#: Longest text value of a :class:`CheckData`; longer text is cut to this many characters.
MAX_DATA_TEXT = 256


class CheckData:
    """A named value a check reports beside its messages: a pool's size, a replication lag,
    a queue's depth, the free disk space, a server's version.

    A check returns it in its list with its messages (or alone), and each heartbeat shows it:
    in the Dockerflow body's ``details`` (for a check that reports a message), as an
    ``observedValue`` of its own in ``application/health+json`` and on the status page. It
    has no level: it never fails a check. Code written for python-dockerflow that returns only
    messages is not affected.

    ::

        return [CheckData("queue_depth", depth, unit="jobs"), Warning("Queue is long")]

    :param name: the value's key, unique within the check (a later value of the same name
        replaces an earlier one), such as ``"round_trip"``.
    :param value: a number, text (cut to :data:`MAX_DATA_TEXT` characters and masked like
        messages), ``True``/``False`` or ``None``.
    :param unit: the unit of a number, such as ``"s"``, ``"bytes"`` or ``"%"``; health+json's
        ``observedUnit``.
    :raises TypeError: if ``name`` or ``unit`` is not text, or ``value`` is not a JSON scalar.
    :raises ValueError: if ``name`` is empty or ``value`` is a NaN or an infinity.
    """

    __slots__ = ("name", "unit", "value")

    def __init__(
        self, name: str, value: int | float | str | bool | None, unit: str | None = None
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"CheckData's name must be text, got {type(name).__name__}")
        if not name:
            raise ValueError("CheckData needs a non-empty name")
        if unit is not None and not isinstance(unit, str):
            raise TypeError(f"CheckData {name!r}: unit must be text, got {type(unit).__name__}")
        if value is not None and not isinstance(value, (int, float, str)):
            raise TypeError(
                f"CheckData {name!r}: value must be a number, text, a bool or None, "
                f"got {type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"CheckData {name!r}: value must be finite, got {value!r}")
        if isinstance(value, str) and len(value) > MAX_DATA_TEXT:
            value = value[: MAX_DATA_TEXT - 1] + "…"
        self.name = name
        self.value = value
        self.unit = unit

    def as_dict(self) -> dict[str, object]:
        """Return ``{"value": ..., "unit": ...}``, without ``unit`` when there is none."""
        out: dict[str, object] = {"value": self.value}
        if self.unit is not None:
            out["unit"] = self.unit
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CheckData):
            return NotImplemented
        return (self.name, self.value, self.unit) == (other.name, other.value, other.unit)

    def __hash__(self) -> int:
        return hash((self.name, self.value, self.unit))

    def __repr__(self) -> str:
        unit = f", unit={self.unit!r}" if self.unit is not None else ""
        return f"CheckData({self.name!r}, {self.value!r}{unit})"


# Migrations (python-dockerflow).
INFO_CANT_CHECK_MIGRATIONS = "dockerflow.health.I001"
WARNING_UNAPPLIED_MIGRATION = "dockerflow.health.W001"

#: A failing run of a check with flap damping that is not reported as a failure yet.
INFO_FAILURE_DAMPED = "dockerflow.health.I002"

# Databases and Redis (python-dockerflow).
ERROR_CANNOT_CONNECT_DATABASE = "dockerflow.health.E001"
ERROR_UNUSABLE_DATABASE = "dockerflow.health.E002"
ERROR_MISCONFIGURED_DATABASE = "dockerflow.health.E003"
ERROR_CANNOT_CONNECT_REDIS = "dockerflow.health.E004"
ERROR_MISSING_REDIS_CLIENT = "dockerflow.health.E005"
ERROR_MISCONFIGURED_REDIS = "dockerflow.health.E006"
ERROR_REDIS_PING_FAILED = "dockerflow.health.E007"
ERROR_DB_API_EXCEPTION = "dockerflow.health.E008"
ERROR_SQLALCHEMY_EXCEPTION = "dockerflow.health.E009"
ERROR_REDIS_EXCEPTION = "dockerflow.health.E010"

# The engine (new in this library).
#: The check did not finish within its timeout, or an earlier run of this sync check is still
#: stuck in its thread (it is not started again until that thread returns).
ERROR_CHECK_TIMEOUT = "dockerflow.health.E011"
#: The check raised an exception.
ERROR_CHECK_EXCEPTION = "dockerflow.health.E012"
#: The check returned something other than a list of check messages (or ``None``).
ERROR_CHECK_BAD_RESULT = "dockerflow.health.E013"
#: A background-refreshed check's latest result is older than its ``max_age``.
ERROR_CHECK_RESULT_STALE = "dockerflow.health.E014"
#: The check was not started: runs of its function already stuck past their timeout hold
#: every slot the process allows (two), and the check is not run until one of them returns.
ERROR_CHECK_NOT_STARTED = "dockerflow.health.E016"

# The process (new in this library).
#: The process is draining before it stops (SIGTERM, or ``start_draining()``): the heartbeat
#: answers 503 without running the checks. Reported at the fail level, or ``ERROR`` if lower.
ERROR_DRAINING = "dockerflow.health.E015"

# HTTP dependencies (new in this library; dockerflow.integrations.http).
#: The dependency's host name could not be resolved (DNS).
ERROR_HTTP_NAME_NOT_RESOLVED = "dockerflow.health.E020"
#: No connection to the dependency: refused, unreachable, or reset while connecting.
ERROR_HTTP_CANNOT_CONNECT = "dockerflow.health.E021"
#: The TLS handshake failed: the certificate was not trusted (self-signed, expired, another
#: host's) or the server does not speak TLS.
ERROR_HTTP_TLS = "dockerflow.health.E022"
#: No complete answer in time: connecting, the response's headers or its body took too long.
ERROR_HTTP_TIMEOUT = "dockerflow.health.E023"
#: The dependency answered with a status that is not one of those expected.
ERROR_HTTP_UNEXPECTED_STATUS = "dockerflow.health.E024"
#: Any other HTTP failure: the connection closed mid-answer, the answer was not HTTP.
ERROR_HTTP_EXCEPTION = "dockerflow.health.E025"

# Disk space (new in this library; dockerflow.integrations.disk).
#: Free space on the path is below the error threshold.
ERROR_DISK_SPACE_LOW = "dockerflow.health.E026"
#: The path's file system could not be read (missing path, no permission).
ERROR_DISK_UNREADABLE = "dockerflow.health.E027"
#: Free space on the path is below the warning threshold.
WARNING_DISK_SPACE_LOW = "dockerflow.health.W002"

__all__ = [
    "CRITICAL",
    "DEBUG",
    "ERROR",
    "ERROR_CANNOT_CONNECT_DATABASE",
    "ERROR_CANNOT_CONNECT_REDIS",
    "ERROR_CHECK_BAD_RESULT",
    "ERROR_CHECK_EXCEPTION",
    "ERROR_CHECK_NOT_STARTED",
    "ERROR_CHECK_RESULT_STALE",
    "ERROR_CHECK_TIMEOUT",
    "ERROR_DB_API_EXCEPTION",
    "ERROR_DISK_SPACE_LOW",
    "ERROR_DISK_UNREADABLE",
    "ERROR_DRAINING",
    "ERROR_HTTP_CANNOT_CONNECT",
    "ERROR_HTTP_EXCEPTION",
    "ERROR_HTTP_NAME_NOT_RESOLVED",
    "ERROR_HTTP_TIMEOUT",
    "ERROR_HTTP_TLS",
    "ERROR_HTTP_UNEXPECTED_STATUS",
    "ERROR_MISCONFIGURED_DATABASE",
    "ERROR_MISCONFIGURED_REDIS",
    "ERROR_MISSING_REDIS_CLIENT",
    "ERROR_REDIS_EXCEPTION",
    "ERROR_REDIS_PING_FAILED",
    "ERROR_SQLALCHEMY_EXCEPTION",
    "ERROR_UNUSABLE_DATABASE",
    "INFO",
    "INFO_CANT_CHECK_MIGRATIONS",
    "INFO_FAILURE_DAMPED",
    "MAX_DATA_TEXT",
    "STATUSES",
    "WARNING",
    "WARNING_DISK_SPACE_LOW",
    "WARNING_UNAPPLIED_MIGRATION",
    "CheckData",
    "CheckMessage",
    "Critical",
    "Debug",
    "Error",
    "Info",
    "Warning",
    "level_to_text",
]
