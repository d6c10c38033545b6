"""Properties of the mozlog formatter and the request ID sanitizer, over generated input."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dockerflow.logging import JsonLogFormatter, sanitize_request_id

ENVELOPE_KEYS = [
    "Timestamp",
    "Type",
    "Logger",
    "Hostname",
    "EnvVersion",
    "Severity",
    "Pid",
    "Fields",
]
ALLOWED_ID = re.compile(r"[A-Za-z0-9._:;+=/-]{1,128}")
FAST = settings(max_examples=200, deadline=None)

# Any attribute a fresh record has, and those logging adds later, cannot be an extra.
_TAKEN = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "logger_name",
    "taskName",
}


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def _self_containing(value: object) -> list[object]:
    loop: list[object] = [value]
    loop.append(loop)
    return loop


any_text = st.text(st.characters(exclude_categories=()))  # control characters, lone surrogates
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=0, max_value=9000).map(lambda n: 10**n),  # past str(int)'s limit too
    st.floats(),  # nan and infinities included
    any_text,
    st.binary(),
    st.complex_numbers(),
    st.datetimes(),
    st.sets(st.integers(), max_size=3),
    st.builds(object),
    st.builds(Unprintable),
)
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.one_of(any_text, st.integers(), st.none()), children, max_size=4),
        st.dictionaries(st.tuples(st.integers()), children, max_size=2),  # keys JSON refuses
        children.map(_self_containing),
    ),
    max_leaves=12,
)
extras = st.dictionaries(
    st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True).filter(lambda key: key not in _TAKEN),
    values,
    max_size=6,
)
args = st.one_of(st.just(()), st.tuples(values), st.tuples(values, values))


def _record(message: object, arguments: tuple[object, ...], extra: dict[str, Any]) -> Any:
    return logging.getLogger("prop").makeRecord(
        "prop", logging.WARNING, __file__, 1, message, arguments, None, extra=extra
    )


def _refuse(constant: str) -> None:
    raise AssertionError(f"non-standard JSON constant {constant}")


@FAST
@given(message=st.one_of(any_text, values), arguments=args, extra=extras)
def test_format_gives_one_line_of_strict_json(
    message: object, arguments: tuple[object, ...], extra: dict[str, Any]
) -> None:
    line = JsonLogFormatter(logger_name="prop").format(_record(message, arguments, extra))
    assert isinstance(line, str)
    # Printable ASCII only: no "\n", "\r", "\x1b" or any other control character.
    assert all(" " <= char <= "~" for char in line)
    out = json.loads(line, parse_constant=_refuse)
    assert list(out) == ENVELOPE_KEYS
    assert out["Logger"] == "prop"
    assert isinstance(out["Fields"], dict)
    assert set(extra) <= set(out["Fields"])


@FAST
@given(message=any_text, arguments=args, extra=extras)
def test_fast_path_agrees_with_careful_path(
    message: str, arguments: tuple[object, ...], extra: dict[str, Any]
) -> None:
    formatter = JsonLogFormatter()
    record = _record(message, arguments, extra)
    assert formatter.format(record) == formatter._format_carefully(record, "Dockerflow")


@FAST
@given(value=st.one_of(st.text(), st.binary(), st.none()))
def test_sanitized_id_is_the_input_or_none(value: str | bytes | None) -> None:
    result = sanitize_request_id(value)
    if result is not None:
        assert ALLOWED_ID.fullmatch(result)
        assert result == (value.decode("ascii") if isinstance(value, bytes) else value)


@FAST
@given(value=st.from_regex(ALLOWED_ID, fullmatch=True))
def test_allowed_ids_pass_unchanged(value: str) -> None:
    assert sanitize_request_id(value) == value
    assert sanitize_request_id(value.encode()) == value


@FAST
@given(
    safe=st.from_regex(r"[A-Za-z0-9-]{0,20}", fullmatch=True),
    bad=st.characters(exclude_characters="._:;+=/-").filter(
        lambda c: not c.isascii() or not c.isalnum()
    ),
)
def test_one_bad_character_rejects(safe: str, bad: str) -> None:
    assert sanitize_request_id(safe + bad + safe) is None
