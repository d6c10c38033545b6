"""The settings table committed in docs/configuration.rst is the one the code generates."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from dockerflow.flask._config import SETTINGS, load_settings

SCRIPT = Path(__file__).resolve().parent.parent / "docs" / "_ext" / "settings_table.py"


@pytest.fixture(scope="module")
def table() -> ModuleType:
    # docs/_ext is not a package: load the script the way `make settings-table` runs it.
    spec = importlib.util.spec_from_file_location("settings_table", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("settings_table", module)
    spec.loader.exec_module(module)
    return module


def test_the_committed_table_is_the_generated_one(table: ModuleType) -> None:
    committed = table.committed(table.CONFIGURATION.read_text())
    assert committed == table.render(), (
        f"the settings table in {table.CONFIGURATION} differs from dockerflow.flask._config."
        f"SETTINGS; regenerate it with {table.REGENERATE} and commit the result"
    )


def test_the_table_renders_with_plain_docutils_one_row_per_setting(table: ModuleType) -> None:
    """What a code host shows: no Sphinx, every setting's key, type and default in its row."""
    # docutils comes with Sphinx (the dev extra); the min venv of `make test-min` has neither.
    docutils_core = pytest.importorskip("docutils.core")
    docutils_nodes = pytest.importorskip("docutils.nodes")
    doctree = docutils_core.publish_doctree(
        table.render(), settings_overrides={"report_level": 2, "halt_level": 2}
    )
    rows = [
        row
        for body in doctree.findall(docutils_nodes.tbody)
        for row in body.children
        if isinstance(row, docutils_nodes.row)
    ]
    cells = [[entry.astext().strip() for entry in row.children] for row in rows]
    assert [cell[0] for cell in cells] == [setting.key for setting in SETTINGS]
    for cell, setting in zip(cells, SETTINGS, strict=True):
        assert cell[1] == setting.kind
        assert cell[3].startswith(setting.help)
        assert cell[3].endswith(f"Example: {setting.key}={setting.example}")
    assert cells[0][2] == "3"  # DOCKERFLOW_CHECK_TIMEOUT's default, as written in the environment


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_each_example_is_accepted_and_changes_the_setting(setting: object) -> None:
    key, example, attr = setting.key, setting.example, setting.attr  # type: ignore[attr-defined]
    from_example = load_settings({}, {key: example})
    assert getattr(from_example, attr) != getattr(load_settings({}, {}), attr)


def test_check_mode_fails_on_a_stale_table_and_the_script_fixes_it(
    table: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "configuration.rst"
    stale = table.CONFIGURATION.read_text().replace("``X-Request-ID``", "``X-Old-ID``")
    copy.write_text(stale)
    monkeypatch.setattr(table, "CONFIGURATION", copy)

    assert table.main(["--check"]) == 1
    assert copy.read_text() == stale  # --check writes nothing
    assert table.main([]) == 0
    assert table.main(["--check"]) == 0
    assert "``X-Request-ID``" in copy.read_text()
    assert "X-Old-ID" not in copy.read_text()
