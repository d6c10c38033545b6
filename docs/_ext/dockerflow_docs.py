"""Sphinx directives that build reference pages from the code, so the docs cannot drift from it.

``.. dockerflow-settings::``
    One ``confval`` entry per :data:`dockerflow.flask._config.SETTINGS` item (name, type,
    default, meaning), plus a summary table. The directive's content gives one example value per
    key, ``KEY: value`` as it would be written in the environment; each example is run through
    the setting's own parser, and a key without an example (or an example for a key that does
    not exist) is a build warning, which ``sphinx-build -W`` turns into an error.

``.. dockerflow-health-ids::``
    A table of the message IDs in :mod:`dockerflow.health`. The content gives the meaning of
    each constant, ``CONSTANT_NAME: meaning``; a constant without a meaning, or a meaning for a
    constant that does not exist, is a build warning.
"""

from __future__ import annotations

import re
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

_LEVEL_OF_PREFIX = {"C": "critical", "E": "error", "W": "warning", "I": "info", "D": "debug"}


def _pairs(directive: SphinxDirective) -> dict[str, str]:
    """Parse the directive content: ``NAME: text`` per entry; indented lines continue it."""
    pairs: dict[str, str] = {}
    current: str | None = None
    for line in directive.content:
        if not line.strip():
            continue
        if line[:1].isspace() and current is not None:
            pairs[current] += " " + line.strip()
            continue
        name, sep, text = line.partition(":")
        if not sep:
            logger.warning(
                "%s: expected 'NAME: text', got %r",
                directive.name,
                line,
                location=directive.get_location(),
            )
            continue
        current = name.strip()
        pairs[current] = text.strip()
    return pairs


def _check_names(directive: SphinxDirective, known: list[str], given: dict[str, str]) -> None:
    for name in known:
        if name not in given:
            logger.warning(
                "%s: %s is not documented; add a line for it",
                directive.name,
                name,
                location=directive.get_location(),
            )
    for name in given:
        if name not in known:
            logger.warning(
                "%s: %s does not exist in the code; remove its line",
                directive.name,
                name,
                location=directive.get_location(),
            )


def _id_order(message_id: str) -> tuple[int, str]:
    # Most severe first: E before W before I, then by number.
    code = message_id.rsplit(".", 1)[-1]
    order = list(_LEVEL_OF_PREFIX)
    prefix = code[:1]
    return (order.index(prefix) if prefix in order else len(order), code)


def _escape(text: str) -> str:
    """Escape ``text`` so that reST shows it as it is (help texts are plain text)."""
    return re.sub(r"([\\`*_|])", r"\\\1", text)


def _literal(value: Any) -> str:
    if isinstance(value, tuple) and not value:
        return "``()`` (none)"
    return f"``{value!r}``"


class SettingsDirective(SphinxDirective):
    """Render every ``DOCKERFLOW_*`` setting from ``SETTINGS``."""

    has_content = True

    def run(self) -> list[nodes.Node]:
        from dockerflow.flask._config import SETTINGS

        examples = _pairs(self)
        _check_names(self, [s.key for s in SETTINGS], examples)
        for setting in SETTINGS:
            example = examples.get(setting.key)
            if example is None:
                continue
            try:
                setting.parse(example)
            except ValueError as exc:
                logger.warning(
                    "dockerflow-settings: example %s=%r is rejected by the code: %s",
                    setting.key,
                    example,
                    exc,
                    location=self.get_location(),
                )

        lines = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 45 20 35",
            "",
            "   * - Setting",
            "     - Default",
            "     - Type",
        ]
        for setting in SETTINGS:
            lines += [
                f"   * - :confval:`{setting.key}`",
                f"     - {_literal(setting.default)}",
                f"     - {_escape(setting.kind)}",
            ]
        lines.append("")
        for setting in SETTINGS:
            example = examples.get(setting.key, "")
            lines += [
                f".. confval:: {setting.key}",
                f"   :type: ``{setting.kind}``",
                f"   :default: {_literal(setting.default)}",
                "",
                f"   {_escape(setting.help)}",
                "",
            ]
            if example:
                lines += [f"   Example: ``{setting.key}={example}``", ""]
        return self._parse(lines)

    def _parse(self, lines: list[str]) -> list[nodes.Node]:
        container = nodes.container()
        source = self.get_source_info()[0] or "<dockerflow-settings>"
        self.state.nested_parse(StringList(lines, source=source), self.content_offset, container)
        return list(container.children)


class HealthIdsDirective(SphinxDirective):
    """Render the message IDs of ``dockerflow.health`` with their meanings."""

    has_content = True

    def run(self) -> list[nodes.Node]:
        from dockerflow import health

        names = [name for name in health.__all__ if isinstance(getattr(health, name), str)]
        names.sort(key=lambda name: _id_order(getattr(health, name)))
        meanings = _pairs(self)
        _check_names(self, names, meanings)
        lines = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 25 8 27 40",
            "",
            "   * - ID",
            "     - Level",
            "     - Constant in :mod:`dockerflow.health`",
            "     - Meaning",
        ]
        for name in names:
            message_id = getattr(health, name)
            prefix = message_id.rsplit(".", 1)[-1][:1]
            lines += [
                f"   * - ``{message_id}``",
                f"     - {_LEVEL_OF_PREFIX.get(prefix, '?')}",
                f"     - ``{name}``",
                f"     - {meanings.get(name, '')}",
            ]
        container = nodes.container()
        source = self.get_source_info()[0] or "<dockerflow-health-ids>"
        self.state.nested_parse(StringList(lines, source=source), self.content_offset, container)
        self._add_targets(container, names)
        return list(container.children)

    def _add_targets(self, container: nodes.Element, names: list[str]) -> None:
        """Make each row the target of ``:data:`dockerflow.health.NAME```."""
        domain: Any = self.env.get_domain("py")  # PythonDomain, whose note_object we call
        bodies = list(container.findall(nodes.tbody))
        rows = [row for body in bodies for row in body.children if isinstance(row, nodes.row)]
        for name, row in zip(names, rows, strict=True):
            fullname = f"dockerflow.health.{name}"
            first_cell = row.children[0]
            first_cell["ids"].append(fullname)
            self.state.document.note_explicit_target(first_cell)
            domain.note_object(fullname, "data", fullname, location=first_cell)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("dockerflow-settings", SettingsDirective)
    app.add_directive("dockerflow-health-ids", HealthIdsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
