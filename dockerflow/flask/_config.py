"""The ``DOCKERFLOW_*`` settings: parsing, defaults and validation, done once in ``init_app``."""

from __future__ import annotations

import difflib
import functools
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from ..engine import MAX_SECONDS, CheckRegistrationError, ConfigurationError, validate_groups
from ..health import STATUSES

logger = logging.getLogger("dockerflow.flask")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# A message ID: letters, digits, '.', '_' and '-' (dockerflow.health.E001, myapp.W002).
_MESSAGE_ID = re.compile(r"[A-Za-z0-9_.\-]+")
_CHECK_NAME = re.compile(r"[^,\s]+")
PREFIX = "DOCKERFLOW_"
_LEVELS = {text: level for level, text in STATUSES.items() if level > 0}
DETAILS_MODES = ("always", "debug", "never")
#: The value of DOCKERFLOW_SUMMARY_LOG_DOCKERFLOW_ENDPOINTS that logs those lines at DEBUG.
SUMMARY_DEBUG = "debug"


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError("expected a boolean (true/false, 1/0, yes/no, on/off)")


def _parse_summary_mode(value: Any) -> bool | str:
    if isinstance(value, str) and value.strip().lower() == SUMMARY_DEBUG:
        return SUMMARY_DEBUG
    try:
        return _parse_bool(value)
    except ValueError:
        raise ValueError(
            f"expected a boolean (true/false, 1/0, yes/no, on/off) or {SUMMARY_DEBUG}"
        ) from None


