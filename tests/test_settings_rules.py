"""Settings: one rule for empty values, warnings for unknown keys, malformed lists rejected."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from dockerflow.engine import ConfigurationError
from dockerflow.flask._config import SETTINGS, load_settings


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
@pytest.mark.parametrize("empty", ["", "  ", None])
def test_an_empty_value_means_not_set_for_every_key(setting: Any, empty: Any) -> None:
    from_env = load_settings({}, {setting.key: "" if empty is None else empty})
    from_config = load_settings({setting.key: empty}, {})
    default = load_settings({}, {})
    assert from_env == from_config == default


def test_an_empty_config_value_falls_back_to_the_environment() -> None:
    settings = load_settings({"DOCKERFLOW_CHECK_TIMEOUT": ""}, {"DOCKERFLOW_CHECK_TIMEOUT": "5"})
    assert settings.check_timeout == 5.0


def test_unknown_keys_are_warned_about_with_the_closest_known_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="dockerflow.flask"):
        load_settings({"DOCKERFLOW_SILENCED_CHECK": "x.W1"}, {"DOCKERFLOW_CHECK_TIMOUT": "5"})
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "DOCKERFLOW_SILENCED_CHECK in app.config is not a Dockerflow setting; "
        "did you mean DOCKERFLOW_SILENCED_CHECKS?",
        "DOCKERFLOW_CHECK_TIMOUT in the environment is not a Dockerflow setting; "
        "did you mean DOCKERFLOW_CHECK_TIMEOUT?",
    ]


@pytest.mark.parametrize("value", [";;", "a,,b", ",a", "a b", "dockerflow.health.W001;x"])
def test_malformed_id_lists_are_rejected(value: str) -> None:
    with pytest.raises(ConfigurationError, match=r"DOCKERFLOW_SILENCED_CHECKS=.*not message IDs"):
        load_settings({}, {"DOCKERFLOW_SILENCED_CHECKS": value})


def test_well_formed_id_lists() -> None:
    environ = {"DOCKERFLOW_SILENCED_CHECKS": " dockerflow.health.W001 , my-app.E_2,"}
    settings = load_settings({}, environ)
    assert settings.silenced_checks == ("dockerflow.health.W001", "my-app.E_2")
