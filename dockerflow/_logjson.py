"""Turning log record fields into JSON text that never fails and stays bounded.

The fast path hands a whole dict to the C JSON encoder, with :func:`safe_repr` as the fallback
for values it does not know. When that raises (a cycle, NaN, a tuple key, an int too long to
print, nesting deeper than the interpreter allows) or the text is long enough that some field
may be over :data:`MAX_FIELD_CHARS`, each field is converted on its own by
:func:`_to_jsonable`, which cannot meet any of those cases. Both paths give the same text for a
dict the fast path accepts, so which one ran never shows in the output.
"""

from __future__ import annotations

import json
import linecache
import math
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import cast

MAX_FIELD_CHARS = 65_536
"""Longest text kept for one field, in characters before JSON escaping.

A longer string, anywhere in a field, is cut to this many characters and a marker that gives
the full length is appended; a list or dict whose JSON is longer becomes its JSON text, cut
the same way. Escaping can make the written field up to 12 times longer (a character outside
the Basic Multilingual Plane is written as two ``\\uXXXX`` escapes).
"""

MAX_DEPTH = 64
"""Containers nested deeper than this are replaced by a placeholder (slow path only)."""


def may_nest_too_deep(text: str) -> bool:
    """Return whether JSON ``text`` may nest containers deeper than :data:`MAX_DEPTH`.

    The C encoder takes deep nesting until its own recursion limit, which differs between
    Python versions (Python 3.13 encodes thousands of levels where 3.12 raises), so the depth
    bound is checked on its output: text with no more than :data:`MAX_DEPTH` brackets cannot
    nest deeper. Brackets inside strings are counted too, which only sends more text to the
    careful path.

    :param text: JSON text from the fast path.
    :returns: ``True`` if the text must be made again with the depth bound applied.
    """
    return text.count("[") + text.count("{") > MAX_DEPTH


encode_str = json.encoder.encode_basestring_ascii
"""Quote and escape a ``str`` as a JSON string literal, all in ASCII (C speed)."""

# Consecutive identical frames past this many are summarised, as the traceback module does.
_REPEATED_FRAMES_SHOWN = 3


