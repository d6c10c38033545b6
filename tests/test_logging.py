from __future__ import annotations

import datetime
import io
import json
import logging
import logging.config
import os
import socket
import subprocess
import sys
import traceback
import uuid
from typing import Any

import pytest

from dockerflow import _logjson
from dockerflow._logjson import MAX_FIELD_CHARS
from dockerflow.logging import (
    JsonLogFormatter,
    MozlogFormatter,
    MozlogHandler,
    RequestIdLogFilter,
    get_or_generate_request_id,
    request_id_context,
    safer_format_traceback,
    sanitize_request_id,
)

EVIL = "evil\r\nFAKE LOG LINE \x1b[31mred\x1b[0m"


def make_record(
    msg: object = "hello",
    args: Any = (),
    level: int = logging.INFO,
    name: str = "test.logger",
    exc_info: Any = None,
    **extra: object,
) -> logging.LogRecord:
    return logging.getLogger(name).makeRecord(
        name, level, __file__, 42, msg, args, exc_info, extra=extra or None
    )


def parse(line: str) -> dict[str, Any]:
    """Check that ``line`` is one line of strict JSON and return it decoded."""
    assert isinstance(line, str)
    assert all(" " <= char <= "~" for char in line), "only printable ASCII"

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    decoded: dict[str, Any] = json.loads(line, parse_constant=refuse)
    return decoded


def fields_of(record: logging.LogRecord, formatter: JsonLogFormatter | None = None) -> Any:
    return parse((formatter or JsonLogFormatter()).format(record))["Fields"]


@pytest.fixture
def formatter() -> JsonLogFormatter:
    return JsonLogFormatter(logger_name="test")


def raise_evil() -> None:
    raise ValueError(EVIL)


def exc_info_of(function: Any) -> Any:
    try:
        function()
    except Exception:
        return sys.exc_info()
    raise AssertionError("did not raise")


# --- the envelope ---


def test_envelope(formatter: JsonLogFormatter) -> None:
    record = make_record("hello %s", ("world",))
    out = parse(formatter.format(record))
    assert list(out) == [
        "Timestamp",
        "Type",
        "Logger",
        "Hostname",
        "EnvVersion",
        "Severity",
        "Pid",
        "Fields",
    ]
    assert out["Timestamp"] == int(record.created * 1e9)
    assert isinstance(out["Timestamp"], int)
    assert out["Type"] == "test.logger"
    assert out["Logger"] == "test"
    assert out["Hostname"] == socket.gethostname()
    assert out["EnvVersion"] == "2.0"
    assert out["Severity"] == 6
    assert out["Pid"] == os.getpid()
    assert out["Fields"] == {"msg": "hello world"}


@pytest.mark.parametrize(
    ("level", "severity"),
    [
        (logging.CRITICAL, 2),
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (logging.INFO, 6),
        (logging.DEBUG, 7),
        (25, 7),
        (5, 7),
    ],
)
def test_severity(formatter: JsonLogFormatter, level: int, severity: int) -> None:
    assert parse(formatter.format(make_record(level=level)))["Severity"] == severity


def test_default_logger_name_and_record_attribute() -> None:
    assert parse(JsonLogFormatter().format(make_record()))["Logger"] == "Dockerflow"
    record = make_record()
    record.logger_name = "set-by-a-handler"
    assert parse(JsonLogFormatter(logger_name="x").format(record))["Logger"] == "set-by-a-handler"


def test_logger_name_argument_wins(formatter: JsonLogFormatter) -> None:
    record = make_record()
    record.logger_name = "on-record"
    assert parse(formatter.format(record, "explicit"))["Logger"] == "explicit"


def test_hostname_can_be_changed(formatter: JsonLogFormatter) -> None:
    formatter.format(make_record())
    formatter.hostname = "web-7"
    assert formatter.hostname == "web-7"
    assert parse(formatter.format(make_record()))["Hostname"] == "web-7"


def test_process_none(formatter: JsonLogFormatter) -> None:
    record = make_record()
    record.process = None
    assert parse(formatter.format(record))["Pid"] is None


def test_alias_and_no_deprecation_warning() -> None:
    # filterwarnings=error turns any warning here into a failure.
    assert MozlogFormatter is JsonLogFormatter
    MozlogFormatter()
    JsonLogFormatter(fmt="%(message)s", datefmt="%H", style="%", logger_name="x")


