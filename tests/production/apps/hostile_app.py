"""A Flask app for the hostile-input tests: the Dockerflow views and a route logging hostile extras.

Served with ``gunicorn 'hostile_app:create_app()'`` (``--pythonpath`` this directory) and used
in-process through Flask's test client. Settings come from the environment:

* ``HOSTILE_APP_VERSION_DIR``: the directory whose ``version.json`` ``/__version__`` serves.

``/_hostile/log/<kind>`` logs one record on the ``hostile`` logger whose message or extras are
hard to encode (see :data:`LOG_KINDS`) and answers ``{"logged": kind}``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from flask import Flask, abort, jsonify

from dockerflow.flask import Dockerflow

#: The logger the hostile route writes to.
LOGGER_NAME = "hostile"

_CONTROL = "line\r\nforged: {}\x1b[2J\x00\x07\x7f\u2028\u2029 end"


class Unprintable:
    """An object whose ``repr()`` and ``str()`` both raise."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr\r\n\x1b[2J")

    __str__ = __repr__


class Lying:
    """An object whose ``repr()`` is not a str."""

    def __repr__(self) -> Any:
        return 42


def _self_containing() -> dict[str, Any]:
    loop: dict[str, Any] = {"name": "loop"}
    loop["self"] = loop
    items: list[Any] = [1]
    items.append(items)
    loop["list"] = items
    return loop


def _deep(depth: int) -> list[Any]:
    deep: list[Any] = []
    for _ in range(depth):
        deep = [deep]
    return deep


def _log_unencodable(logger: logging.Logger) -> None:
    logger.info(
        "unencodable extras",
        extra={
            "raw_bytes": bytes(range(256)),
            "a_set": {1, 2, 3},
            "unprintable": Unprintable(),
            "lying": Lying(),
            "surrogates": "\ud800\udfff\udc00",
            "not_numbers": [float("nan"), float("inf"), -float("inf")],
            "huge_int": 10**5000,
            "tuple_keys": {(1, 2): "x", None: 1, 2.5: "y"},
            "exotic": complex(1, 2),
        },
    )


def _log_recursive(logger: logging.Logger) -> None:
    logger.info("recursive extras", extra={"loop": _self_containing(), "deep": _deep(50_000)})


def _log_huge(logger: logging.Logger) -> None:
    logger.info(
        "x" * 3_000_000,
        extra={
            "big": _CONTROL * 200_000,
            "big_list": ["y" * 1000] * 2000,
            "big_key": {"k" * 100_000: "v"},
        },
    )


def _log_control(logger: logging.Logger) -> None:
    logger.warning(_CONTROL, extra={_CONTROL: _CONTROL, "nested": {"k": [_CONTROL]}})


def _log_bad_format(logger: logging.Logger) -> None:
    logger.info("%d and %s %s", "not a number", _CONTROL)


def _log_exception(logger: logging.Logger) -> None:
    try:
        raise ValueError(_CONTROL)
    except ValueError:
        logger.exception("caught %s", _CONTROL, extra={"unprintable": Unprintable()})


#: The kinds of hostile record ``/_hostile/log/<kind>`` writes.
LOG_KINDS: dict[str, Callable[[logging.Logger], None]] = {
    "unencodable": _log_unencodable,
    "recursive": _log_recursive,
    "huge": _log_huge,
    "control": _log_control,
    "bad_format": _log_bad_format,
    "exception": _log_exception,
}


def create_app(version_dir: str | None = None) -> Flask:
    """Build the app.

    :param version_dir: where ``version.json`` is; default ``$HOSTILE_APP_VERSION_DIR``.
    """
    app = Flask(__name__)
    app.config["DOCKERFLOW_SUMMARY_LOG_QUERYSTRING"] = True
    Dockerflow(app, version_path=version_dir or os.environ["HOSTILE_APP_VERSION_DIR"])
    logger = logging.getLogger(LOGGER_NAME)

    @app.get("/_hostile/log/<kind>")
    def log_hostile(kind: str) -> Any:
        write = LOG_KINDS.get(kind)
        if write is None:
            abort(404)
        write(logger)
        return jsonify(logged=kind)

    return app
