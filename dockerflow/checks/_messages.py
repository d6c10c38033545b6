"""Check messages and levels, with python-dockerflow's (and Django's) semantics."""

from __future__ import annotations

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