@pytest.mark.parametrize(
    ("config", "logger_name"),
    [
        ({"()": "dockerflow.logging.JsonLogFormatter", "logger_name": "myapp"}, "myapp"),
        ({"class": "dockerflow.logging.JsonLogFormatter", "format": "%(message)s"}, "Dockerflow"),
    ],
)
def test_formatter_from_dict_config(config: dict[str, str], logger_name: str) -> None:
    # The step of logging.config.dictConfig that builds formatters, without its global effects.
    formatter = logging.config.DictConfigurator({"version": 1}).configure_formatter(config)
    assert isinstance(formatter, JsonLogFormatter)
    assert parse(formatter.format(make_record()))["Logger"] == logger_name


DICT_CONFIG_SCRIPT = """
import logging, logging.config
logging.config.dictConfig({
    "version": 1,
    "formatters": {
        "json": {"()": "dockerflow.logging.JsonLogFormatter", "logger_name": "myapp"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json",
                    "stream": "ext://sys.stdout"},
    },
    "root": {"handlers": ["console"], "level": "INFO"},
})
logging.getLogger("request.summary").info("configured %d", 1, extra={"path": "/"})
"""


def test_dict_config_end_to_end() -> None:
    # In a child process: dictConfig replaces the handlers of the whole process.
    result = subprocess.run(
        [sys.executable, "-c", DICT_CONFIG_SCRIPT], capture_output=True, text=True, check=True
    )
    out = parse(result.stdout.removesuffix("\n"))
    assert out["Logger"] == "myapp"
    assert out["Type"] == "request.summary"
    assert out["Fields"] == {"path": "/", "msg": "configured 1"}


# --- Fields ---


def test_extras_in_order_then_msg(formatter: JsonLogFormatter) -> None:
    record = make_record("done", path="/a", code=200, t=1.5, nested={"a": [1, None, True]})
    assert list(fields_of(record, formatter).items()) == [
        ("path", "/a"),
        ("code", 200),
        ("t", 1.5),
        ("nested", {"a": [1, None, True]}),
        ("msg", "done"),
    ]


def test_standard_attributes_left_out(formatter: JsonLogFormatter) -> None:
    record = make_record("hi %s", ("there",), rid="r1")
    # Another handler's formatter ran first, adding message and asctime to the record.
    logging.Formatter("%(asctime)s %(message)s").format(record)
    record.logger_name = "x"
    record.taskName = "task"
    assert fields_of(record, formatter) == {"rid": "r1", "msg": "hi there"}


def test_attribute_set_before_logrecord_init_is_an_extra(formatter: JsonLogFormatter) -> None:
    class EarlyRecord(logging.LogRecord):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.tenant = "acme"
            super().__init__(*args, **kwargs)

    record = EarlyRecord("n", logging.INFO, __file__, 1, "m", (), None)
    record.late = 1
    assert fields_of(record, formatter) == {"tenant": "acme", "late": 1, "msg": "m"}


def test_excluded_attributes_can_be_narrowed() -> None:
    class WithLine(JsonLogFormatter):
        EXCLUDED_LOGRECORD_ATTRS = JsonLogFormatter.EXCLUDED_LOGRECORD_ATTRS - {"lineno"}

    assert fields_of(make_record("m"), WithLine()) == {"lineno": 42, "msg": "m"}
    assert fields_of(make_record("m", a=1), WithLine()) == {"lineno": 42, "a": 1, "msg": "m"}


def test_excluded_attributes_are_read_per_record() -> None:
    # python-dockerflow users extend the class's set, sometimes after formatters exist.
    formatter = JsonLogFormatter()
    assert fields_of(make_record("m", secret="s", a=1), formatter) == {
        "secret": "s",
        "a": 1,
        "msg": "m",
    }
    JsonLogFormatter.EXCLUDED_LOGRECORD_ATTRS.add("secret")
    try:
        assert fields_of(make_record("m", secret="s", a=1), formatter) == {"a": 1, "msg": "m"}
        assert fields_of(make_record("m", secret="s"), JsonLogFormatter()) == {"msg": "m"}
    finally:
        JsonLogFormatter.EXCLUDED_LOGRECORD_ATTRS.discard("secret")
    assert fields_of(make_record("m", secret="s"), formatter) == {"secret": "s", "msg": "m"}