def _parse_seconds(value: Any, *, allow_zero: bool) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError("expected a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError("expected a positive number of seconds" + (" or 0" if allow_zero else ""))
    if seconds > MAX_SECONDS:
        raise ValueError(f"expected at most {MAX_SECONDS:g} seconds")
    return seconds


def _parse_timeout(value: Any) -> float:
    return _parse_seconds(value, allow_zero=False)


def _parse_restart_after(value: Any) -> float | None:
    return None if value is None else _parse_seconds(value, allow_zero=False)


def _parse_ttl(value: Any) -> float:
    return _parse_seconds(value, allow_zero=True)


def _parse_status_code(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an HTTP status code")
    try:
        code = int(str(value).strip())
    except ValueError:
        raise ValueError("expected an HTTP status code") from None
    if not 400 <= code <= 599:
        raise ValueError("expected an HTTP error status code between 400 and 599")
    return code


def _parse_level(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in STATUSES and value > 0:
        return value
    if isinstance(value, str) and value.strip().lower() in _LEVELS:
        return _LEVELS[value.strip().lower()]
    raise ValueError(f"expected one of {', '.join(_LEVELS)}")


def _parse_details(value: Any) -> str:
    if isinstance(value, str) and value.strip().lower() in DETAILS_MODES:
        return value.strip().lower()
    raise ValueError(f"expected one of {', '.join(DETAILS_MODES)}")


def _parse_header_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a header name")
    name = value.strip()
    if not all(c.isascii() and (c.isalnum() or c in "-_") for c in name):
        raise ValueError("a header name may hold only ASCII letters, digits, '-' and '_'")
    return name


def _parse_id_list(value: Any) -> tuple[str, ...]:
    return _parse_list(value, _MESSAGE_ID, "message IDs", "dockerflow.health.W001")


def _parse_name_list(value: Any) -> tuple[str, ...]:
    return _parse_list(value, _CHECK_NAME, "check names", "check_redis_connected")


def _parse_list(value: Any, pattern: re.Pattern[str], what: str, sample: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
        # One trailing comma is forgiven ("a,b,"); an empty item elsewhere is a typo.
        if items and not items[-1]:
            items.pop()
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = [str(item).strip() for item in value]
    else:
        raise ValueError(f"expected a comma-separated string or a list of {what}")
    bad = [item for item in items if not pattern.fullmatch(item)]
    if bad:
        raise ValueError(
            f"not {what}: {', '.join(repr(item) for item in bad)} "
            f"(expected names such as {sample}, separated by commas)"
        )
    return tuple(items)


#: A parsed DOCKERFLOW_HEARTBEAT_GROUPS: (group, check names) pairs, in the order given.
Groups = tuple[tuple[str, tuple[str, ...]], ...]


def _parse_groups(value: Any) -> Groups:
    if isinstance(value, str):
        # The environment's form: "ready:db,cache;live:" (an empty group is allowed).
        pairs: list[tuple[Any, Any]] = []
        for part in value.split(";"):
            if not part.strip():
                continue
            group, colon, names = part.partition(":")
            if not colon:
                raise ValueError(
                    f"{part.strip()!r} is not GROUP:CHECK[,CHECK...] (expected groups such as "
                    "ready:check_database_connected,check_redis_connected;live:)"
                )
            pairs.append((group.strip(), names))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)) and all(
        isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in value
    ):
        pairs = [tuple(pair) for pair in value]  # as parsed before: (group, names) pairs
    else:
        raise ValueError(
            "expected a mapping of group name to check names, or GROUP:CHECK,CHECK;GROUP:..."
        )
    groups: dict[str, tuple[str, ...]] = {}
    for group, names in pairs:
        try:
            (name,) = validate_groups([group], "a group name")
        except CheckRegistrationError as exc:
            raise ValueError(str(exc)) from None
        if name in groups:
            raise ValueError(f"group {name!r} is given twice")
        groups[name] = _parse_name_list(names) if names else ()
    return tuple(groups.items())


@dataclass(frozen=True)
class Setting:
    """One ``DOCKERFLOW_*`` key: its name, attribute in :class:`Settings`, default, parser, and
    for the docs its type, meaning and an example value (as written in the environment)."""

    key: str
    attr: str
    default: Any
    parse: Callable[[Any], Any]
    kind: str
    help: str
    example: str


#: Every setting the Flask extension reads, in the order the docs list them.
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "DOCKERFLOW_CHECK_TIMEOUT",
        "check_timeout",
        3.0,
        _parse_timeout,
        "float in (0, 86400]",
        "Seconds each check may run, unless the check sets its own timeout.",
        "5",
    ),
    Setting(
        "DOCKERFLOW_CHECK_RESTART_AFTER",
        "check_restart_after",
        None,
        _parse_restart_after,
        "float in (0, 86400], or unset",
        "Seconds after which a check run that is still going (stuck) is started again beside "
        "it, unless the check sets its own restart_after. Unset: 3 x the check's timeout.",
        "60",
    ),
    Setting(
        "DOCKERFLOW_HEARTBEAT_FAIL_LEVEL",
        "fail_level",
        "error",
        _parse_level,
        "debug | info | warning | error | critical",
        "Lowest overall level that makes /__heartbeat__ fail. 'warning' is strict mode.",
        "warning",
    ),
    Setting(
        "DOCKERFLOW_HEARTBEAT_FAILED_STATUS_CODE",
        "failed_status_code",
        500,
        _parse_status_code,
        "int 400-599",
        "HTTP status of a failing heartbeat.",
        "503",
    ),
    Setting(
        "DOCKERFLOW_HEARTBEAT_DETAILS",
        "details",
        "always",
        _parse_details,
        "always | debug | never",
        "When the heartbeat body carries 'details' (health+json: 'output'): always, only when "
        "app.debug, or never.",
        "debug",
    ),
    Setting(
        "DOCKERFLOW_HEARTBEAT_PAGE",
        "heartbeat_page",
        True,
        _parse_bool,
        "bool",
        "Serve /__heartbeat__ as an HTML status page to browsers (Accept preferring text/html), "
        "with each check's recent results, wherever DOCKERFLOW_HEARTBEAT_DETAILS shows the "
        "details; probes and scripts keep the JSON. false: browsers get the JSON too.",
        "false",
    ),
    Setting(
        "DOCKERFLOW_HEARTBEAT_CACHE_TTL",
        "cache_ttl",
        0.0,
        _parse_ttl,
        "float in [0, 86400]",
        "Seconds a passing heartbeat report is served again without running checks (0: off).",
        "5",
    ),
    Setting(
        "DOCKERFLOW_HEARTBEAT_CACHE_FAILED_TTL",
        "cache_failed_ttl",
        0.0,
        _parse_ttl,
        "float in [0, 86400]",
        "Seconds a heartbeat report with a failing check (a non-critical one, or one held back by "
        "flap damping, included) is served again without running checks (0: off).",
        "1",
    ),
    Setting(
        "DOCKERFLOW_SILENCED_CHECKS",
        "silenced_checks",
        (),
        _parse_id_list,
        "comma-separated message IDs",
        "Message IDs to ignore, added to the extension's silenced_checks argument.",
        "dockerflow.health.W001,myapp.health.W002",
    ),
    Setting(
        "DOCKERFLOW_NONCRITICAL_CHECKS",
        "noncritical_checks",
        (),
        _parse_name_list,
        "comma-separated check names",
        "Checks whose failure counts as a warning (status 'warning', \"critical\": false in the "
        "details), so the heartbeat passes while a non-essential dependency is down; for checks "
        "registered with critical=False there is no need to list them.",
        "check_redis_connected,search_cluster",
    ),
    Setting(
        "DOCKERFLOW_HEARTBEAT_GROUPS",
        "groups",
        (),
        _parse_groups,
        "GROUP:CHECK,CHECK;GROUP:... (a dict in app.config)",
        "Named groups of checks, added to those given in code (groups=): "
        "/__heartbeat__/<group> runs a group's checks only. Every check named must be "
        "registered when init_app runs, or init_app fails. Read in init_app only.",
        "ready:check_database_connected,check_redis_connected;live:",
    ),
    Setting(
        "DOCKERFLOW_ERROR_ENDPOINT",
        "error_endpoint",
        False,
        _parse_bool,
        "bool",
        "Serve /__error__, which logs an error and raises, to test error reporting.",
        "true",
    ),
    Setting(
        "DOCKERFLOW_REQUEST_ID_HEADER_NAME",
        "request_id_header",
        "X-Request-ID",
        _parse_header_name,
        "header name",
        "Request header that carries the request id; the id is echoed in the same header.",
        "X-Cloud-Trace-Context",
    ),
    Setting(
        "DOCKERFLOW_SUMMARY_LOG_QUERYSTRING",
        "summary_log_querystring",
        False,
        _parse_bool,
        "bool",
        "Add the query string to request.summary records as 'querystring'.",
        "true",
    ),
    Setting(
        "DOCKERFLOW_SUMMARY_LOG_DOCKERFLOW_ENDPOINTS",
        "summary_log_dockerflow_endpoints",
        True,
        _parse_summary_mode,
        "bool or debug",
        "How the Dockerflow endpoints (/__lbheartbeat__, /__heartbeat__, /__version__, ...) "
        "write request.summary: true, at INFO like any request (as python-dockerflow); debug, "
        "at DEBUG; false, not at all. An answer of 400 or more (a failing heartbeat) is always "
        "written at INFO.",
        "debug",
    ),
    Setting(
        "DOCKERFLOW_METRICS_ENDPOINT",
        "metrics_endpoint",
        False,
        _parse_bool,
        "bool",
        "Serve the Prometheus metrics at /__metrics__ (needs Dockerflow(app, metrics=True)); "
        "in multiprocess mode, those of every worker. Read in init_app only.",
        "true",
    ),
    Setting(
        "DOCKERFLOW_DRAIN_SECONDS",
        "drain_seconds",
        0.0,
        _parse_ttl,
        "float in [0, 86400]",
        "Seconds a process drains after SIGTERM before the server's own handler gets it: "
        "/__heartbeat__ answers 503 (dockerflow.health.E015) while requests are still served "
        "(0: off). Must stay below gunicorn's graceful_timeout. Read in init_app only.",
        "10",
    ),
    Setting(
        "DOCKERFLOW_STARTUP_GRACE_SECONDS",
        "startup_grace_seconds",
        0.0,
        _parse_ttl,
        "float in [0, 86400]",
        "Seconds after init_app during which a failing check that has not passed yet counts as "
        'a warning ("starting": true in the details), until every check has passed once '
        "(0: off). Read in init_app only.",
        "30",
    ),
)


