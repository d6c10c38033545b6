"""The ``flask dockerflow`` command group."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import click
import flask
from flask.cli import with_appcontext

from .._errors import UnknownCheckError, UnknownGroupError, VersionFileError

#: Exit status of ``flask dockerflow heartbeat`` when the heartbeat passes.
EXIT_PASSED = 0
#: Exit status when the heartbeat fails (its level reaches ``DOCKERFLOW_HEARTBEAT_FAIL_LEVEL``).
EXIT_FAILED = 1
#: Exit status for a usage error (an unknown check name, no check left to run) or an app that
#: cannot be loaded or has no Dockerflow extension: click's and Flask's own usage status.
EXIT_USAGE = 2

#: The bodies ``flask dockerflow heartbeat --format`` prints: the Dockerflow report, or
#: ``application/health+json`` as ``/__heartbeat__`` serves it to a client that asks for it.
FORMATS = ("json", "health+json")

_HEARTBEAT_HELP = f"""Run the checks and print the report as one JSON document on stdout.

The report is the body of /__heartbeat__ with its details, in the Dockerflow format or, with
--format health+json, as application/health+json. Log records written while the checks run go
to stderr, so the output can be piped (for example into jq). No Prometheus metrics are recorded
unless --record-metrics is given: an exec probe must not write into a PROMETHEUS_MULTIPROC_DIR
set for the whole container. Exit status: {EXIT_PASSED} if the
heartbeat passes, {EXIT_FAILED} if it fails, {EXIT_USAGE} for a usage error (an unknown check
name or group, a selection that leaves no check, no app found, an app without the Dockerflow
extension).
An exception raised while creating the app ends with Flask's traceback and status 1. Usable as a
Docker HEALTHCHECK, which reserves status 2: write `flask dockerflow heartbeat || exit 1`.
"""


class CliExtension(Protocol):
    """What the commands use of the app's extension, found in ``app.extensions``.

    The extension imports this module to register the commands; this module does not import
    the extension.
    """

    def _cli_heartbeat(
        self,
        *,
        exclude: Iterable[str],
        only: Iterable[str] | None,
        health_json: bool,
        group: str | None = None,
        record_metrics: bool = False,
    ) -> tuple[dict[str, Any], bool]: ...

    def groups(self, app: flask.Flask | None = None) -> dict[str, list[str]]: ...

    def _cli_version(self) -> tuple[str, dict[str, Any] | None]: ...


class _AppError(click.ClickException):
    """An error in the app's set-up, reported with the usage status."""

    exit_code = EXIT_USAGE


@click.group("dockerflow", help="Dockerflow heartbeat and version.")
def dockerflow_cli() -> None:
    """The ``flask dockerflow`` command group."""


def _extension() -> CliExtension:
    ext: CliExtension | None = flask.current_app.extensions.get("dockerflow")
    if ext is None:
        raise _AppError("the Dockerflow extension is not initialised on this app")
    return ext


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send whatever is written to file descriptor 1 to descriptor 2 for the block.

    Logging handlers keep the stream they were given (``ext://sys.stdout`` in a mozlog config):
    only a redirection of the descriptor itself keeps their records off the JSON report.
    """
    try:
        saved = os.dup(1)
    except OSError:  # no descriptor 1 (a closed stdout): nothing to keep clean
        yield
        return
    sys.stdout.flush()
    try:
        os.dup2(2, 1)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):  # a stream closed by the block
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


@dockerflow_cli.command("heartbeat", help=_HEARTBEAT_HELP)
@click.option(
    "--check",
    "only",
    multiple=True,
    metavar="NAME[,NAME...]",
    help="Run only these checks (repeatable), like ?check= on /__heartbeat__.",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="NAME[,NAME...]",
    help="Leave these checks out (repeatable), like ?exclude= on /__heartbeat__.",
)
@click.option(
    "--group",
    metavar="GROUP",
    default=None,
    help="Run only the checks of this named group, like /__heartbeat__/GROUP.",
)
@click.option(
    "--record-metrics",
    is_flag=True,
    default=False,
    help="Record this heartbeat in the extension's Prometheus metrics (off by default).",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default=FORMATS[0],
    show_default=True,
    help="The body to print: the Dockerflow report, or application/health+json.",
)
@with_appcontext
def heartbeat_command(
    only: tuple[str, ...],
    exclude: tuple[str, ...],
    group: str | None,
    record_metrics: bool,
    output_format: str,
) -> None:
    """Run the checks and print the report as JSON; the exit status tells pass or fail."""
    ext = _extension()
    selected = _names(only) if only else None
    if selected == []:
        raise click.UsageError("--check names no check")
    with _stdout_to_stderr():
        try:
            body, failed = ext._cli_heartbeat(
                exclude=_names(exclude),
                only=selected,
                health_json=output_format == "health+json",
                group=group,
                record_metrics=record_metrics,
            )
        except UnknownGroupError:
            known = ", ".join(ext.groups()) or "none"
            raise click.UsageError(f"unknown group: {group} (the groups are: {known})") from None
        except UnknownCheckError as exc:
            raise click.UsageError(f"unknown check: {exc}") from None
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    click.echo(json.dumps(body, sort_keys=True))
    sys.exit(EXIT_FAILED if failed else EXIT_PASSED)


@dockerflow_cli.command("version")
@with_appcontext
def version_command() -> None:
    """Print the version object from version.json; exit 1 if it is missing or malformed."""
    try:
        directory, version = _extension()._cli_version()
    except VersionFileError as exc:
        raise click.ClickException(str(exc)) from None
    if version is None:
        path = os.path.join(directory, "version.json")
        raise click.ClickException(f"version.json not found: looked for {path}")
    click.echo(json.dumps(version, sort_keys=True))


def _names(values: tuple[str, ...]) -> list[str]:
    return [name.strip() for value in values for name in value.split(",") if name.strip()]