def test_excluded_attributes_narrowed_in_place() -> None:
    formatter = JsonLogFormatter()
    JsonLogFormatter.EXCLUDED_LOGRECORD_ATTRS.discard("lineno")
    try:
        assert fields_of(make_record("m"), formatter) == {"lineno": 42, "msg": "m"}
    finally:
        JsonLogFormatter.EXCLUDED_LOGRECORD_ATTRS.add("lineno")
    assert fields_of(make_record("m"), formatter) == {"msg": "m"}


def test_is_value_jsonlike() -> None:
    formatter = JsonLogFormatter()
    assert formatter.is_value_jsonlike('{"spam": "eggs"}')
    assert not formatter.is_value_jsonlike('{"spam": "eggs"')
    assert not formatter.is_value_jsonlike('"spam": "eggs"}')


def test_is_value_jsonlike_override_is_used() -> None:
    class KeepAll(JsonLogFormatter):
        def is_value_jsonlike(self, value: str) -> bool:
            return False

    assert fields_of(make_record("{}"), KeepAll()) == {"msg": "{}"}
    assert fields_of(make_record("{}", a=1), KeepAll()) == {"a": 1, "msg": "{}"}


@pytest.mark.parametrize("message", ["", '{"already": "json"}', "{}"])
def test_msg_left_out(formatter: JsonLogFormatter, message: str) -> None:
    assert fields_of(make_record(message), formatter) == {}
    assert fields_of(make_record(message, path="/"), formatter) == {"path": "/"}


@pytest.mark.parametrize("message", ["{not closed", "not opened}", " {} ", "{"])
def test_msg_kept_when_not_json_like(formatter: JsonLogFormatter, message: str) -> None:
    assert fields_of(make_record(message), formatter) == {"msg": message}


def test_non_str_message_object(formatter: JsonLogFormatter) -> None:
    assert fields_of(make_record(12345), formatter) == {"msg": "12345"}
    assert fields_of(make_record({"k": 1}), formatter) == {}  # str() of a dict looks like JSON


def test_control_characters_in_message_are_escaped(formatter: JsonLogFormatter) -> None:
    line = formatter.format(make_record(EVIL + "\x00\x7f\u2028é"))
    assert "\\r\\n" in line
    assert "\\u001b[31m" in line
    assert "\\u2028" in line and "\\u00e9" in line
    assert parse(line)["Fields"]["msg"] == EVIL + "\x00\x7f\u2028é"


# --- exceptions ---


def test_exception_gives_error_and_safe_traceback(formatter: JsonLogFormatter) -> None:
    exc_info = exc_info_of(raise_evil)
    line = formatter.format(make_record("failed", level=logging.ERROR, exc_info=exc_info))
    for raw in ("\r", "\n", "\x1b"):
        assert raw not in line
    fields = parse(line)["Fields"]
    assert fields["msg"] == "failed"
    assert fields["error"] == repr(exc_info[1])
    traceback_text = fields["traceback"]
    assert traceback_text.startswith("Uncaught exception:\n")
    assert f'File "{__file__}", line' in traceback_text
    assert "in raise_evil\n    raise ValueError(EVIL)\n" in traceback_text
    assert traceback_text.endswith(f"{ValueError!r}\n{exc_info[1]!r}\n")
    # The exception's text is there only as repr(): no line breaks or escapes of its own.
    assert EVIL not in traceback_text and "\x1b" not in traceback_text
    assert traceback_text.count("\n") == len(traceback_text.splitlines())


def test_logger_exception_through_handler() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("test.exception")
    handler = MozlogHandler(stream, name="svc")
    logger.addHandler(handler)
    try:
        try:
            raise_evil()
        except ValueError:
            logger.exception("oops %s", "there")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    out = parse(lines[0])
    assert out["Severity"] == 3
    assert out["Fields"]["msg"] == "oops there"
    assert "ValueError" in out["Fields"]["error"]


def test_empty_exc_info_adds_nothing(formatter: JsonLogFormatter) -> None:
    record = make_record("no exception", exc_info=(None, None, None))
    assert fields_of(record, formatter) == {"msg": "no exception"}


