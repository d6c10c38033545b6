"""The query string of ``/__heartbeat__``: which checks to run, read from bytes nobody vetted.

Whatever a client sends, reading it either succeeds or raises :class:`BadQueryError`, whose
message the view answers with a 400; an error message repeats at most
:data:`MAX_ECHOED_NAMES` names of at most :data:`MAX_ECHOED_NAME_CHARS` characters each.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

import flask

#: Query parameter of ``/__heartbeat__`` naming checks to leave out, comma-separated.
EXCLUDE_PARAM = "exclude"
#: Query parameter of ``/__heartbeat__`` naming the only checks to run, comma-separated.
ONLY_PARAM = "check"
#: The most unknown check names an error message repeats; the others are counted.
MAX_ECHOED_NAMES = 10
#: The most characters of one unknown check name an error message repeats.
MAX_ECHOED_NAME_CHARS = 64


class BadQueryError(ValueError):
    """The query string of a heartbeat cannot be used; the message says why."""


@dataclass(frozen=True)
class Selection:
    """The checks a heartbeat's query string asks for."""

    #: Names of checks to leave out.
    exclude: tuple[str, ...]
    #: Names of the only checks to run; ``None``: every check.
    only: tuple[str, ...] | None


#: The selection of a heartbeat without a query string: every check.
EVERY_CHECK = Selection((), None)


def read_selection(request: flask.Request) -> Selection:
    """Return the checks that ``?check=`` and ``?exclude=`` of ``request`` select.

    Repeated parameters are merged: ``?check=a&check=b`` is ``?check=a,b``.

    :param request: the heartbeat's request.
    :returns: the names given, not yet compared with the registered checks.
    :raises BadQueryError: if the query string is not UTF-8, or ``?check=`` names no check.
    """
    raw = request.query_string
    if not raw:
        return EVERY_CHECK  # what probes send: nothing to parse
    try:
        # WSGI servers pass the query's raw bytes on; Werkzeug >= 2.3 raises on invalid UTF-8
        # when request.args is first read, older versions replace it: one 400 for every version.
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadQueryError(
            f"the query string is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start}): percent-encode check names as UTF-8"
        ) from None
    args = request.args
    only = tuple(split_names(args.getlist(ONLY_PARAM))) if ONLY_PARAM in args else None
    if only == ():
        raise BadQueryError(f"?{ONLY_PARAM}= names no check")
    return Selection(tuple(split_names(args.getlist(EXCLUDE_PARAM))), only)


def split_names(values: Iterable[str]) -> list[str]:
    """Return the names in comma-separated ``values``, blanks dropped."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def echo_names(names: Collection[str]) -> str:
    """Return ``names`` for an error message, bounded whatever a client sent.

    :param names: the names to repeat.
    :returns: the first :data:`MAX_ECHOED_NAMES` names in sorted order, comma-separated, each
        cut to :data:`MAX_ECHOED_NAME_CHARS` characters (``...`` marks a cut), then how many
        were left out (``"a, b and 9998 more"``).
    """
    ordered = sorted(names)
    shown = [
        name if len(name) <= MAX_ECHOED_NAME_CHARS else f"{name[:MAX_ECHOED_NAME_CHARS]}..."
        for name in ordered[:MAX_ECHOED_NAMES]
    ]
    left_out = len(ordered) - len(shown)
    return ", ".join(shown) + (f" and {left_out} more" if left_out else "")