def truncate(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    """Return ``text`` cut to ``limit`` characters, with a marker if anything was cut.

    :param text: any string.
    :param limit: the most characters of ``text`` to keep.
    :returns: ``text`` itself when short enough, else its start and a marker such as
        ``...[truncated, 10485760 characters in all]``.
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[truncated, {len(text)} characters in all]"


def safe_repr(value: object) -> str:
    """Return ``repr(value)``, cut to :data:`MAX_FIELD_CHARS`; never raise.

    :param value: any object, including one whose ``__repr__`` is broken.
    :returns: the representation, or ``<unrepresentable TypeName>`` if ``repr`` raised.
    """
    try:
        text = repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__qualname__}>"
    return truncate(text)


def _make_encode_chunks() -> Callable[[object, int], Sequence[str]]:
    """Return the fast encoder: ``encode(value, 0)`` gives JSON text in pieces, or raises.

    It raises where the slow path has an answer: on NaN and infinities (strict JSON parsers
    reject them), on a structure that contains itself (found, without bookkeeping, when the
    recursion limit is hit), on keys JSON has no form for, and on ints too long to print.

    The C encoder is made once and called directly: it keeps no state between calls (no cycle
    markers), so threads share it, and it skips the per-call set-up of ``JSONEncoder.encode``.
    """
    make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_c_encoder is None:  # an interpreter without the _json accelerator
        encode = json.JSONEncoder(default=safe_repr, allow_nan=False, check_circular=False).encode
        return lambda value, _indent_level: (encode(value),)
    c_encoder = make_c_encoder(None, safe_repr, encode_str, None, ": ", ", ", False, False, False)
    return cast("Callable[[object, int], Sequence[str]]", c_encoder)


encode_chunks = _make_encode_chunks()


def encode_fast(value: object) -> str:
    """Encode ``value`` as one line of JSON text, raising where :func:`encode_value` would not.

    :param value: any object; one JSON cannot hold becomes its :func:`safe_repr`.
    :returns: the JSON text.
    :raises ValueError: on NaN, infinities and ints too long to print.
    :raises RecursionError: on a structure that contains itself, or one nested too deeply.
    :raises TypeError: on a dict key JSON has no form for.
    """
    return "".join(encode_chunks(value, 0))


def encode_value(value: object) -> str:
    """Encode one field value as JSON text within the field bound; never raise.

    :param value: any object.
    :returns: JSON text: the value itself when JSON can hold it, else a string standing for it.
    """
    try:
        text = encode_fast(_to_jsonable(value, 0, set()))
    except Exception:  # a broken container subclass, or one changed while being read
        return encode_str(safe_repr(value))
    if len(text) > MAX_FIELD_CHARS and not isinstance(value, str):
        # Strings were already cut by _to_jsonable; what is long here is a container.
        return encode_str(truncate(text))
    return text


def encode_fields(fields: dict[str, object]) -> str:
    """Encode a dict of fields as one JSON object on one line; never raise.

    :param fields: field names to values of any type.
    :returns: JSON text of an object with one member per field, each within the field bound.
    """
    try:
        text = encode_fast(fields)
    except Exception:
        return encode_fields_one_by_one(fields)
    if len(text) > MAX_FIELD_CHARS or may_nest_too_deep(text):
        # Only a field-by-field look can tell whether one of them is over a bound.
        return encode_fields_one_by_one(fields)
    return text


def encode_fields_one_by_one(fields: dict[str, object]) -> str:
    """Encode a dict of fields member by member, each made safe and bounded; never raise.

    :param fields: field names to values of any type.
    :returns: JSON text of an object with one member per field.
    """
    members = [f"{encode_str(_key_text(key))}: {encode_value(v)}" for key, v in fields.items()]
    return "{" + ", ".join(members) + "}"


def _to_jsonable(value: object, depth: int, open_containers: set[int]) -> object:
    """Return a copy of ``value`` that the encoder takes without error or unbounded text.

    ``open_containers`` holds the ids of the containers being converted on the way down to
    ``value``; meeting one again means the structure refers to itself. A container reached
    twice by different paths is not a cycle and is converted each time.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return truncate(value)
    if isinstance(value, int):
        return value if _int_prints(value) else f"<int of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else float.__repr__(value)
    if isinstance(value, (dict, list, tuple)):
        kind = type(value).__name__
        if depth >= MAX_DEPTH:
            return f"<{kind} nested too deeply>"
        marker = id(value)
        if marker in open_containers:
            return f"<recursive {kind}>"
        open_containers.add(marker)
        try:
            if isinstance(value, dict):
                return {
                    _key_text(key): _to_jsonable(item, depth + 1, open_containers)
                    for key, item in value.items()
                }
            return [_to_jsonable(item, depth + 1, open_containers) for item in value]
        finally:
            open_containers.discard(marker)
    return safe_repr(value)


def _key_text(key: object) -> str:
    """Return the member name JSON would give ``key``, or its repr where JSON gives none."""
    if isinstance(key, str):
        return truncate(key)
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return int.__repr__(key) if _int_prints(key) else f"<int of {key.bit_length()} bits>"
    if isinstance(key, float):
        return float.__repr__(key)
    return safe_repr(key)


def _int_prints(value: int) -> bool:
    # Past sys.get_int_max_str_digits() (4300 digits by default) str(int) raises ValueError.
    try:
        int.__repr__(value)
    except ValueError:
        return False
    return True


def format_traceback(
    exc_type: type[BaseException] | None,
    exc_value: BaseException | None,
    tb: TracebackType | None,
) -> str:
    """Format an exception for a log field so that no text from the exception is raw.

    Frames are laid out as :func:`traceback.format_tb` lays them out (file, line, function,
    source line), without the column markers (``^^^^``) of Python 3.11 and later, which cost
    a parse of each source line. The exception type and value follow as their ``repr()``, so
    a message carrying attacker-controlled text (line breaks, terminal escapes) is escaped.

    :param exc_type: the exception class, as in ``sys.exc_info()``.
    :param exc_value: the exception.
    :param tb: its traceback.
    :returns: the traceback text, one line per frame entry, ending with a newline.
    """
    lines = ["Uncaught exception:\n"]
    checked_files: set[str] = set()
    last_frame: tuple[str, int, str] | None = None
    repeats = 0
    while tb is not None:
        code = tb.tb_frame.f_code
        filename, lineno, name = code.co_filename, tb.tb_lineno, code.co_name
        if (filename, lineno, name) == last_frame:
            repeats += 1
            if repeats >= _REPEATED_FRAMES_SHOWN:
                tb = tb.tb_next
                continue
        else:
            _note_repeats(lines, repeats)
            last_frame, repeats = (filename, lineno, name), 0
        lines.append(f'  File "{filename}", line {lineno}, in {name}\n')
        if filename not in checked_files:
            # Reload a source file edited since it was cached, as the traceback module does.
            checked_files.add(filename)
            linecache.checkcache(filename)
        source = linecache.getline(filename, lineno or 0, tb.tb_frame.f_globals).strip()
        if source:
            lines.append(f"    {source}\n")
        tb = tb.tb_next
    _note_repeats(lines, repeats)
    lines.append(f"{safe_repr(exc_type)}\n{safe_repr(exc_value)}\n")
    return "".join(lines)


def _note_repeats(lines: list[str], repeats: int) -> None:
    hidden = repeats - _REPEATED_FRAMES_SHOWN + 1
    if hidden > 0:
        plural = "s" if hidden > 1 else ""
        lines.append(f"  [Previous line repeated {hidden} more time{plural}]\n")