def test_repeated_frames_are_summarised(formatter: JsonLogFormatter) -> None:
    def recurse(depth: int) -> None:
        if depth == 0:
            raise RuntimeError("bottom")
        recurse(depth - 1)

    exc_info = exc_info_of(lambda: recurse(50))
    text = fields_of(make_record(exc_info=exc_info), formatter)["traceback"]
    # 50 calls from the same line, then the raise: as the traceback module shows them.
    assert text.count("in recurse\n") == 3 + 1
    assert "  [Previous line repeated 47 more times]\n" in text
    assert "  [Previous line repeated 47 more times]\n" in "".join(traceback.format_tb(exc_info[2]))
    assert text.endswith("RuntimeError('bottom')\n")


def test_safer_format_traceback_without_traceback() -> None:
    exc = KeyError("k")
    assert safer_format_traceback(KeyError, exc, None) == (
        f"Uncaught exception:\n{KeyError!r}\n{exc!r}\n"
    )


def test_exception_with_broken_repr(formatter: JsonLogFormatter) -> None:
    class Nasty(Exception):
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    def fail() -> None:
        raise Nasty()

    fields = fields_of(make_record(exc_info=exc_info_of(fail)), formatter)
    assert fields["error"] == "<unrepresentable test_exception_with_broken_repr.<locals>.Nasty>"
    assert fields["traceback"].endswith(f"{fields['error']}\n")


def test_frames_without_source(formatter: JsonLogFormatter) -> None:
    code = compile("def generated():\n    raise KeyError('k')\n", "<generated>", "exec")
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    text = fields_of(make_record(exc_info=exc_info_of(namespace["generated"])))["traceback"]
    assert '  File "<generated>", line 2, in generated\n' + repr(KeyError) in text


def test_unformattable_traceback(formatter: JsonLogFormatter) -> None:
    exc = ValueError("v")
    fields = fields_of(make_record("", exc_info=(ValueError, exc, "not a traceback")))
    assert "msg" not in fields
    assert fields["error"] == "ValueError('v')"
    assert fields["traceback"].startswith("<traceback unavailable: AttributeError(")


def test_exception_record_another_formatter_saw_first(formatter: JsonLogFormatter) -> None:
    record = make_record("m %s", ("x",), exc_info=exc_info_of(raise_evil), path="/")
    logging.Formatter("%(message)s").format(record)  # adds message and exc_text
    fields = fields_of(record, formatter)
    assert list(fields) == ["path", "msg", "error", "traceback"]


# --- values JSON cannot hold ---


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("boom")


def test_unencodable_values_become_repr(formatter: JsonLogFormatter) -> None:
    when = datetime.datetime(2024, 5, 6, 7, 8, 9)
    thing = object()
    record = make_record(
        "m",
        thing=thing,
        raw=b"\x00\xff",
        tags={3},
        when=when,
        bad=BadRepr(),
        inside=[thing, (1, 2), {"b": b"x"}],
    )
    fields = fields_of(record, formatter)
    assert fields["thing"] == repr(thing)
    assert fields["raw"] == "b'\\x00\\xff'"
    assert fields["tags"] == "{3}"
    assert fields["when"] == repr(when)
    assert fields["bad"] == "<unrepresentable BadRepr>"
    assert fields["inside"] == [repr(thing), [1, 2], {"b": "b'x'"}]


def test_container_that_fails_while_read(formatter: JsonLogFormatter) -> None:
    class Broken(dict[str, int]):
        def items(self) -> Any:
            raise RuntimeError("no items")

        def __repr__(self) -> str:
            return "Broken()"

    fields = fields_of(make_record(broken=Broken(a=1), fine=[1]), formatter)
    assert fields == {"broken": "Broken()", "fine": [1], "msg": "hello"}


def test_nan_and_infinity_become_strings(formatter: JsonLogFormatter) -> None:
    record = make_record(n=float("nan"), i=float("inf"), j=[float("-inf")], ok=1.5)
    assert fields_of(record, formatter) == {
        "n": "nan",
        "i": "inf",
        "j": ["-inf"],
        "ok": 1.5,
        "msg": "hello",
    }


