"""Sphinx additions that build reference pages from the code, so the docs cannot drift from it.

The settings table of ``configuration.rst``
    Plain reStructuredText, generated into the file by ``settings_table.py`` (so it reads on a
    code host too). Here each row's target (``.. _DOCKERFLOW_...:``) becomes the ``:confval:``
    object of its setting, and a table that differs from the code is a build warning, which
    ``sphinx-build -W`` turns into an error.

``.. dockerflow-health-ids::``
    A table of the message IDs in :mod:`dockerflow.health`. The content gives the meaning of
    each constant, ``CONSTANT_NAME: meaning``; a constant without a meaning, or a meaning for a
    constant that does not exist, is a build warning.
"""

from __future__ import annotations

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


def _note_settings(app: Sphinx, doctree: nodes.document) -> None:
    """Make each settings table row the ``:confval:`` target of its setting."""
    import settings_table

    if app.env.docname != "configuration":
        return
    source = settings_table.CONFIGURATION
    try:
        stale = settings_table.committed(source.read_text()) != settings_table.render()
    except ValueError as exc:
        logger.warning("%s", exc, location=app.env.docname)
        return
    if stale:
        logger.warning(
            "the settings table differs from the code: run %s",
            settings_table.REGENERATE,
            location=app.env.docname,
        )
    domain: Any = app.env.get_domain("std")  # StandardDomain, whose note_object we call
    for key in settings_table.setting_keys():
        node_id = nodes.make_id(key)
        target = doctree.ids.get(node_id)
        if target is None:
            logger.warning("no row for %s in the settings table", key, location=app.env.docname)
            continue
        domain.note_object("confval", key, node_id, location=target)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("doctree-read", _note_settings)
    app.add_directive("dockerflow-health-ids", HealthIdsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
