"""The heartbeat report as an IETF health check response, media type ``application/health+json``.

The body follows the Internet-Draft "Health Check Response Format for HTTP APIs"
(draft-inadarei-api-health-check-06). Building it is a pure function of a
:class:`~dockerflow.engine.Report` and plain values: no I/O, no clock, no HTTP framework, so
any web layer can serve it and tests need nothing but a report.

Each check becomes one entry under ``checks``, keyed ``"<check name>:responseTime"``: its
``observedValue`` is how long the check took, in seconds. The draft forbids a colon in the
component name, so a colon in a check name becomes ``_`` in the key; the entry's
``componentId`` always holds the exact name (two names that meet in one key share its array,
told apart by ``componentId``).

The values a check reports (:class:`~dockerflow.health.CheckData`) that are numbers with a
unit become entries of their own, keyed ``"<check name>:<value name>"``, when the details are
shown: ``observedValue`` is the number, ``observedUnit`` its unit. Text, booleans and numbers
without a unit are measurements of no kind the draft knows: they are left out (the Dockerflow
body's details and the status page show them).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from .engine import Report
from .health import ERROR, STATUSES, WARNING

#: The media type of the body, sent as its ``Content-Type``.
MEDIA_TYPE = "application/health+json"
#: The measurement each check reports: the draft's predefined ``responseTime``.
MEASUREMENT = "responseTime"
#: The unit of ``observedValue``: seconds, as every duration and timeout in dockerflow.
OBSERVED_UNIT = "s"

PASS = "pass"
WARN = "warn"
FAIL = "fail"

__all__ = [
    "FAIL",
    "MEASUREMENT",
    "MEDIA_TYPE",
    "OBSERVED_UNIT",
    "PASS",
    "WARN",
    "check_key",
    "format_time",
    "health_json",
    "health_status",
]


def health_status(level: int, fail_level: int = ERROR) -> str:
    """Return the draft's status for a level: ``"fail"``, ``"warn"`` or ``"pass"``.

    ``"fail"`` from ``fail_level`` up (the heartbeat's HTTP status is then the failed one);
    ``"warn"`` for a warning or worse that does not fail (with the default fail level, a
    warning); ``"pass"`` below :data:`~dockerflow.health.WARNING` (no message, debug, info).

    :param level: a report's or a check's level, ``0`` for no message.
    :param fail_level: the level from which a heartbeat fails (10 to 50).
    :returns: ``"pass"``, ``"warn"`` or ``"fail"``.
    :raises ValueError: if ``fail_level`` is not one of the levels 10 to 50.
    """
    _check_fail_level(fail_level)
    return _status(level, fail_level)


def check_key(name: str, measurement: str = MEASUREMENT) -> str:
    """Return the ``checks`` key of a check: ``"<name>:responseTime"``, colons in ``name`` as ``_``.

    :param name: the check's name.
    :param measurement: the measurement's name: ``responseTime``, or a value's name
        (:class:`~dockerflow.health.CheckData`), colons in it as ``_`` too.
    :returns: the key.
    """
    return f"{name.replace(':', '_')}:{measurement.replace(':', '_')}"


def format_time(moment: datetime) -> str:
    """Return ``moment`` as an ISO 8601 (RFC 3339) UTC date-time with milliseconds.

    :param moment: a timezone-aware date-time.
    :returns: for example ``"2026-11-26T13:53:51.120Z"``.
    :raises ValueError: if ``moment`` is naive (its timezone would be a guess).
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"a time must be timezone-aware, got the naive {moment.isoformat()}")
    text = moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def health_json(
    report: Report,
    *,
    checked_at: datetime,
    fail_level: int = ERROR,
    details: bool = True,
    version: Mapping[str, Any] | None = None,
    service_id: str | None = None,
    description: str | None = None,
    group: str | None = None,
) -> dict[str, Any]:
    """Return the ``application/health+json`` body of a heartbeat report.

    ::

        {"status": "warn", "version": "2.4.0", "releaseId": "3f1c9e0",
         "checks": {"search:responseTime": [{
             "componentId": "search", "status": "warn", "time": "2026-11-26T13:53:51.120Z",
             "observedValue": 0.012, "observedUnit": "s",
             "output": "myapp.health.W002: 1200 jobs waiting"}]}}

    ``output`` holds the check's messages, one ``<id>: <text>`` line each, as the engine
    masked them; it is left out when ``details`` is false and for a check that has none. A
    check that passes with a message (an ``Info``, such as ``I001`` "Can't connect to database
    to check migrations") shows it there too: every message the Dockerflow body shows is in
    some entry's ``output``. A non-critical check's entry has ``"critical": false``, and that of a
    failing check excused by the startup grace ``"starting": true``. With ``details``, each
    number with a unit that a check reported is an entry of its own, ``"<check>:<name>"``.

    :param report: the heartbeat's report.
    :param checked_at: when the report was made (timezone-aware): every entry's ``time``.
    :param fail_level: the level from which the heartbeat fails.
    :param details: whether to show the messages (``DOCKERFLOW_HEARTBEAT_DETAILS``).
    :param version: the ``version.json`` object, or ``None`` when there is none: its
        ``version`` becomes ``version`` and its ``commit`` ``releaseId``, each only when it is
        a non-empty string.
    :param service_id: the draft's ``serviceId``; left out when ``None``.
    :param description: the draft's ``description``; left out when ``None``.
    :param group: the named group of checks the heartbeat ran (``/__heartbeat__/<group>``),
        as the top-level ``"group"``; left out when ``None``.
    :returns: the body, ready for :func:`json.dumps`.
    :raises ValueError: if ``fail_level`` is not a level from 10 to 50 or ``checked_at`` is
        naive.
    """
    when = format_time(checked_at)
    body: dict[str, Any] = {"status": health_status(report.level, fail_level)}  # validates
    if version is not None:
        for key, field in (("version", "version"), ("releaseId", "commit")):
            value = version.get(field)
            if isinstance(value, str) and value:
                body[key] = value
    if service_id is not None:
        body["serviceId"] = service_id
    if description is not None:
        body["description"] = description
    if group is not None:
        # An additional key, as "critical" in the entries: which subset this status is of.
        body["group"] = group
    checks: dict[str, list[dict[str, Any]]] = {}
    for name, detail in report.results.items():
        status = _status(detail.level, fail_level)
        entry: dict[str, Any] = {
            "componentId": name,
            "status": status,
            "time": when,
            # Microseconds: the clock's noise below that is not information.
            "observedValue": round(detail.duration, 6),
            "observedUnit": OBSERVED_UNIT,
        }
        if not detail.critical:
            # An additional key (the draft's section 4.10), as in the Dockerflow body's details.
            entry["critical"] = False
        if detail.starting:
            entry["starting"] = True
        if details and detail.messages:
            entry["output"] = "\n".join(f"{key}: {text}" for key, text in detail.messages.items())
        checks.setdefault(check_key(name), []).append(entry)
        if details:
            for item in detail.data.values():
                if item.unit is None or not _is_number(item.value):
                    continue  # the draft's observedValue is a measurement, in a unit
                observed = {
                    "componentId": name,
                    "status": status,
                    "time": when,
                    "observedValue": item.value,
                    "observedUnit": item.unit,
                }
                checks.setdefault(check_key(name, item.name), []).append(observed)
    body["checks"] = checks
    return body


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _status(level: int, fail_level: int) -> str:
    if level >= fail_level:
        return FAIL
    if level >= WARNING:
        return WARN
    return PASS


def _check_fail_level(fail_level: object) -> None:
    # STATUSES also holds 0 (no message), which is no fail level.
    if not isinstance(fail_level, int) or fail_level == 0 or fail_level not in STATUSES:
        levels = ", ".join(str(level) for level in STATUSES if level)
        raise ValueError(f"fail_level must be one of {levels}, got {fail_level!r}")