@dataclass(frozen=True)
class Settings:
    """The parsed settings of one application."""

    check_timeout: float
    check_restart_after: float | None
    fail_level: int
    failed_status_code: int
    details: str
    heartbeat_page: bool
    cache_ttl: float
    cache_failed_ttl: float
    silenced_checks: tuple[str, ...]
    noncritical_checks: tuple[str, ...]
    #: DOCKERFLOW_HEARTBEAT_GROUPS: (group, check names) pairs.
    groups: Groups
    error_endpoint: bool
    request_id_header: str
    summary_log_querystring: bool
    #: True, False or "debug" (:data:`SUMMARY_DEBUG`).
    summary_log_dockerflow_endpoints: bool | str
    metrics_endpoint: bool
    drain_seconds: float
    startup_grace_seconds: float

    @functools.cached_property
    def request_id_environ_key(self) -> str:
        """The WSGI environ key of the request id header, e.g. ``HTTP_X_REQUEST_ID``."""
        return "HTTP_" + self.request_id_header.upper().replace("-", "_")


def load_settings(
    config: MutableMapping[str, Any], environ: Mapping[str, str] | None = None
) -> Settings:
    """Read every ``DOCKERFLOW_*`` key from ``config``, falling back to ``environ``, then default.

    Each parsed value is stored back with ``config.setdefault`` so the app's config shows what
    is in effect. An empty value (``KEY=`` in the environment, ``""`` or ``None`` in the config)
    means "not set", for every key: the next source applies. ``DOCKERFLOW_*`` keys that are not
    settings are logged as a warning naming the closest known key.

    :param config: the Flask app's config.
    :param environ: the environment; defaults to ``os.environ``.
    :raises ConfigurationError: naming the key and the bad value, if a value cannot be used.
    """
    environ = os.environ if environ is None else environ
    _warn_unknown_keys(config, environ)
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = setting.default
        # Compose and Kubernetes write empty values routinely: empty means not set.
        for source in (config, environ):
            given = source.get(setting.key)
            if not _is_empty(given):
                raw = given
                break
        try:
            parsed = setting.parse(raw)
        except ValueError as exc:
            raise ConfigurationError(f"{setting.key}={raw!r} is not valid: {exc}") from None
        config.setdefault(setting.key, parsed)
        values[setting.attr] = parsed
    return Settings(**values)


#: Keys that start with ``DOCKERFLOW_`` but are not settings of the extension, and are known.
_NOT_SETTINGS = frozenset({"DOCKERFLOW_TEST_POSTGRES_URL", "DOCKERFLOW_TEST_REDIS_URL"})


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _warn_unknown_keys(config: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    known = [setting.key for setting in SETTINGS]
    for where, source in (("app.config", config), ("the environment", environ)):
        for key in sorted(k for k in source if isinstance(k, str) and k.startswith(PREFIX)):
            if key in known or key in _NOT_SETTINGS:
                continue
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            logger.warning("%s in %s is not a Dockerflow setting%s", key, where, hint)
