"""The ``flask dockerflow`` command group."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click
import flask
from flask.cli import with_appcontext

if TYPE_CHECKING:
    from ._extension import Dockerflow


@click.group("dockerflow", help="Dockerflow heartbeat and version.")
def dockerflow_cli() -> None:
    """The ``flask dockerflow`` command group."""


def _extension() -> Dockerflow:
    ext = flask.current_app.extensions.get("dockerflow")
    if ext is None:
        raise click.ClickException("the Dockerflow extension is not initialised on this app")
    return ext  # type: ignore[no-any-return]


@dockerflow_cli.command("heartbeat")
@with_appcontext
def heartbeat_command() -> None:
    """Run every check, print the report as JSON; exit 1 if the heartbeat fails.

    Usable as a Docker ``HEALTHCHECK``.
    """
    ext = _extension()
    report = ext.run_checks()
    click.echo(json.dumps(report.as_dict(), sort_keys=True))
    if report.level >= ext._state().settings.fail_level:
        sys.exit(1)


@dockerflow_cli.command("version")
@with_appcontext
def version_command() -> None:
    """Print the version object from version.json; exit 1 if there is none."""
    ext = _extension()
    version = ext._version_callback(ext.version_path or ext._state().version_path)
    if version is None:
        raise click.ClickException("version.json not found")
    click.echo(json.dumps(version, sort_keys=True))
