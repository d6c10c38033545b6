"""The status page: ``/__heartbeat__`` as HTML for a browser, its assets and its recent results.

A browser (whose ``Accept`` prefers ``text/html``) gets a page of the same report the JSON gives,
with the same HTTP status; probes and scripts keep the JSON. The page shows only what the JSON's
details show (it is served only where they are), plus this process's recent results of each
check (:class:`~dockerflow.engine.History`), which earlier heartbeats showed already. It needs
no external asset and no inline script or style: its script, style sheet and icon are served by
the extension's own routes, so it works under ``Content-Security-Policy: default-src 'self'``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import resources
from typing import Any

import flask
from werkzeug.datastructures import MIMEAccept

from ..engine import Check, CheckHistory, Report
from ..health_json import MEDIA_TYPE, format_time

#: Seconds between two refreshes of the page.
REFRESH_SECONDS = 5
#: The page's assets: name → media type.
ASSETS = {
    "page.js": "text/javascript; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
}
_STATUSES = ("ok", "debug", "info", "warning", "error", "critical", "unknown")
_COLOURS = {
    "ok": "#1a7f37",
    "warning": "#9a6700",
    "error": "#cf222e",
    "critical": "#82071e",
}
#: Headers of the page itself: it loads nothing but its own assets, and is never framed.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def wants_html(accept: MIMEAccept) -> bool:
    """Return whether the client prefers the page to the JSON bodies.

    Only a client that names ``text/html`` (or ``application/xhtml+xml``) with a quality above
    0, and rates it above ``application/json`` and ``application/health+json``, gets the page:
    a browser does; no ``Accept``, ``*/*`` and the JSON types keep the JSON, byte for byte.

    :param accept: the request's parsed ``Accept`` header (``request.accept_mimetypes``).
    :returns: whether to answer with the page.
    """
    html = max(accept.quality("text/html"), accept.quality("application/xhtml+xml"))
    if html <= 0 or not any(
        value.split(";", 1)[0].strip().lower() in ("text/html", "application/xhtml+xml") and q > 0
        for value, q in accept
    ):
        return False
    return html > max(accept.quality("application/json"), accept.quality(MEDIA_TYPE))


@functools.cache
def _asset(name: str) -> tuple[bytes, str]:
    """The bytes of an asset and their short hash (for cache-busting URLs)."""
    data = resources.files(__package__).joinpath("status").joinpath(name).read_bytes()
    return data, hashlib.sha256(data).hexdigest()[:12]


@functools.cache
def _template() -> Any:
    import jinja2

    text = _asset("page.html")[0].decode("utf-8")
    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(text)


def asset_response(name: str) -> flask.Response:
    """Return the response of a page asset (``page.js``, ``page.css``), cacheable for a day
    (its URL carries its hash).

    :raises NotFound: for any other name.
    """
    if name not in ASSETS:
        flask.abort(404)
    data, _ = _asset(name)
    response = flask.Response(data, 200, content_type=ASSETS[name])
    response.headers["Cache-Control"] = "public, max-age=86400"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def icon_response(status: str) -> flask.Response:
    """Return the page's icon: a dot in the colour of ``status``."""
    colour = _COLOURS.get(status, "#0969da")
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
        f'<circle cx="8" cy="8" r="7" fill="{colour}"/></svg>'
    )
    response = flask.Response(svg, 200, content_type="image/svg+xml")
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response


def page_response(
    report: Report,
    *,
    status: int,
    checks: Iterable[Check],
    default_timeout: float,
    history: Mapping[str, CheckHistory],
    history_size: int,
    version: Mapping[str, Any] | None,
    checked_at: datetime,
) -> flask.Response:
    """Return the page of ``report``, answered with ``status`` (the heartbeat's own).

    :param checks: the checks the app has, for their timeouts and groups.
    :param default_timeout: the timeout of a check that sets none.
    :param history: the recent results of each check.
    :param history_size: how many results are kept per check.
    :param version: the ``version.json`` object, or ``None``.
    :param checked_at: when the report was made.
    """
    now = time.time()
    by_name = {check.name: check for check in checks}
    order = {name: i for i, name in enumerate(report.results)}
    names = sorted(report.results, key=lambda n: (-report.results[n].level, order[n]))
    rows = [
        _row(name, report, by_name.get(name), default_timeout, history.get(name), now)
        for name in names
    ]
    failing = sum(1 for name in names if report.results[name].level >= 30)
    summary = (
        f"{failing} of {len(names)} checks failing or warning"
        if failing
        else f"all {len(names)} checks pass"
    )
    icon_status = report.status if report.status in _COLOURS else "info"
    app_name = flask.current_app.name
    context = {
        "title": f"{report.status.upper()} · {app_name} heartbeat",
        "app_name": app_name,
        "status": report.status,
        "http_status": status,
        "summary": summary,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "version": _text(version, "version"),
        "commit": _text(version, "commit"),
        "checked_iso": format_time(checked_at),
        "checked_text": checked_at.astimezone(timezone.utc).strftime("%H:%M:%S UTC"),
        "refresh": REFRESH_SECONDS,
        "checks": rows,
        "history_size": history_size,
        "js_url": _asset_url("page.js"),
        "css_url": _asset_url("page.css"),
        "icon_url": flask.url_for("dockerflow.heartbeat_icon", status=icon_status),
        "history_url": flask.url_for("dockerflow.heartbeat_group", group="history"),
    }
    response = flask.Response(_template().render(context), status, mimetype="text/html")
    response.headers.update(PAGE_HEADERS)
    return response


def history_body(history: Mapping[str, CheckHistory], history_size: int) -> dict[str, Any]:
    """Return the recent results as JSON: ``{"pid", "size", "checks": {name: {...}}}``.

    Each check: ``status`` (the newest result's), ``first_seen`` and ``changed_at`` (``null``
    when its status has not changed since), and ``results``, oldest first, each ``{"time",
    "status", "level", "duration", "messages", "data"}``.
    """
    checks: dict[str, Any] = {}
    for name, record in history.items():
        results = [
            {
                "time": _iso(entry.at),
                "status": entry.status,
                "level": entry.level,
                "duration": round(entry.duration, 6),
                "messages": dict(entry.messages),
                "data": {
                    key: {"value": value} if unit is None else {"value": value, "unit": unit}
                    for key, value, unit in entry.values
                },
            }
            for entry in record.entries
        ]
        checks[name] = {
            "status": record.entries[-1].status if record.entries else "unknown",
            "first_seen": _iso(record.first_seen),
            "changed_at": None if record.changed_at is None else _iso(record.changed_at),
            "results": results,
        }
    return {"pid": os.getpid(), "size": history_size, "checks": checks}


def _row(
    name: str,
    report: Report,
    check: Check | None,
    default_timeout: float,
    record: CheckHistory | None,
    now: float,
) -> dict[str, Any]:
    detail = report.results[name]
    timeout = check.timeout if check is not None and check.timeout else default_timeout
    status = detail.status if detail.status in _STATUSES else "unknown"
    entries = record.entries if record is not None else ()
    strip = [
        (
            entry.status,
            f"{_clock(entry.at)}: {entry.status}, {_seconds(entry.duration)}"
            + (f" — {entry.messages[0][0]}: {entry.messages[0][1]}" if entry.messages else ""),
        )
        for entry in entries
    ]
    if record is None:
        changed_text, changed_title = "", ""
    elif record.changed_at is None:
        changed_text = f"{status} since first seen, {_ago(now - record.first_seen)} ago"
        changed_title = f"first seen at {_iso(record.first_seen)}; no change in this process"
    else:
        changed_text = f"{status} for {_ago(now - record.changed_at)}"
        changed_title = f"changed to {status} at {_iso(record.changed_at)}"
    return {
        "name": name,
        "anchor": "".join(ch if ch.isalnum() else "-" for ch in name),
        "status": status,
        "critical": detail.critical,
        "starting": detail.starting,
        "groups": _groups(check),
        "messages": [(key, detail.level, text) for key, text in detail.messages.items()],
        "duration": round(detail.duration, 6),
        "timeout": timeout,
        "low": round(timeout * 0.5, 6),
        "high": round(timeout * 0.8, 6),
        "duration_text": _seconds(detail.duration),
        "timeout_text": _seconds(timeout),
        "data": [(key, _value(item.value), item.unit) for key, item in detail.data.items()],
        "strip": strip,
        "changed_text": changed_text,
        "changed_title": changed_title,
    }


def _groups(check: Check | None) -> Sequence[str]:
    # Named check groups (Check.groups) where the engine has them.
    groups = getattr(check, "groups", ()) if check is not None else ()
    return [str(group) for group in groups or ()]


def _asset_url(name: str) -> str:
    return flask.url_for("dockerflow.heartbeat_asset", name=name, v=_asset(name)[1])


def _text(version: Mapping[str, Any] | None, key: str) -> str | None:
    value = version.get(key) if version is not None else None
    return value if isinstance(value, str) and value else None


def _value(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def _seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes}m"
    return f"{hours // 24}d {hours % 24}h"


def _iso(at: float) -> str:
    return format_time(datetime.fromtimestamp(at, timezone.utc))


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%H:%M:%S")
