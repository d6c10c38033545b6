"""The disk-space check on a real file system: values on every run, levels by threshold."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from dockerflow import health
from dockerflow.checks import CheckData, CheckMessage
from dockerflow.integrations import DiskSpaceCheck, disk_space_check


def split(result: list[Any]) -> tuple[dict[str, Any], list[tuple[str | None, int]]]:
    data = {item.name: item.value for item in result if isinstance(item, CheckData)}
    messages = [(m.id, m.level) for m in result if isinstance(m, CheckMessage)]
    return data, messages


def test_enough_space_gives_the_values_only(tmp_path: Path) -> None:
    data, messages = split(disk_space_check(tmp_path, warning_below=0.0, error_below=0.0)())
    usage = shutil.disk_usage(tmp_path)
    assert messages == []
    assert data["total_bytes"] == usage.total
    assert 0 < data["free_bytes"] <= usage.total
    assert 0 <= data["free_percent"] <= 100


def test_below_the_error_threshold_in_bytes_is_e026(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    result = disk_space_check(tmp_path, warning_below=None, error_below=free * 2)()
    _, messages = split(result)
    assert messages == [(health.ERROR_DISK_SPACE_LOW, health.ERROR)]
    (text,) = [m.msg for m in result if isinstance(m, CheckMessage)]
    assert text.startswith(f"Free space on {tmp_path}: ") and "below" in text


def test_below_the_warning_fraction_only_is_w002(tmp_path: Path) -> None:
    _, messages = split(disk_space_check(tmp_path, warning_below=1.0, error_below=None)())
    assert messages == [(health.WARNING_DISK_SPACE_LOW, health.WARNING)]


def test_below_both_reports_the_error_only(tmp_path: Path) -> None:
    _, messages = split(disk_space_check(tmp_path, warning_below=1.0, error_below=1.0)())
    assert messages == [(health.ERROR_DISK_SPACE_LOW, health.ERROR)]


def test_a_missing_path_is_e027(tmp_path: Path) -> None:
    _, messages = split(disk_space_check(tmp_path / "gone")())
    assert messages == [(health.ERROR_DISK_UNREADABLE, health.ERROR)]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"warning_below": -1}, ValueError),
        ({"warning_below": 1.5}, ValueError),
        ({"warning_below": "10%"}, TypeError),
        ({"warning_below": True}, TypeError),
        ({"warning_below": 0.05, "error_below": 0.10}, ValueError),
    ],
)
def test_bad_thresholds_are_refused_where_the_check_is_made(
    kwargs: dict[str, Any], error: type
) -> None:
    with pytest.raises(error, match="DiskSpaceCheck"):
        DiskSpaceCheck(".", **kwargs)
