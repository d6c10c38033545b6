"""The demo's own settings, read from ``DEMO_*`` environment variables with their types.

Flask's ``app.config.from_prefixed_env("DEMO")`` (Flask 2.1 and later) puts ``DEMO_<NAME>`` into
``app.config["<NAME>"]``, parsing each value as JSON where it parses: ``DEMO_SLOW_CHECK_SECONDS=2``
becomes the int ``2``, ``DEMO_SLOW_CHECK_CRITICAL=false`` the bool ``False``, and a value that is
not JSON (``DEMO_DATA_DIR=/var/lib/demo``) stays a string. :func:`load` then checks the type of
each setting, so that ``DEMO_SLOW_CHECK_CRITICAL=no`` stops the app at start-up with a message
naming the variable, instead of being taken as a truthy string.

``SLOW_CHECK_SECONDS``
    How long the ``slow_dependency`` check sleeps (a number >= 0; default 0.2). Its timeout is 1 s,
    so ``DEMO_SLOW_CHECK_SECONDS=2`` makes it time out.
``SLOW_CHECK_CRITICAL``
    Whether ``slow_dependency`` may fail the heartbeat (``true``/``false``; default ``true``).
    With ``false`` its failure counts as a warning and the heartbeat stays 200.
``DATA_DIR``
    Directory of the SQLite file (a string; default ``dockerflow-demo`` in the temporary
    directory).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping, MutableMapping
from typing import Any

PREFIX = "DEMO"

#: Each setting's default; the environment variable DEMO_<NAME> overrides it.
DEFAULTS: dict[str, Any] = {
    "SLOW_CHECK_SECONDS": 0.2,
    "SLOW_CHECK_CRITICAL": True,
    "DATA_DIR": os.path.join(tempfile.gettempdir(), "dockerflow-demo"),
}


def from_prefixed_env(config: Any, prefix: str, environ: Mapping[str, str] | None = None) -> None:
    """Load ``<prefix>_*`` environment variables into ``config`` as Flask 2.1+ does.

    Uses ``config.from_prefixed_env`` where Flask has it; on Flask 2.0 (which this library still
    supports) does the same for flat keys: the prefix dropped, the value parsed as JSON when it
    parses, else kept as a string. (Flask's nesting with ``__`` is left out.)

    :param config: a ``flask.Config``.
    :param prefix: the prefix, without the trailing underscore.
    :param environ: the environment to read (default ``os.environ``); Flask's own method reads
        ``os.environ`` only, so a different mapping always takes the fallback.
    """
    if environ is None and hasattr(config, "from_prefixed_env"):
        config.from_prefixed_env(prefix)
        return
    environ = os.environ if environ is None else environ
    start = f"{prefix}_"
    for key in sorted(environ):
        if not key.startswith(start):
            continue
        value: Any = environ[key]
        # Not JSON: the string itself, as Flask does.
        with contextlib.suppress(ValueError):
            value = json.loads(value)
        config[key[len(start) :]] = value


def load(config: MutableMapping[str, Any], environ: Mapping[str, str] | None = None) -> None:
    """Fill ``config`` with the demo's settings: defaults, then ``DEMO_*``; check their types.

    :param config: the app's ``flask.Config``.
    :param environ: the environment (default ``os.environ``).
    :raises ValueError: naming the variable and its value, if a setting has the wrong type.
    """
    for key, value in DEFAULTS.items():
        config.setdefault(key, value)
    from_prefixed_env(config, PREFIX, environ)

    seconds = config["SLOW_CHECK_SECONDS"]
    # bool is an int subclass: DEMO_SLOW_CHECK_SECONDS=true must not pass as 1 second.
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise ValueError(
            f"DEMO_SLOW_CHECK_SECONDS={seconds!r}: expected a number of seconds >= 0, such as 2 "
            "or 0.5"
        )
    config["SLOW_CHECK_SECONDS"] = float(seconds)

    critical = config["SLOW_CHECK_CRITICAL"]
    if not isinstance(critical, bool):
        raise ValueError(
            f"DEMO_SLOW_CHECK_CRITICAL={critical!r}: expected true or false (JSON, lower case)"
        )

    data_dir = config["DATA_DIR"]
    if not isinstance(data_dir, str) or not data_dir:
        # A directory named like a number (DEMO_DATA_DIR=2024) is parsed as JSON: quote it.
        raise ValueError(
            f"DEMO_DATA_DIR={data_dir!r}: expected a directory path; a name that reads as "
            "JSON (a number, true) must be quoted: DEMO_DATA_DIR='\"2024\"'"
        )


def database_url(data_dir: str) -> str:
    """Return the SQLAlchemy URL of the demo's SQLite database in ``data_dir``, creating it.

    :param data_dir: the ``DATA_DIR`` setting.
    :returns: a ``sqlite:///`` URL.
    """
    os.makedirs(data_dir, exist_ok=True)
    return f"sqlite:///{os.path.join(data_dir, 'demo.sqlite3')}"
