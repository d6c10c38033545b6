"""The per-request work kept cheap without changing what it gives: request ids, the summary
record's caller information and fields, settings changed after start-up, excluded attributes
changed in place, Accept negotiation and heartbeat signals.
"""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from dockerflow.flask import Dockerflow
from dockerflow.flask._extension import _SUMMARY_SITE
from dockerflow.flask._health_json import wants_media_type
from dockerflow.flask._records import CallSite, log_record
from dockerflow.flask._request_ids import RequestIds
from dockerflow.flask.signals import heartbeat_passed
from dockerflow.health_json import MEDIA_TYPE
from dockerflow.logging import JsonLogFormatter


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = Flask(__name__, root_path=str(tmp_path))
    app.add_url_rule("/", "hello", lambda: "hello")
    dockerflow = Dockerflow(app)
    yield app
    dockerflow.close()


@pytest.fixture
def summary_lines() -> Iterator[Callable[[logging.Formatter], io.StringIO]]:
    """Route request.summary to a stream with the given formatter; return the stream."""
    logger = logging.getLogger("request.summary")
    saved = (logger.handlers[:], logger.level, logger.propagate)

    def install(formatter: logging.Formatter) -> io.StringIO:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
        return stream

    yield install
    logger.handlers[:], logger.level, logger.propagate = saved


# -- request ids ------------------------------------------------------------------------------


