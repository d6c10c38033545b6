"""Folding check results into a heartbeat report. Pure functions and frozen data, no I/O."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..health import WARNING, CheckData, CheckMessage, level_to_text

T = TypeVar("T")


@dataclass(frozen=True)
class CheckResult:
    """What one run of one check gave.

    :param name: the check's name.
    :param messages: the check messages, including those the engine made for a timeout or crash.
    :param duration: wall-clock seconds the check took (or was waited for).
    :param error: the exception the check raised, if it raised one (for logging).
    :param data: the values the check reported beside its messages (:class:`CheckData`).
    """

    name: str
    messages: tuple[CheckMessage, ...] = ()
    duration: float = 0.0
    error: BaseException | None = field(default=None, compare=False, repr=False)
    data: tuple[CheckData, ...] = ()


@dataclass(frozen=True)
class CheckDetail:
    """One check's part of a report, after silenced messages were dropped.

    :param level: highest message level, ``0`` when there is none; for a non-critical check at
        most :data:`~dockerflow.health.WARNING`.
    :param messages: message ID → message text.
    :param duration: seconds the check took.
    :param critical: ``False`` for a non-critical check, whose failure counts as a warning.
    :param raw_level: the highest message level the check really reported (above ``level``
        when a non-critical check failed): what logs, signals and metrics count as failing.
    :param starting: ``True`` for a failing check excused by the startup grace: it has not
        passed since the app started, so its failure counts as a warning for now.
    :param data: value name → the :class:`~dockerflow.health.CheckData` the check reported.
    """

    level: int
    messages: Mapping[str, str]
    duration: float
    critical: bool = True
    raw_level: int = -1
    starting: bool = False
    data: Mapping[str, CheckData] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.raw_level < 0:
            object.__setattr__(self, "raw_level", self.level)

    @property
    def status(self) -> str:
        """The status text of :attr:`level` (``"ok"``, ``"warning"``, ``"error"`` ...)."""
        return level_to_text(self.level)


@dataclass(frozen=True)
class Report:
    """A heartbeat's outcome: overall level and one :class:`CheckDetail` per check."""

    level: int
    results: Mapping[str, CheckDetail] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """The status text of the overall level."""
        return level_to_text(self.level)

    @property
    def checks(self) -> dict[str, str]:
        """Check name → status text, for every check."""
        return {name: detail.status for name, detail in self.results.items()}

    @property
    def details(self) -> dict[str, dict[str, Any]]:
        """Check name → ``{"status", "level", "messages"}`` for each check above level 0, with
        ``"critical": False`` added for a non-critical check, ``"starting": True`` for a
        failing check excused by the startup grace and ``"data"`` (value name →
        ``{"value", "unit"}``) for a check that reported values."""
        return {name: _detail(d) for name, d in self.results.items() if d.level > 0}

    def failing(self, fail_level: int) -> list[str]:
        """Return the names of the checks that reported ``fail_level`` or above, non-critical
        checks included (their failure does not fail the heartbeat, but they are failing)."""
        return [name for name, d in self.results.items() if d.raw_level >= fail_level]

    @property
    def durations(self) -> dict[str, float]:
        """Check name → seconds the check took."""
        return {name: detail.duration for name, detail in self.results.items()}

    def is_failure(self, fail_level: int) -> bool:
        """Return whether the overall level is at or above ``fail_level``."""
        return self.level >= fail_level

    def as_dict(self, *, details: bool = True) -> dict[str, Any]:
        """Return the heartbeat body: ``{"status", "checks", "details"}``.

        :param details: when false, ``details`` is an empty object (statuses only).
        """
        return {
            "status": self.status,
            "checks": self.checks,
            "details": self.details if details else {},
        }


def built(cls: type[T], /, **fields: Any) -> T:
    """Return an instance of the frozen dataclass ``cls`` holding ``fields`` (every one of its
    fields, by name), made without its generated ``__init__``: that sets each field with
    ``object.__setattr__`` and calls ``__post_init__``, about 1 µs an object, and a heartbeat
    makes two per check (its :class:`CheckResult` and :class:`CheckDetail`). For values already
    as ``__init__`` would leave them; tests check that both ways give equal objects."""
    made = object.__new__(cls)
    vars(made).update(fields)
    return made


def _detail(detail: CheckDetail) -> dict[str, Any]:
    out: dict[str, Any] = {
        "status": detail.status,
        "level": detail.level,
        "messages": dict(detail.messages),
    }
    if not detail.critical:
        out["critical"] = False
    if detail.starting:
        out["starting"] = True
    if detail.data:
        out["data"] = {name: item.as_dict() for name, item in detail.data.items()}
    return out


def message_key(check_name: str, index: int, message: CheckMessage) -> str:
    """Return the key of a message in a report: its ID, or ``"<check>.<index>"`` without one."""
    return message.id if message.id else f"{check_name}.{index}"


def aggregate(
    results: Iterable[CheckResult],
    silenced_ids: Collection[str] = (),
    noncritical: Collection[str] = (),
) -> Report:
    """Fold check results into a report.

    Messages whose ID is in ``silenced_ids`` are dropped before any level is computed; a check's
    level is the highest level among its remaining messages (0 without any), capped at
    :data:`~dockerflow.health.WARNING` for a check named in ``noncritical``, and the report's
    level the highest among its checks.

    :param results: one result per check; a later result of the same name replaces an earlier one.
    :param silenced_ids: message IDs to ignore.
    :param noncritical: names of the checks whose failure counts as a warning.
    :returns: the report.
    """
    details: dict[str, CheckDetail] = {}
    for result in results:
        if not result.messages and not result.data:
            # The common case, a check that passed with nothing to say: built directly.
            details[result.name] = built(
                CheckDetail,
                level=0,
                messages={},
                duration=result.duration,
                critical=result.name not in noncritical,
                raw_level=0,
                starting=False,
                data={},
            )
            continue
        kept = [m for m in result.messages if m.id not in silenced_ids]
        raw = max((m.level for m in kept), default=0)
        messages = {message_key(result.name, i, m): m.msg for i, m in enumerate(kept)}
        critical = result.name not in noncritical
        level = raw if critical else min(raw, WARNING)
        data = {item.name: item for item in result.data}
        details[result.name] = CheckDetail(
            level, messages, result.duration, critical, raw, data=data
        )
    overall = max((d.level for d in details.values()), default=0)
    return Report(overall, details)
