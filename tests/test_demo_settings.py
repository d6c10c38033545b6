"""The demo's DEMO_* settings: Flask's from_prefixed_env types, checked at start-up."""

from __future__ import annotations

import re
from typing import Any

import flask
import pytest

from examples.demo import settings


def _load(environ: dict[str, str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    settings.load(config, environ)
    return config


def test_defaults_without_environment() -> None:
    config = _load({})
    assert config["SLOW_CHECK_SECONDS"] == 0.2
    assert config["SLOW_CHECK_CRITICAL"] is True
    assert config["DATA_DIR"] == settings.DEFAULTS["DATA_DIR"]


def test_values_are_parsed_as_json_else_kept_as_strings() -> None:
    config = _load(
        {
            "DEMO_SLOW_CHECK_SECONDS": "2",
            "DEMO_SLOW_CHECK_CRITICAL": "false",
            "DEMO_DATA_DIR": "/var/lib/demo",
            "NOT_DEMO_SLOW_CHECK_SECONDS": "9",
        }
    )
    assert config["SLOW_CHECK_SECONDS"] == 2.0
    assert isinstance(config["SLOW_CHECK_SECONDS"], float)
    assert config["SLOW_CHECK_CRITICAL"] is False
    assert config["DATA_DIR"] == "/var/lib/demo"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("DEMO_SLOW_CHECK_SECONDS", "two", "DEMO_SLOW_CHECK_SECONDS='two': expected a number"),
        ("DEMO_SLOW_CHECK_SECONDS", "true", "DEMO_SLOW_CHECK_SECONDS=True: expected a number"),
        ("DEMO_SLOW_CHECK_SECONDS", "-1", "DEMO_SLOW_CHECK_SECONDS=-1: expected a number"),
        ("DEMO_SLOW_CHECK_CRITICAL", "no", "DEMO_SLOW_CHECK_CRITICAL='no': expected true or false"),
        ("DEMO_SLOW_CHECK_CRITICAL", "1", "DEMO_SLOW_CHECK_CRITICAL=1: expected true or false"),
        ("DEMO_DATA_DIR", "2024", "DEMO_DATA_DIR=2024: expected a directory path"),
    ],
)
def test_a_wrong_type_names_the_variable(key: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        _load({key: value})


def test_create_app_refuses_a_wrong_type(monkeypatch: pytest.MonkeyPatch) -> None:
    from examples.demo.app import create_app

    monkeypatch.setenv("DEMO_SLOW_CHECK_CRITICAL", "yes")
    with pytest.raises(ValueError, match="DEMO_SLOW_CHECK_CRITICAL='yes'"):
        create_app()


@pytest.mark.skipif(
    not hasattr(flask.Config, "from_prefixed_env"), reason="from_prefixed_env: Flask 2.1+"
)
def test_fallback_reads_as_flasks_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Flask 2.0 the demo parses DEMO_* itself; the result is what Flask 2.1+ gives."""
    environ = {
        "DEMO_SLOW_CHECK_SECONDS": "0.5",
        "DEMO_SLOW_CHECK_CRITICAL": "true",
        "DEMO_DATA_DIR": "/srv/data",
        "DEMO_LIST": "[1, 2]",
        "DEMO_BROKEN_JSON": "{nope",
    }
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    flasks = flask.Config(".")
    settings.from_prefixed_env(flasks, "DEMO")  # environ=None: Flask's method
    ours = flask.Config(".")
    settings.from_prefixed_env(ours, "DEMO", environ)
    assert {k: ours[k] for k in ours if k in flasks} == {k: flasks[k] for k in flasks}
    assert ours["SLOW_CHECK_SECONDS"] == 0.5 and ours["LIST"] == [1, 2]
    assert ours["BROKEN_JSON"] == "{nope"