def test_new_request_ids_are_version_4_uuids_all_different() -> None:
    ids = RequestIds()
    made = [ids.new() for _ in range(2000)]
    assert len(set(made)) == len(made)
    for rid in made[:50]:
        parsed = uuid.UUID(rid)
        assert str(parsed) == rid
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_two_generators_in_one_process_differ() -> None:
    assert RequestIds().new() != RequestIds().new()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_makes_other_ids_than_its_parent() -> None:
    ids = RequestIds()
    ids.new()
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns when a process with threads forks (pytest-timeout's, say).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, ",".join(ids.new() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split(",")
    os.waitpid(pid, 0)
    parent = [ids.new() for _ in range(3)]
    # Without seeding again, the child would go on with the very sequence of its parent.
    assert len(child) == 3
    assert not set(child) & set(parent)


def test_a_request_without_an_id_gets_a_new_one_each_time(app: Flask) -> None:
    client = app.test_client()
    first = client.get("/").headers["X-Request-ID"]
    second = client.get("/").headers["X-Request-ID"]
    assert first != second
    assert uuid.UUID(first).version == 4


# -- the summary record -----------------------------------------------------------------------


def test_summary_record_names_the_hook_that_writes_it(
    app: Flask, summary_lines: Callable[[logging.Formatter], io.StringIO]
) -> None:
    stream = summary_lines(
        logging.Formatter("%(pathname)s|%(filename)s|%(module)s|%(lineno)d|%(funcName)s")
    )
    app.test_client().get("/")
    pathname, filename, module, lineno, func = stream.getvalue().strip().split("|")
    import dockerflow.flask._extension as extension

    assert pathname == extension.__file__
    assert (filename, module, func) == ("_extension.py", "_extension", "_after_request")
    # The line of the call that writes the record, as a logger.info() there would give.
    line = Path(pathname).read_text().splitlines()[int(lineno) - 1]
    assert "log_record(" in line
    assert int(lineno) == _SUMMARY_SITE.lineno


def test_summary_record_still_mozlog_with_every_field(
    app: Flask, summary_lines: Callable[[logging.Formatter], io.StringIO]
) -> None:
    stream = summary_lines(JsonLogFormatter(logger_name="test"))
    app.test_client().get("/?q=1", headers={"X-Request-ID": "abc-123", "User-Agent": "ua"})
    fields = json.loads(stream.getvalue())["Fields"]
    assert fields["rid"] == "abc-123"
    assert fields["agent"] == "ua"
    assert fields["path"] == "/"
    assert fields["code"] == 200
    assert isinstance(fields["t"], int)
    assert "lineno" not in fields and "pathname" not in fields


def test_summary_calls_an_overridden_user_id_alone(
    tmp_path: Path, summary_lines: Callable[[logging.Formatter], io.StringIO]
) -> None:
    # The hook skips user_id() when it is Dockerflow's own and no login manager is set up;
    # a subclass's user_id is still asked, with summary_extra left as it is.
    class Custom(Dockerflow):
        def user_id(self) -> int:
            return 7

    app = Flask(__name__, root_path=str(tmp_path))
    app.add_url_rule("/", "hello", lambda: "hello")
    ext = Custom(app)
    try:
        stream = summary_lines(JsonLogFormatter(logger_name="test"))
        app.test_client().get("/")
        assert json.loads(stream.getvalue())["Fields"]["uid"] == 7
    finally:
        ext.close()


def test_summary_extra_in_a_request_gives_what_the_summary_logs(
    app: Flask, summary_lines: Callable[[logging.Formatter], io.StringIO]
) -> None:
    seen: list[dict[str, Any]] = []
    ext = app.extensions["dockerflow"]
    app.after_request(lambda response: seen.append(ext.summary_extra()) or response)
    stream = summary_lines(JsonLogFormatter(logger_name="test"))
    app.test_client().get("/?q=1", headers={"X-Request-ID": "abc-123", "User-Agent": "ua"})
    fields = json.loads(stream.getvalue())["Fields"]
    (extra,) = seen
    assert extra.keys() == fields.keys() - {"code"}
    for key in extra.keys() - {"t"}:
        assert extra[key] == fields[key]


def test_log_record_refuses_an_extra_that_overwrites_the_record() -> None:
    logger = logging.getLogger("test.records")
    site = CallSite(__file__, 1, "here")
    for key in ("name", "lineno", "message", "asctime"):
        with pytest.raises(KeyError, match=f"Attempt to overwrite '{key}'"):
            log_record(logger, logging.INFO, "", {"a": 1, key: 2}, site)


def test_log_record_uses_the_record_factory_and_a_logger_class_makerecord() -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger("test.records.factory")
    logger.addHandler(Keep())
    logger.propagate = False
    site = CallSite("/x/y.py", 7, "hook")
    default = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = default(*args, **kwargs)
        record.made_by = "factory"
        return record

    logging.setLogRecordFactory(factory)
    try:
        log_record(logger, logging.WARNING, "m", {"a": 1}, site)
    finally:
        logging.setLogRecordFactory(default)
    record = seen[-1]
    assert (record.made_by, record.a) == ("factory", 1)  # type: ignore[attr-defined]
    assert (record.pathname, record.filename, record.module) == ("/x/y.py", "y.py", "y")
    assert (record.lineno, record.funcName, record.getMessage()) == (7, "hook", "m")

    class Own(logging.Logger):
        def makeRecord(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
            record = super().makeRecord(*args, **kwargs)
            record.made_by = "logger"
            return record

    own = Own("test.records.own")
    own.addHandler(Keep())
    log_record(own, logging.WARNING, "m", {"a": 2}, site)
    assert (seen[-1].made_by, seen[-1].a) == ("logger", 2)  # type: ignore[attr-defined]


# -- settings changed after start-up ----------------------------------------------------------


def test_request_settings_changed_after_start_up_apply_to_the_next_request(
    app: Flask, summary_lines: Callable[[logging.Formatter], io.StringIO]
) -> None:
    stream = summary_lines(JsonLogFormatter())
    client = app.test_client()
    assert "X-Request-ID" in client.get("/").headers
    app.config["DOCKERFLOW_REQUEST_ID_HEADER_NAME"] = "X-Trace"
    app.config["DOCKERFLOW_SUMMARY_LOG_QUERYSTRING"] = True
    response = client.get("/?a=1", headers={"X-Trace": "t-1"})
    assert response.headers["X-Trace"] == "t-1"
    assert "X-Request-ID" not in response.headers
    fields = json.loads(stream.getvalue().splitlines()[-1])["Fields"]
    assert (fields["rid"], fields["querystring"]) == ("t-1", "a=1")
    # And back: an equal value in a new object, then the key removed.
    app.config["DOCKERFLOW_REQUEST_ID_HEADER_NAME"] = "".join(["X-Request-", "ID"])
    del app.config["DOCKERFLOW_SUMMARY_LOG_QUERYSTRING"]
    response = client.get("/?a=1", headers={"X-Request-ID": "r-2"})
    assert response.headers["X-Request-ID"] == "r-2"
    assert "querystring" not in json.loads(stream.getvalue().splitlines()[-1])["Fields"]


# -- excluded attributes changed in place -----------------------------------------------------


def _fields(formatter: JsonLogFormatter, **extra: Any) -> dict[str, Any]:
    record = logging.LogRecord("n", logging.INFO, __file__, 42, "m", (), None)
    record.__dict__.update(extra)
    fields: dict[str, Any] = json.loads(formatter.format(record))["Fields"]
    return fields


@pytest.mark.parametrize(
    "change, undo",
    [
        (lambda s: s.__isub__({"lineno"}), lambda s: s.__ior__({"lineno"})),
        (lambda s: s.difference_update(["lineno"]), lambda s: s.update(["lineno"])),
        (lambda s: s.remove("lineno"), lambda s: s.add("lineno")),
        (lambda s: s.__ixor__({"lineno"}), lambda s: s.__ixor__({"lineno"})),
        (
            lambda s: s.intersection_update(s - {"lineno"}),
            lambda s: s.symmetric_difference_update({"lineno"}),
        ),
    ],
    ids=["-=", "difference_update", "remove", "^=", "intersection_update"],
)
def test_standard_attribute_kept_after_any_change_in_place(
    change: Callable[[set[str]], object], undo: Callable[[set[str]], object]
) -> None:
    formatter = JsonLogFormatter()
    excluded = JsonLogFormatter.EXCLUDED_LOGRECORD_ATTRS
    assert _fields(formatter, a=1) == {"a": 1, "msg": "m"}
    change(excluded)
    try:
        assert _fields(formatter, a=1) == {"lineno": 42, "a": 1, "msg": "m"}
    finally:
        undo(excluded)
    assert "lineno" in excluded
    assert _fields(formatter, a=1) == {"a": 1, "msg": "m"}


def test_excluded_attributes_replaced_by_a_plain_set() -> None:
    class Narrow(JsonLogFormatter):
        EXCLUDED_LOGRECORD_ATTRS = set(JsonLogFormatter.EXCLUDED_LOGRECORD_ATTRS) - {"lineno"}

    assert _fields(Narrow(), a=1) == {"lineno": 42, "a": 1, "msg": "m"}


# -- Accept negotiation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept, wanted",
    [
        (None, False),
        ("", False),
        ("*/*", False),
        ("application/json", False),
        ("application/*", False),
        (MEDIA_TYPE, True),
        ("APPLICATION/Health+JSON", True),
        (f"{MEDIA_TYPE};q=0", False),
        (f"{MEDIA_TYPE};q=0.5, */*", False),
        (f"application/json;q=0.5, {MEDIA_TYPE}", True),
        (f"{MEDIA_TYPE}, application/json", False),
    ],
)
def test_wants_health_json(accept: str | None, wanted: bool) -> None:
    assert wants_media_type(accept, MEDIA_TYPE) is wanted


@pytest.mark.parametrize(
    "accept, wanted",
    [
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),
        ("*/*", False),
        ("application/json, text/html;q=0.9", False),
    ],
)
def test_wants_another_media_type(accept: str, wanted: bool) -> None:
    assert wants_media_type(accept, "text/html") is wanted


def test_heartbeat_with_uppercase_health_json_accept(app: Flask) -> None:
    response = app.test_client().get(
        "/__heartbeat__", headers={"Accept": "Application/Health+Json"}
    )
    assert response.mimetype == MEDIA_TYPE
    response = app.test_client().get("/__heartbeat__", headers={"Accept": "*/*"})
    assert response.mimetype == "application/json"


# -- signals ----------------------------------------------------------------------------------


def test_receiver_connected_after_heartbeats_without_one_is_called(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/__heartbeat__").status_code == 200
    levels: list[int] = []

    def count(sender: Flask, level: int) -> None:  # python-dockerflow's signature
        levels.append(level)

    heartbeat_passed.connect(count, app)
    try:
        client.get("/__heartbeat__")
    finally:
        heartbeat_passed.disconnect(count, app)
    client.get("/__heartbeat__")
    assert levels == [0]
