"""Settings the extension reads from ``app.config`` each time it uses them.

python-dockerflow read some ``DOCKERFLOW_*`` keys on every request, so services set them after
creating the extension (in a later ``app.config.from_object``, or in tests). Those keys are
looked up again on use: a dict read. The value is parsed only when it differs from the last one
seen, so a request costs no parsing. As in ``init_app``, an empty value (``""``, blanks or
``None``) means "not set": the environment applies, then the default.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._config import SETTINGS, Setting, Settings, _is_empty

if TYPE_CHECKING:
    from flask import Flask

#: The settings read on use; the others configure the checks engine and are read in init_app.
LIVE_KEYS = (
    "DOCKERFLOW_HEARTBEAT_FAILED_STATUS_CODE",
    "DOCKERFLOW_HEARTBEAT_DETAILS",
    "DOCKERFLOW_HEARTBEAT_PAGE",
    "DOCKERFLOW_SILENCED_CHECKS",
    "DOCKERFLOW_ERROR_ENDPOINT",
    "DOCKERFLOW_REQUEST_ID_HEADER_NAME",
    "DOCKERFLOW_SUMMARY_LOG_QUERYSTRING",
    "DOCKERFLOW_SUMMARY_LOG_DOCKERFLOW_ENDPOINTS",
)

_MISSING = object()
# Raw values of these types cannot change without being replaced: compared by identity first.
_IMMUTABLE = (str, bytes, int, float, bool, type(None), tuple, frozenset)

logger = logging.getLogger("dockerflow.flask")


@dataclass(frozen=True)
class RequestSettings:
    """The settings the request hooks read, parsed: one object per distinct set of values."""

    #: DOCKERFLOW_REQUEST_ID_HEADER_NAME.
    request_id_header: str
    #: Its WSGI environ key, e.g. ``HTTP_X_REQUEST_ID``.
    request_id_environ_key: str
    #: DOCKERFLOW_SUMMARY_LOG_QUERYSTRING.
    summary_log_querystring: bool
    #: DOCKERFLOW_SUMMARY_LOG_DOCKERFLOW_ENDPOINTS: True, False or "debug".
    summary_log_dockerflow_endpoints: bool | str


@dataclass(frozen=True)
class HeartbeatSettings:
    """The settings a heartbeat reads, parsed: one object per distinct set of values."""

    #: DOCKERFLOW_HEARTBEAT_FAILED_STATUS_CODE.
    failed_status_code: int
    #: DOCKERFLOW_HEARTBEAT_DETAILS: "always", "debug" or "never".
    details: str
    #: DOCKERFLOW_HEARTBEAT_PAGE.
    heartbeat_page: bool
    #: DOCKERFLOW_SILENCED_CHECKS.
    silenced_checks: tuple[str, ...]

    def details_shown(self, app: Flask) -> bool:
        """Whether the heartbeat of ``app`` shows its details (``app.debug`` is read live)."""
        details = self.details
        return details == "always" or (details == "debug" and app.debug)


class LiveSettings:
    """The current value of each setting in :data:`LIVE_KEYS`, for one application.

    :param config: the app's config, read on each :meth:`get`.
    :param initial: the settings parsed in ``init_app``; their values are the starting point.
    """

    def __init__(self, config: Mapping[str, Any], initial: Settings) -> None:
        self._config = config
        self._settings: dict[str, Setting] = {s.attr: s for s in SETTINGS if s.key in LIVE_KEYS}
        # attr -> (the raw value last seen, or a copy of it if mutable; its parsed value)
        self._last: dict[str, tuple[object, Any]] = {
            attr: (_snapshot(config.get(s.key, _MISSING)), getattr(initial, attr))
            for attr, s in self._settings.items()
        }
        self._environ_keys: dict[str, str] = {}
        # The raw values the request settings were last made from, then those settings.
        self._request: tuple[object, object, object, RequestSettings] | None = None
        # The same for the heartbeat's settings.
        self._heartbeat: tuple[object, object, object, object, HeartbeatSettings] | None = None

    def get(self, attr: str) -> Any:
        """Return the current parsed value of the setting with attribute name ``attr``.

        A value that cannot be parsed is logged once, as an error naming the key and value,
        and the previous value stays in effect: a typo in a setting changed at run time does
        not fail every request.

        :param attr: the attribute name in :class:`~dockerflow.flask._config.Settings`, such
            as ``"summary_log_querystring"``.
        :returns: the parsed value.
        :raises KeyError: if ``attr`` is not a setting read on use.
        """
        setting = self._settings[attr]
        raw = self._config.get(setting.key, _MISSING)
        seen, value = self._last[attr]
        if raw is seen or _same(raw, seen):
            return value
        source = raw
        if raw is _MISSING or _is_empty(raw):
            # As load_settings does: an empty value is not set, nor is an empty variable.
            given = os.environ.get(setting.key)
            source = setting.default if _is_empty(given) else given
        try:
            value = setting.parse(source)
        except ValueError as exc:
            logger.error(
                "%s=%r is not valid: %s; keeping the previous value %r",
                setting.key,
                source,
                exc,
                value,
            )
        self._last[attr] = (_snapshot(raw), value)
        return value

    def for_request(self) -> RequestSettings:
        """Return the settings the request hooks read, as they are in the config now.

        Three dict reads per request: while the config holds the very values seen last, the
        settings made from them are returned; otherwise each is read with :meth:`get`, which
        parses a value only when it differs from the last one.

        :returns: the parsed settings.
        """
        config = self._config
        header = config.get("DOCKERFLOW_REQUEST_ID_HEADER_NAME", _MISSING)
        querystring = config.get("DOCKERFLOW_SUMMARY_LOG_QUERYSTRING", _MISSING)
        endpoints = config.get("DOCKERFLOW_SUMMARY_LOG_DOCKERFLOW_ENDPOINTS", _MISSING)
        # One tuple, replaced whole: a thread never sees new values with old settings.
        last = self._request
        if (
            last is not None
            and header is last[0]
            and querystring is last[1]
            and endpoints is last[2]
        ):
            return last[3]
        settings = RequestSettings(
            self.get("request_id_header"),
            self.request_id_environ_key(),
            self.get("summary_log_querystring"),
            self.get("summary_log_dockerflow_endpoints"),
        )
        raw = (header, querystring, endpoints)
        # A value changed in place (a mutable one) would look the same: never remembered.
        if all(isinstance(value, _IMMUTABLE) or value is _MISSING for value in raw):
            self._request = (*raw, settings)
        return settings

    def for_heartbeat(self) -> HeartbeatSettings:
        """Return the settings a heartbeat reads, as they are in the config now.

        As :meth:`for_request`: four dict reads per heartbeat while the config holds the very
        values seen last (immutable ones), else each is read with :meth:`get`.

        :returns: the parsed settings.
        """
        config = self._config
        status = config.get("DOCKERFLOW_HEARTBEAT_FAILED_STATUS_CODE", _MISSING)
        details = config.get("DOCKERFLOW_HEARTBEAT_DETAILS", _MISSING)
        page = config.get("DOCKERFLOW_HEARTBEAT_PAGE", _MISSING)
        silenced = config.get("DOCKERFLOW_SILENCED_CHECKS", _MISSING)
        # One tuple, replaced whole: a thread never sees new values with old settings.
        last = self._heartbeat
        if (
            last is not None
            and status is last[0]
            and details is last[1]
            and page is last[2]
            and silenced is last[3]
        ):
            return last[4]
        settings = HeartbeatSettings(
            self.get("failed_status_code"),
            self.get("details"),
            self.get("heartbeat_page"),
            self.get("silenced_checks"),
        )
        if last is not None and last[4] == settings:
            settings = last[4]  # the same object while the values are the same
        raw = (status, details, page, silenced)
        # A value changed in place (a mutable one) would look the same: never remembered.
        if all(isinstance(value, _IMMUTABLE) or value is _MISSING for value in raw):
            self._heartbeat = (*raw, settings)
        return settings

    def request_id_environ_key(self) -> str:
        """Return the WSGI environ key of the request id header, e.g. ``HTTP_X_REQUEST_ID``."""
        header: str = self.get("request_id_header")
        key = self._environ_keys.get(header)
        if key is None:
            key = self._environ_keys[header] = "HTTP_" + header.upper().replace("-", "_")
        return key


def _snapshot(raw: object) -> object:
    # A list appended to in place must not look unchanged: keep a copy to compare with.
    if isinstance(raw, _IMMUTABLE) or raw is _MISSING:
        return raw
    try:
        return copy.copy(raw)
    except Exception:
        return raw


def _same(raw: object, seen: object) -> bool:
    if type(raw) is not type(seen):  # 1 == True, but "1" and True are parsed apart anyway
        return False
    try:
        return bool(raw == seen)
    except Exception:
        return False
