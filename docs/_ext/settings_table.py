"""Write the settings table of ``docs/configuration.rst`` from the code.

The table (setting, type, default, meaning, example) is plain reStructuredText, committed in
the file between two marker comments, so that it reads on a code host as well as in the built
docs. It is generated from :data:`dockerflow.flask._config.SETTINGS`; a test fails while the
committed table differs from what this script writes. Run it after changing a setting::

    make settings-table          # or: python docs/_ext/settings_table.py
    python docs/_ext/settings_table.py --check   # exit status 1 if the table is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: The file that holds the table.
CONFIGURATION = ROOT / "docs" / "configuration.rst"
BEGIN = ".. BEGIN SETTINGS TABLE"
END = ".. END SETTINGS TABLE"
#: How to bring a stale table up to date; quoted by the test and ``--check``.
REGENERATE = "make settings-table (or: python docs/_ext/settings_table.py)"


def _settings() -> tuple[Any, ...]:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # run as a script from a checkout
    from dockerflow.flask._config import SETTINGS

    return SETTINGS


def setting_keys() -> list[str]:
    """Return the key of every setting, in the table's order."""
    return [setting.key for setting in _settings()]


def environment_value(value: Any) -> str:
    """Return ``value`` as it would be written in the environment (``3.0`` → ``3``)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _escape(text: str) -> str:
    """Escape ``text`` so that reST shows it as it is (help texts are plain text)."""
    for char in "\\`*_|":
        text = text.replace(char, "\\" + char)
    return text


def _default(value: Any) -> str:
    # An unset default or an empty list has no literal to show; say so in words.
    if value is None:
        return "(unset)"
    written = environment_value(value)
    return f"``{written}``" if written else "(none)"


def render() -> str:
    """Return the block between the markers, markers included, ending with a newline."""
    lines = [
        f"{BEGIN}: generated from dockerflow.flask._config.SETTINGS by",
        f"   {REGENERATE}; do not edit by hand.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 30 18 8 44",
        "",
        "   * - Setting",
        "     - Type",
        "     - Default",
        "     - Meaning",
    ]
    for setting in _settings():
        lines += [
            # The target gives the row an anchor; the docs' Sphinx extension makes it the
            # :confval: target of the setting.
            f"   * - .. _{setting.key}:",
            "",
            f"       ``{setting.key}``",
            f"     - {_escape(setting.kind)}",
            f"     - {_default(setting.default)}",
            f"     - {_escape(setting.help)} Example: ``{setting.key}={setting.example}``",
        ]
    lines += ["", END]
    return "\n".join(lines) + "\n"


def committed(text: str) -> str:
    """Return the block between the markers of ``text``, markers included.

    :raises ValueError: if the markers are missing or out of order.
    """
    start = text.find(BEGIN)
    end = text.find(END, start if start >= 0 else 0)
    if start < 0 or end < 0:
        raise ValueError(f"{CONFIGURATION} has no '{BEGIN}' ... '{END}' block")
    return text[start : end + len(END)] + "\n"


def main(argv: list[str] | None = None) -> int:
    """Rewrite the table in ``docs/configuration.rst``, or with ``--check`` compare it.

    :returns: 0, or 1 with ``--check`` when the committed table is stale.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report a stale table")
    args = parser.parse_args(argv)
    text = CONFIGURATION.read_text()
    old, new = committed(text), render()
    if old == new:
        return 0
    if args.check:
        print(f"{CONFIGURATION} is stale: run {REGENERATE}", file=sys.stderr)
        return 1
    CONFIGURATION.write_text(text.replace(old, new, 1))
    print(f"rewrote the settings table in {CONFIGURATION}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
