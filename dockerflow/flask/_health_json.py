"""Serving the heartbeat as ``application/health+json``: content negotiation and the response.

The body itself is built by :func:`dockerflow.health_json.health_json`; this module decides
when a client gets it and when each report was made.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any

import flask
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from ..engine import Report, after_fork_in_child
from ..health_json import MEDIA_TYPE

#: Reports whose time is remembered: twice the engine cache's 64 check subsets.
MAX_REMEMBERED = 128


def wants_media_type(accept: str | None, media_type: str) -> bool:
    """Return whether a client asks for ``media_type`` rather than the default JSON body.

    Only a client that names the media type, with a quality above 0, and prefers it to
    ``application/json`` gets it: no ``Accept``, ``*/*``, ``application/*``,
    ``application/json`` or a tie between the two keep the default. The header is parsed only
    when it names the media type: ``*/*``, what most probes send, costs nothing.

    :param accept: the request's raw ``Accept`` header, ``None`` when it has none.
    :param media_type: a media type in lower case, such as ``application/health+json``.
    :returns: whether to answer with ``media_type``.
    """
    if not accept or accept == "*/*" or media_type not in accept.lower():
        return False
    parsed = parse_accept_header(accept, MIMEAccept)
    named = any(
        value.split(";", 1)[0].strip().lower() == media_type and q > 0 for value, q in parsed
    )
    # quality() takes the most specific matching range, so "health+json;q=0.5, */*" is 0.5.
    return named and parsed.quality(media_type) > parsed.quality("application/json")


class ReportTimes:
    """When each recent report was made, so that a report served again from the cache keeps
    the time it was made at, not the time it was served again.

    A report is known by its identity; the most recent :data:`MAX_REMEMBERED` are kept (and
    kept alive, so that an id is not reused while it is remembered).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[int, tuple[Report, datetime]] = {}
        # A thread of the parent may hold the lock at fork time: the child gets a new one.
        after_fork_in_child(self, ReportTimes._new_lock)

    def _new_lock(self) -> None:
        self._lock = threading.Lock()

    def time_of(self, report: Report, *, remember: bool) -> datetime:
        """Return when ``report`` was first seen: now, unless it is remembered from earlier.

        :param report: the report a heartbeat got.
        :param remember: whether the report may be served again (the engine caches reports).
        :returns: a timezone-aware UTC date-time.
        """
        now = datetime.now(timezone.utc)
        if not remember:
            return now
        key = id(report)
        # Heartbeats run in many threads at once: one lock around the lookup and the insert.
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and seen[0] is report:
                return seen[1]
            if len(self._seen) >= MAX_REMEMBERED:
                # The oldest first: a report made long ago is the least likely still cached.
                del self._seen[next(iter(self._seen))]
            self._seen[key] = (report, now)
        return now


def health_json_response(body: Any, status: int) -> flask.Response:
    """Return ``body`` as a ``Content-Type: application/health+json`` response, never cached.

    :param body: the health+json body.
    :param status: the HTTP status code.
    :returns: the response.
    """
    response = flask.jsonify(body)
    response.status_code = status
    response.mimetype = MEDIA_TYPE
    response.headers["Cache-Control"] = "no-store"
    return response