def test_int_too_long_to_print(formatter: JsonLogFormatter) -> None:
    huge = 10**5000
    fields = fields_of(make_record(huge=huge, fine=2**100, keyed={huge: 1}), formatter)
    assert fields["huge"] == f"<int of {huge.bit_length()} bits>"
    assert fields["fine"] == 2**100
    assert fields["keyed"] == {f"<int of {huge.bit_length()} bits>": 1}


def test_non_str_keys(formatter: JsonLogFormatter) -> None:
    mixed = {2: "int", None: "none", (1, 2): "tuple", 1.5: "float", True: "bool", "s": "str"}
    assert fields_of(make_record(mixed=mixed), formatter)["mixed"] == {
        "2": "int",
        "null": "none",
        "(1, 2)": "tuple",
        "1.5": "float",
        "true": "bool",
        "s": "str",
    }
    # Keys JSON converts itself stay on the fast path.
    assert fields_of(make_record(m={2: "a", False: "b"}), formatter)["m"] == {
        "2": "a",
        "false": "b",
    }


def test_recursive_structures(formatter: JsonLogFormatter) -> None:
    loop: dict[str, Any] = {"name": "loop"}
    loop["self"] = loop
    ring: list[Any] = [1]
    ring.append(ring)
    shared = [1, 2]
    fields = fields_of(make_record(loop=loop, ring=ring, shared={"a": shared, "b": shared}))
    assert fields["loop"] == {"name": "loop", "self": "<recursive dict>"}
    assert fields["ring"] == [1, "<recursive list>"]
    assert fields["shared"] == {"a": [1, 2], "b": [1, 2]}  # twice is not a cycle
    assert fields["msg"] == "hello"


def test_deep_nesting(formatter: JsonLogFormatter) -> None:
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    fields = fields_of(make_record(deep=deep), formatter)
    level = fields["deep"]
    depth = 0
    while isinstance(level, list):
        level, depth = level[0], depth + 1
    assert level == "<list nested too deeply>"
    assert depth == 64


def test_huge_string_is_truncated(formatter: JsonLogFormatter) -> None:
    body = "x" * 10_000_000
    line = formatter.format(make_record("m", body=body, small="kept"))
    assert len(line) < MAX_FIELD_CHARS + 1_000
    fields = parse(line)["Fields"]
    marker = "...[truncated, 10000000 characters in all]"
    assert fields["body"] == "x" * MAX_FIELD_CHARS + marker
    assert fields["small"] == "kept"
    assert fields["msg"] == "m"


def test_huge_message_is_truncated(formatter: JsonLogFormatter) -> None:
    for record in (make_record("y" * 100_000), make_record("y" * 100_000, extra=1)):
        msg = fields_of(record, formatter)["msg"]
        assert msg == "y" * MAX_FIELD_CHARS + "...[truncated, 100000 characters in all]"


def test_huge_container_becomes_truncated_text(formatter: JsonLogFormatter) -> None:
    many = list(range(100_000))
    fields = fields_of(make_record(many=many, nested={"s": "z" * 100_000}), formatter)
    assert isinstance(fields["many"], str)
    assert fields["many"].startswith("[0, 1, 2, ")
    assert fields["many"].endswith(" characters in all]")
    assert len(fields["many"]) < MAX_FIELD_CHARS + 100
    assert isinstance(fields["nested"], str)


def test_long_escaped_string_under_the_limit_is_kept(formatter: JsonLogFormatter) -> None:
    # Over the limit once escaped, under it in characters: kept whole.
    text = "\x01" * 20_000
    assert fields_of(make_record(ctl=text), formatter)["ctl"] == text


# --- messages that cannot be formatted, records that are broken ---


def test_bad_percent_args(formatter: JsonLogFormatter) -> None:
    fields = fields_of(make_record("value %d and %s", ("x",), path="/"), formatter)
    assert fields["path"] == "/"
    assert fields["msg"] == "value %d and %s"
    assert fields["args"] == "('x',)"
    assert fields["format_error"].startswith("TypeError(")


def test_message_with_broken_str(formatter: JsonLogFormatter) -> None:
    class NoStr:
        def __str__(self) -> str:
            raise RuntimeError("no str")

    fields = fields_of(make_record(NoStr()), formatter)
    assert fields["msg"].startswith("<test_logging.test_message_with_broken_str.<locals>.NoStr")
    assert fields["format_error"] == "RuntimeError('no str')"


