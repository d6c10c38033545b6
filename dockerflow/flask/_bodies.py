"""The heartbeat's JSON response when every check passed: encoded once, then reused.

Most heartbeats pass, and the Dockerflow body of a passing report depends on nothing but its
checks' names: every status is ``"ok"`` and there are no details to show or hide. The body and
headers of the first such response of a selection of checks are kept, and later responses are
made from them without encoding JSON or parsing headers again.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import flask
from werkzeug.datastructures import Headers

#: Passing bodies kept per app (one per selection of checks seen) before starting again.
MAX_KEPT = 64

_Key = tuple[tuple[str, ...], bool, Any, Any, tuple[Any, ...]]
#: The config keys Flask's ``jsonify`` read before its JSON providers (Flask < 2.3).
_JSON_CONFIG = (
    "JSON_SORT_KEYS",
    "JSON_AS_ASCII",
    "JSONIFY_PRETTYPRINT_REGULAR",
    "JSONIFY_MIMETYPE",
)


def _reads_json_config() -> bool:
    """Whether this Flask's ``jsonify`` reads :data:`_JSON_CONFIG` (before 2.3); if its version
    cannot be told, it is taken to."""
    try:
        major, minor = importlib.metadata.version("flask").split(".")[:2]
        return (int(major), int(minor)) < (2, 3)
    except Exception:
        return True


#: Read once: the installed Flask does not change while the process runs.
_READS_JSON_CONFIG = _reads_json_config()


class PassingBodies:
    """The encoded responses of passing reports, by check names and the app's JSON encoding.

    What Flask's ``jsonify`` output depends on is part of the key: ``app.debug`` (which indents
    it), the app's JSON provider object (``app.json``, Flask 2.2+), and, for Flask before 2.3
    (told by the installed version, once), ``app.json_encoder`` and the ``JSON_*``/``JSONIFY_*``
    config keys. An app that replaces
    ``app.json`` or changes one of those keys gets bodies made the new way. A setting changed on
    the same provider object after the first heartbeat (``app.json.sort_keys``) is not seen.
    """

    def __init__(self) -> None:
        self._kept: dict[_Key, tuple[bytes, list[tuple[str, str]]]] = {}

    @staticmethod
    def key(app: flask.Flask, report_level: int, names: tuple[str, ...]) -> _Key | None:
        """Return the key of a report's body, or ``None`` when it is not passing (its body
        depends on its messages then, and is made anew)."""
        if report_level:
            return None
        provider = getattr(app, "json", None)
        # Read only where there is no provider: Flask 2.2 warns that json_encoder is deprecated.
        encoder = getattr(app, "json_encoder", None) if provider is None else None
        json_config = tuple(map(app.config.get, _JSON_CONFIG)) if _READS_JSON_CONFIG else ()
        return (names, app.debug, provider, encoder, json_config)

    def response(self, app: flask.Flask, key: _Key, status: int) -> flask.Response | None:
        """Return a new response with the body and headers kept for ``key``, or ``None``."""
        kept = self._kept.get(key)
        if kept is None:
            return None
        body, kept_headers = kept
        # Given as a Headers object and a one-item list, both are taken as they are: the
        # headers are not walked one add() at a time, nor is Content-Length (kept with them)
        # set again, as headers given as pairs and a body given as bytes would be.
        headers = Headers()
        headers[:] = kept_headers
        response: flask.Response = app.response_class([body], status, headers)
        return response

    def keep(self, key: _Key, response: flask.Response) -> None:
        """Keep the body and headers of ``response``, made the usual way, for ``key``."""
        if len(self._kept) >= MAX_KEPT:
            self._kept.clear()  # many selections: start again rather than grow
        self._kept[key] = (response.get_data(), list(response.headers.items()))
