"""Settings read on use agree with init_app: an empty value means "not set", for every live key.

``load_settings`` (init_app) skips an empty value (``""``, blanks or ``None``) to the environment,
then the default; :class:`~dockerflow.flask._live.LiveSettings` reads the same keys again on use
and must do the same, whether the empty value was there at start-up or set later.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from dockerflow.flask import Dockerflow
from dockerflow.flask._config import SETTINGS, load_settings
from dockerflow.flask._live import LIVE_KEYS, LiveSettings

LIVE = [setting for setting in SETTINGS if setting.key in LIVE_KEYS]
EMPTY = ["", "  ", None]


def _expected(setting: Any, environ: dict[str, str]) -> Any:
    """What init_app makes of the key when it is not set in the config."""
    return getattr(load_settings({}, environ), setting.attr)


@pytest.mark.parametrize("empty", EMPTY, ids=["empty", "blank", "none"])
@pytest.mark.parametrize("from_env", [False, True], ids=["default", "environment"])
@pytest.mark.parametrize("setting", LIVE, ids=[s.key for s in LIVE])
def test_empty_value_set_after_start_up_means_not_set(
    setting: Any,
    from_env: bool,
    empty: str | None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {setting.key: setting.example} if from_env else {}
    for key in LIVE_KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    # Start from the example value in the config, so that "not set" differs from it.
    config: dict[str, Any] = {setting.key: setting.example}
    live = LiveSettings(config, load_settings(config, environ))
    config[setting.key] = empty

    with caplog.at_level(logging.ERROR, logger="dockerflow.flask"):
        value = live.get(setting.attr)

    assert value == _expected(setting, environ)
    # The settings' own loggers only: a daemon thread of an earlier test may still log.
    assert [r for r in caplog.records if r.name.startswith("dockerflow.flask")] == []


@pytest.mark.parametrize("empty", EMPTY, ids=["empty", "blank", "none"])
@pytest.mark.parametrize("from_env", [False, True], ids=["default", "environment"])
@pytest.mark.parametrize("setting", LIVE, ids=[s.key for s in LIVE])
def test_empty_value_at_start_up_means_not_set(
    setting: Any, from_env: bool, empty: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    environ = {setting.key: setting.example} if from_env else {}
    for key in LIVE_KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    config: dict[str, Any] = {setting.key: empty}
    live = LiveSettings(config, load_settings(config, environ))
    expected = _expected(setting, environ)
    assert live.get(setting.attr) == expected
    # Set to a value and back to empty: still "not set".
    config[setting.key] = setting.example
    live.get(setting.attr)
    config[setting.key] = empty
    assert live.get(setting.attr) == expected


def test_failed_status_code_emptied_at_run_time_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the app: the key emptied after start-up gives 500, the default, not 503."""
    monkeypatch.delenv("DOCKERFLOW_HEARTBEAT_FAILED_STATUS_CODE", raising=False)
    app = Flask(__name__, root_path=str(tmp_path))
    app.config["DOCKERFLOW_HEARTBEAT_FAILED_STATUS_CODE"] = 503
    dockerflow = Dockerflow(app)

    @dockerflow.check
    def broken() -> None:
        raise RuntimeError("down")

    client = app.test_client()
    assert client.get("/__heartbeat__").status_code == 503
    app.config["DOCKERFLOW_HEARTBEAT_FAILED_STATUS_CODE"] = ""
    with caplog.at_level(logging.ERROR, logger="dockerflow.flask"):
        assert client.get("/__heartbeat__").status_code == 500
    assert not [r for r in caplog.records if "not valid" in r.getMessage()]
    dockerflow.close()


def test_heartbeat_settings_are_kept_while_the_config_holds_the_same_values() -> None:
    config: dict[str, Any] = {}
    live = LiveSettings(config, load_settings(config, {}))
    first = live.for_heartbeat()
    assert live.for_heartbeat() is first  # nothing changed: nothing parsed again
    config["DOCKERFLOW_HEARTBEAT_DETAILS"] = "never"
    changed = live.for_heartbeat()
    assert (changed.details, first.details) == ("never", "always")
    assert live.for_heartbeat() is changed
    # A list edited in place is never taken as unchanged.
    config["DOCKERFLOW_SILENCED_CHECKS"] = ["x.E1"]
    assert live.for_heartbeat().silenced_checks == ("x.E1",)
    config["DOCKERFLOW_SILENCED_CHECKS"].append("x.E2")
    assert live.for_heartbeat().silenced_checks == ("x.E1", "x.E2")
    config["DOCKERFLOW_SILENCED_CHECKS"].clear()
    assert live.for_heartbeat().silenced_checks == ()