def test_get_message_returning_non_str(formatter: JsonLogFormatter) -> None:
    class Odd(logging.LogRecord):
        def getMessage(self) -> Any:
            return ["not", "a", "str"]

    record = Odd("n", logging.INFO, __file__, 1, "m", (), None)
    assert fields_of(record, formatter) == {"msg": ["not", "a", "str"]}


def test_broken_record_still_gives_a_line(formatter: JsonLogFormatter) -> None:
    record = make_record("m")
    record.created = "not a number"  # type: ignore[assignment]
    out = parse(formatter.format(record))
    assert out["Type"] == "test.logger"
    assert out["Severity"] == 3
    assert out["Fields"]["msg"] == "log record could not be formatted"
    assert out["Fields"]["error"].startswith("TypeError(")
    assert isinstance(out["Timestamp"], int)


def test_record_without_name(formatter: JsonLogFormatter) -> None:
    record = make_record("m")
    del record.name
    out = parse(formatter.format(record))
    assert out["Type"] is None
    assert out["Fields"]["error"].startswith("AttributeError(")


def test_unhashable_name(formatter: JsonLogFormatter) -> None:
    record = make_record("m")
    record.name = ["a", "list"]  # type: ignore[assignment]
    out = parse(formatter.format(record))
    assert out["Type"] == ["a", "list"]
    assert out["Fields"] == {"msg": "m"}


def test_envelope_cache_is_bounded(formatter: JsonLogFormatter) -> None:
    for index in range(600):
        assert parse(formatter.format(make_record(name=f"n{index}")))["Type"] == f"n{index}"
    assert len(formatter._heads) <= 256


def test_encoder_without_c_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    encode_chunks = _logjson._make_encode_chunks()
    assert "".join(encode_chunks({"a": [1, "é", object]}, 0)) == (
        f'{{"a": [1, "\\u00e9", "{object!r}"]}}'
    )
    with pytest.raises(ValueError):
        encode_chunks(float("nan"), 0)


def test_convert_record_override() -> None:
    class Tagged(JsonLogFormatter):
        def convert_record(self, record: logging.LogRecord) -> dict[str, object]:
            out = super().convert_record(record)
            fields = out["Fields"]
            assert isinstance(fields, dict)
            fields["tag"] = {1: float("nan")}
            out["Extra"] = object
            return out

    out = parse(Tagged(logger_name="t").format(make_record("m", a=1)))
    assert out["Logger"] == "t"
    assert out["Fields"] == {"a": 1, "msg": "m", "tag": {"1": "nan"}}
    assert out["Extra"] == repr(object)


# --- MozlogHandler ---


def test_handler_writes_lines_with_its_name() -> None:
    stream = io.StringIO()
    handler = MozlogHandler(stream, name="svc")
    record = make_record("one", path="/")
    handler.handle(record)
    handler.handle(make_record("two"))
    lines = stream.getvalue().split("\n")
    assert lines[2] == ""
    first, second = parse(lines[0]), parse(lines[1])
    assert first["Logger"] == second["Logger"] == "svc"
    assert first["Fields"] == {"path": "/", "msg": "one"}
    assert second["Fields"] == {"msg": "two"}
    # As in python-dockerflow: the name is set on the record, for handlers that come later.
    assert record.logger_name == "svc"


def test_handler_name_wins_over_record_attribute() -> None:
    stream = io.StringIO()
    record = make_record()
    record.logger_name = "elsewhere"
    MozlogHandler(stream, name="svc").handle(record)
    assert parse(stream.getvalue().removesuffix("\n"))["Logger"] == "svc"
    assert record.logger_name == "svc"


def test_handler_name_wins_over_formatter_name() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("test.handler.precedence")
    handler = MozlogHandler(stream, name="from-handler")
    handler.setFormatter(JsonLogFormatter(logger_name="from-formatter"))
    logger.addHandler(handler)
    try:
        logger.warning("hey")
    finally:
        logger.removeHandler(handler)
    assert parse(stream.getvalue().removesuffix("\n"))["Logger"] == "from-handler"


def test_handler_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    handler = MozlogHandler()
    assert handler.stream is sys.stdout
    handler.handle(make_record("to stdout"))
    out = parse(capsys.readouterr().out.removesuffix("\n"))
    assert out["Logger"] == "Dockerflow"
    assert out["Fields"] == {"msg": "to stdout"}


