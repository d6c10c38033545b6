"""Log lines per minute that probes write, for each value of DOCKERFLOW_SUMMARY_LOG_DOCKERFLOW_ENDPOINTS.

Run with ``.venv/bin/python benchmarks/probe_log_lines_bench.py`` from the repository root.

A minute of a 1 s probe period is simulated without sleeping: 60 rounds, each one
``GET /__heartbeat__`` (a readiness probe) and one ``GET /__lbheartbeat__`` (a liveness probe),
through Flask's test client. Logging is set up as docs/logging.rst shows (mozlog JSON on one
stream; ``request.summary`` and ``dockerflow`` at INFO, the root logger at WARNING), and the lines
written to the stream are counted by their ``Type``: every line an operator would pay to store.

Each setting is measured with a heartbeat that passes and with one that fails (a check returning
an error), and with ``request.summary`` at INFO (production) and at DEBUG (``debug`` mode's lines
shown).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import logging.config
from collections import Counter
from typing import Any

from flask import Flask

from dockerflow.checks import Error
from dockerflow.engine import ConfigurationError
from dockerflow.flask import Dockerflow

SETTING = "DOCKERFLOW_SUMMARY_LOG_DOCKERFLOW_ENDPOINTS"


def configure_logging(stream: io.StringIO, summary_level: str) -> None:
    handler = {
        "class": "logging.StreamHandler",
        "stream": stream,
        "formatter": "json",
        "filters": ["request_id"],
    }
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "json": {"()": "dockerflow.logging.JsonLogFormatter", "logger_name": "bench"}
            },
            "filters": {"request_id": {"()": "dockerflow.logging.RequestIdLogFilter"}},
            "handlers": {"console": handler},
            "loggers": {
                "request.summary": {
                    "handlers": ["console"],
                    "level": summary_level,
                    "propagate": False,
                },
                "dockerflow": {"handlers": ["console"], "level": "INFO", "propagate": False},
            },
            "root": {"handlers": ["console"], "level": "WARNING"},
        }
    )


def one_minute(setting: Any, failing: bool, summary_level: str, seconds: int) -> Counter[str]:
    """Return the lines written in ``seconds`` one-second probe rounds, counted by ``Type``."""
    stream = io.StringIO()
    configure_logging(stream, summary_level)
    app = Flask("bench")
    if setting is not None:
        app.config[SETTING] = setting
    ext = Dockerflow(app)
    ext.check(lambda: [Error("down", id="bench.E1")] if failing else [], name="dependency")
    client = app.test_client()
    try:
        for _ in range(seconds):
            client.get("/__heartbeat__")
            client.get("/__lbheartbeat__")
    finally:
        ext.close()
    return Counter(json.loads(line)["Type"] for line in stream.getvalue().splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=int, default=60, help="probe rounds (default 60)")
    args = parser.parse_args()
    print(f"{args.seconds} rounds of GET /__heartbeat__ + GET /__lbheartbeat__ (1 s period)")
    print(f"{'setting':<10} {'heartbeat':<9} {'summary':<8} {'lines':>5}  by Type")
    for setting in (None, False, "debug"):
        for failing in (False, True):
            for level in ("INFO", "DEBUG"):
                name = "(default)" if setting is None else str(setting).lower()
                verdict = "fails" if failing else "passes"
                try:
                    counts = one_minute(setting, failing, level, args.seconds)
                except ConfigurationError as exc:
                    print(f"{name:<10} {verdict:<9} {level:<8} {'-':>5}  refused: {exc}")
                    break
                detail = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items())) or "-"
                print(f"{name:<10} {verdict:<9} {level:<8} {sum(counts.values()):>5}  {detail}")
    logging.shutdown()


if __name__ == "__main__":
    main()
