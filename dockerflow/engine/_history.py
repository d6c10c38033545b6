"""The recent results of each check in this process: a bounded record fed by reports.

A policy beside the engine, like the cache: whoever makes reports (the Flask layer, once per
heartbeat) gives each one to :meth:`History.record`; nothing here runs a check. Memory is
bounded: :data:`MAX_ENTRIES` results per check, :data:`MAX_CHECKS` checks, and each result
keeps at most :data:`MAX_MESSAGES` messages and :data:`MAX_VALUES` values, their text cut.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from ..health import level_to_text
from ._fork import after_fork_in_child
from ._report import CheckDetail, Report

#: Results kept per check, the newest last.
MAX_ENTRIES = 30
#: Checks kept; the one recorded longest ago is forgotten first.
MAX_CHECKS = 256
#: Messages kept per result, and characters of each text.
MAX_MESSAGES = 4
MAX_TEXT = 200
#: Values kept per result (:class:`~dockerflow.health.CheckData`), and characters of a text value.
MAX_VALUES = 8
MAX_VALUE_TEXT = 64


class Entry(NamedTuple):
    """One result of one check, as a heartbeat reported it.

    :param at: when the report was made, in seconds since the epoch.
    :param level: the check's level in the report (``0`` when it passed).
    :param duration: seconds the check took.
    :param messages: ``(message key, text)`` pairs, as the report showed them.
    :param values: ``(name, value, unit)`` of the values the check reported.
    """

    at: float
    level: int
    duration: float
    messages: tuple[tuple[str, str], ...] = ()
    values: tuple[tuple[str, object, str | None], ...] = ()

    @property
    def status(self) -> str:
        """The status text of :attr:`level`."""
        return level_to_text(self.level)


@dataclass(frozen=True)
class CheckHistory:
    """What is known of one check's recent results.

    :param entries: the newest results, oldest first (at most :data:`MAX_ENTRIES`).
    :param first_seen: when this process first recorded a result of the check.
    :param changed_at: when its status last changed to the current one; ``None`` when it has
        had one status since it was first seen.
    """

    entries: tuple[Entry, ...]
    first_seen: float
    changed_at: float | None


#: What a record keeps of each result: the fields of an :class:`Entry`, as a plain tuple (every
#: heartbeat adds one per check; the named tuples are made when a snapshot is taken).
_Fields = tuple[
    float, int, float, tuple[tuple[str, str], ...], tuple[tuple[str, object, str | None], ...]
]


class _Record:
    __slots__ = ("changed_at", "data", "entries", "first_seen", "messages")

    def __init__(self, at: float) -> None:
        self.entries: deque[_Fields] = deque(maxlen=History.size)
        self.first_seen = at
        self.changed_at: float | None = None
        # The messages and values the newest entry was made from: a check that reports the
        # same again (most heartbeats) shares that entry's texts instead of cutting them anew.
        self.messages: Mapping[str, str] | None = None
        self.data: Mapping[str, object] | None = None


class History:
    """The recent results of each check, from the reports given to :meth:`record`.

    Thread-safe: heartbeats record from many threads. A report given twice in a row (served
    again from the cache) is recorded once.
    """

    #: Results kept per check.
    size = MAX_ENTRIES

    def __init__(self) -> None:
        self._reset()
        # A lock held by another thread at fork time would block the child for ever.
        after_fork_in_child(self, History._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._last: Report | None = None

    def record(self, report: Report, at: float | None = None) -> None:
        """Add each check's result in ``report``.

        :param report: a heartbeat's report (of every check, or of some).
        :param at: when it was made, in seconds since the epoch; default now.
        """
        when = time.time() if at is None else at
        with self._lock:
            if report is self._last:
                return
            self._last = report
            for name, detail in report.results.items():
                record = self._records.get(name)
                if record is None:
                    record = self._records[name] = _Record(when)
                    if len(self._records) > MAX_CHECKS:
                        self._records.popitem(last=False)
                elif len(self._records) > 1:
                    self._records.move_to_end(name)
                entries = record.entries
                if not entries:
                    entries.append(_entry(detail, when))
                else:
                    last = entries[-1]
                    level = detail.level
                    if last[1] != level:
                        record.changed_at = when
                    messages, data = detail.messages, detail.data
                    if (record.messages is messages or record.messages == messages) and (
                        record.data is data or record.data == data
                    ):
                        entries.append((when, level, detail.duration, last[3], last[4]))
                    else:
                        entries.append(_entry(detail, when))
                record.messages, record.data = detail.messages, detail.data

    def snapshot(self) -> Mapping[str, CheckHistory]:
        """Return check name → its :class:`CheckHistory`, a copy safe to read at leisure."""
        with self._lock:
            copied = [
                (name, tuple(r.entries), r.first_seen, r.changed_at)
                for name, r in self._records.items()
            ]
        # The named tuples are made outside the lock: heartbeats need not wait for them.
        return {
            name: CheckHistory(tuple([Entry(*fields) for fields in entries]), first, changed)
            for name, entries, first, changed in copied
        }

    def clear(self) -> None:
        """Forget every result."""
        with self._lock:
            self._records.clear()
            self._last = None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _entry(detail: CheckDetail, at: float) -> _Fields:
    messages = tuple(
        (key, _cut(str(text), MAX_TEXT))
        for key, text in list(detail.messages.items())[:MAX_MESSAGES]
    )
    values = tuple(
        (
            item.name,
            _cut(item.value, MAX_VALUE_TEXT) if isinstance(item.value, str) else item.value,
            item.unit,
        )
        for item in list(detail.data.values())[:MAX_VALUES]
    )
    return (at, detail.level, detail.duration, messages, values)