def test_handler_with_other_formatters() -> None:
    class Tagged(JsonLogFormatter):
        def convert_record(self, record: logging.LogRecord) -> dict[str, object]:
            return {"Logger": record.__dict__.get("logger_name"), "msg": record.getMessage()}

    stream = io.StringIO()
    handler = MozlogHandler(stream, name="svc")
    record = make_record("plain")

    handler.setFormatter(logging.Formatter("%(logger_name)s: %(message)s"))
    handler.handle(record)
    handler.setFormatter(Tagged())
    handler.handle(record)

    lines = stream.getvalue().splitlines()
    assert lines[0] == "svc: plain"
    assert json.loads(lines[1]) == {"Logger": "svc", "msg": "plain"}


# --- request IDs ---


def test_request_id_filter() -> None:
    record = make_record()
    request_filter = RequestIdLogFilter()
    assert request_filter.filter(record) is True
    assert record.rid is None
    token = request_id_context.set("abc-123")
    try:
        assert request_filter.filter(record) is True
        assert record.rid == "abc-123"
    finally:
        request_id_context.reset(token)


def test_request_id_reaches_fields() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("test.rid")
    handler = MozlogHandler(stream, name="svc")
    handler.addFilter(RequestIdLogFilter())
    logger.addHandler(handler)
    token = request_id_context.set("rid-1")
    try:
        logger.warning("hello", extra={"path": "/x"})
    finally:
        request_id_context.reset(token)
        logger.removeHandler(handler)
    assert parse(stream.getvalue().removesuffix("\n"))["Fields"] == {
        "path": "/x",
        "rid": "rid-1",
        "msg": "hello",
    }


@pytest.mark.parametrize(
    "value",
    [
        str(uuid.uuid4()),
        uuid.uuid4().hex,
        "0123456789abcdef",
        "Root=1-5759e988-bd862e3fe1be46a994272793",
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "105445aa7843bc8bf206b12000100000/1;o=1",
        "dGhpcyBpcyBiYXNlNjQ+Lw==",
        "svc:req_42.a",
        "a",
        "x" * 128,
    ],
)
def test_sanitize_accepts(value: str) -> None:
    assert sanitize_request_id(value) == value
    assert sanitize_request_id(value.encode()) == value


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        b"",
        "x" * 129,
        "abc\r\ndef",
        "abc\n",
        "abc\x00",
        b"abc\x00",
        "\x1b[31m",
        "has space",
        "tab\there",
        'quote"d',
        "<script>",
        "ünïcode",
        "\uff21\uff22\uff23",  # fullwidth ABC
        "٣",
        b"\xff\xfe",
        "caf\u00e9".encode(),
        12345,
    ],
)
def test_sanitize_rejects(value: Any) -> None:
    assert sanitize_request_id(value) is None


def test_sanitize_max_length() -> None:
    assert sanitize_request_id("abcd", max_length=4) == "abcd"
    assert sanitize_request_id("abcde", max_length=4) is None
    assert sanitize_request_id(bytearray(b"ab")) == "ab"
    with pytest.raises(ValueError, match="at least 1"):
        sanitize_request_id("a", max_length=0)


def test_get_or_generate_request_id() -> None:
    assert get_or_generate_request_id({"X-Request-ID": "abc"}) == "abc"
    assert get_or_generate_request_id({"x-request-id": "abc"}) == "abc"
    assert get_or_generate_request_id({"X-REQUEST-ID": "abc"}) == "abc"
    assert get_or_generate_request_id({"X-Trace": "t-1"}, header_name="x-trace") == "t-1"
    for headers in ({}, {"X-Request-ID": ""}, {"X-Request-ID": "bad\r\nid"}, {"Other": "abc"}):
        generated = get_or_generate_request_id(headers)
        assert str(uuid.UUID(generated)) == generated
    assert get_or_generate_request_id({}) != get_or_generate_request_id({})


def test_get_or_generate_request_id_with_werkzeug_headers() -> None:
    datastructures = pytest.importorskip("werkzeug.datastructures")
    headers = datastructures.Headers([("x-REQUEST-id", "from-werkzeug")])
    assert get_or_generate_request_id(headers) == "from-werkzeug"
