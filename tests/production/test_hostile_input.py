"""Hostile input, through Flask's test client and through a real gunicorn (sync worker).

Every case must get a clean HTTP answer (below 500, except the JSON 500 of an unreadable
``version.json``), a JSON body from the Dockerflow endpoints, a fresh UUID as the echoed request
ID when the one sent is not safe, and log output where every line is one strict JSON object in
printable ASCII. gunicorn refuses some requests itself (400, 414, 431): a clean answer too, as
long as it keeps serving.

Requests to gunicorn are written byte for byte on a socket: HTTP clients would refuse or
normalise most of these inputs. The test client gets the same bytes as a WSGI server would pass
them on (``PATH_INFO`` percent-decoded, every value latin-1 decoded), set straight in the
environ so that Werkzeug's header checks do not stop them first.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote_to_bytes

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockerflow._logjson import MAX_FIELD_CHARS
from dockerflow.logging import sanitize_request_id

from .apps.hostile_app import LOG_KINDS, LOGGER_NAME, create_app

if TYPE_CHECKING:
    from .conftest import MozlogCapture

T = TypeVar("T")

#: Seconds any one request may take; a FIFO or device read by mistake would hang far longer.
REQUEST_TIMEOUT = 5.0
#: The statuses gunicorn answers a request it refuses with, before the app sees it.
GUNICORN_REFUSALS = {400, 414, 431}
OUR_PATHS = {"/__lbheartbeat__", "/__heartbeat__", "/__version__"}
#: Longest text a log field may hold once decoded: the bound and the truncation marker.
MAX_FIELD_TEXT = MAX_FIELD_CHARS + len("...[truncated, 1000000000 characters in all]")

#: gunicorn's and the app's logging, all through JsonLogFormatter on stdout, as in production.
#: gunicorn.error at DEBUG: it logs each request line, hostile bytes included.
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "dockerflow.logging.JsonLogFormatter", "logger_name": "hostile-app"},
    },
    "filters": {"request_id": {"()": "dockerflow.logging.RequestIdLogFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "json",
            "filters": ["request_id"],
        },
    },
    "loggers": {
        "request.summary": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "dockerflow": {"handlers": ["console"], "level": "INFO", "propagate": False},
        LOGGER_NAME: {"handlers": ["console"], "level": "INFO", "propagate": False},
        "gunicorn.error": {"handlers": ["console"], "level": "DEBUG", "propagate": False},
        "gunicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
}


# -- checking output ------------------------------------------------------------------------------


def strict_json(text: str | bytes) -> Any:
    """Parse ``text`` as strict JSON: ``NaN`` and ``Infinity`` are refused, as browsers do."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def clean_records(lines: Sequence[str]) -> list[dict[str, Any]]:
    """Assert that each line is one strict JSON object in printable ASCII; return them parsed.

    Printable ASCII rules out raw CR, LF, ESC, NUL and anything a terminal or a log shipper
    could take for more than one line.
    """
    records = []
    for line in lines:
        shown = line if len(line) < 300 else f"{line[:300]}... ({len(line)} characters)"
        assert line.isascii() and line.isprintable(), f"raw control or non-ASCII: {shown!r}"
        record = strict_json(line)
        assert isinstance(record, dict), shown
        records.append(record)
    return records


def bounded_text(value: Any) -> bool:
    """Whether every string (and key) in ``value`` is within the log field bound."""
    if isinstance(value, str):
        return len(value) <= MAX_FIELD_TEXT
    if isinstance(value, list):
        return all(bounded_text(item) for item in value)
    if isinstance(value, dict):
        return all(bounded_text(key) and bounded_text(item) for key, item in value.items())
    return True


def is_fresh_uuid(value: str | None) -> bool:
    if value is None:
        return False
    try:
        return str(uuid.UUID(value)) == value and uuid.UUID(value).version == 4
    except ValueError:
        return False


# -- the two ways in ------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    @property
    def request_id(self) -> str | None:
        """The echoed request ID; only the app sets it, so ``None`` means it never ran."""
        return self.headers.get("x-request-id")

    def json(self) -> Any:
        return strict_json(self.body)


Headers = Sequence[tuple[bytes, bytes]]


class Transport:
    """A way to send requests to the app and read what it logged."""

    name: str
    version_dir: Path

    def __init__(self) -> None:
        #: Every log record written since the transport was made, each checked clean.
        self.records: list[dict[str, Any]] = []

    def send(self, target: bytes, headers: Headers = ()) -> Answer:
        raise NotImplementedError

    def new_log_lines(self) -> list[str]:
        """Return the log lines written since the last call."""
        raise NotImplementedError

    def assert_still_serving(self) -> None:
        raise NotImplementedError

    def read_log(self) -> list[dict[str, Any]]:
        """Check the lines written since the last call and add them to :attr:`records`."""
        self.records += clean_records(self.new_log_lines())
        return self.records

    def wait_for_record(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Wait up to :data:`REQUEST_TIMEOUT` for a log record that ``predicate`` accepts."""
        deadline = time.monotonic() + REQUEST_TIMEOUT
        while True:
            found = [record for record in self.read_log() if predicate(record)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                pytest.fail(f"no such log record within {REQUEST_TIMEOUT:g}s: {self.records}")
            time.sleep(0.02)


class TestClientTransport(Transport):
    __test__ = False  # not a test class, whatever its name
    name = "test_client"

    def __init__(self, app: Flask, mozlog: MozlogCapture, version_dir: Path) -> None:
        super().__init__()
        self.client = app.test_client()
        self.mozlog = mozlog
        self.version_dir = version_dir
        self._read = 0

    def send(self, target: bytes, headers: Headers = ()) -> Answer:
        path, _, query = target.partition(b"?")
        environ = {
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
            "REQUEST_URI": target.decode("latin-1"),
            "RAW_URI": target.decode("latin-1"),
        }
        for name, value in headers:
            key = "HTTP_" + name.decode("ascii").upper().replace("-", "_")
            environ[key] = value.decode("latin-1")
        response = within(REQUEST_TIMEOUT, lambda: self.client.get("/", environ_overrides=environ))
        return Answer(
            response.status_code,
            {name.lower(): value for name, value in response.headers.items()},
            response.get_data(),
        )

    def new_log_lines(self) -> list[str]:
        lines = self.mozlog.lines()
        new, self._read = lines[self._read :], len(lines)
        return new

    def assert_still_serving(self) -> None:
        assert self.send(b"/__lbheartbeat__").status == 200


class GunicornTransport(Transport):
    name = "gunicorn"

    def __init__(self, server: HostileServer) -> None:
        super().__init__()
        self.server = server
        self.version_dir = server.version_dir

    def send(self, target: bytes, headers: Headers = ()) -> Answer:
        lines = [b"GET " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
        lines += [name + b": " + value for name, value in headers]
        return raw_request(self.server.port, b"\r\n".join(lines) + b"\r\n\r\n")

    def new_log_lines(self) -> list[str]:
        return self.server.new_log_lines()

    def assert_still_serving(self) -> None:
        assert self.server.process.poll() is None, self.server.output()
        assert self.send(b"/__lbheartbeat__").status == 200
        # The same worker all along: one that died (and was replaced) served no summary after.
        self.read_log()
        self.server.worker_pids.update(
            record["Pid"] for record in self.records if record["Type"] == "request.summary"
        )
        assert len(self.server.worker_pids) == 1, self.server.worker_pids


def within(timeout: float, func: Callable[[], T]) -> T:
    """Return ``func()``, run in a daemon thread; fail if it has not returned after ``timeout``."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(func())
        except BaseException as exc:  # raised again in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="bounded-request", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"no answer within {timeout:g}s")
    if failure:
        raise failure[0]
    return outcome[0]


def raw_request(port: int, data: bytes) -> Answer:
    """Write ``data`` on a new connection and read the answer, all within 5 seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as sock:
        # gunicorn may answer (and hang up) before it read all of a request too large for it.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            body = response.read()
        finally:
            response.close()
    return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


APPS = Path(__file__).resolve().parent / "apps"
#: Seconds gunicorn may take to answer its first request.
START_TIMEOUT = 20.0


@dataclass
class HostileServer:
    """gunicorn serving ``hostile_app`` on a free port, with one sync worker.

    Its stdout (the JSON log) and stderr go to files in ``directory``.
    """

    directory: Path
    version_dir: Path
    process: subprocess.Popen[bytes]
    port: int
    #: The pids that wrote request.summary records: the one sync worker's, unless it died.
    worker_pids: set[int] = field(default_factory=set)
    _offset: int = 0
    _partial: bytes = field(default=b"", repr=False)

    @classmethod
    def start(cls, directory: Path) -> HostileServer:
        version_dir = directory / "version"
        version_dir.mkdir()
        log_config = directory / "logging.json"
        log_config.write_text(json.dumps(LOG_CONFIG))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKERFLOW_")}
        env.update(
            HOSTILE_APP_VERSION_DIR=str(version_dir),
            # gunicorn >= 25 opens a control socket there (disabled below, to be sure).
            XDG_RUNTIME_DIR=str(directory),
            PYTHONUNBUFFERED="1",
        )
        command = [
            *(sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"),
            *("--workers", "1", "--worker-class", "sync", "--no-control-socket"),
            *("--pythonpath", str(APPS), "--log-config-json", str(log_config)),
            "hostile_app:create_app()",
        ]
        with (
            (directory / "stdout.log").open("wb") as out,
            (directory / "stderr.log").open("wb") as err,
        ):
            process = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        return cls(directory, version_dir, process, port)

    @property
    def stdout(self) -> Path:
        return self.directory / "stdout.log"

    def output(self) -> str:
        return "\n".join(
            (self.directory / name).read_text(errors="replace")
            for name in ("stderr.log", "stdout.log")
        )

    def wait_until_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"gunicorn exited with {self.process.returncode}:\n{self.output()}")
            with contextlib.suppress(OSError):
                request = b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                if raw_request(self.port, request).status == 200:
                    return
            time.sleep(0.1)
        pytest.fail(f"gunicorn did not answer within {START_TIMEOUT:g}s:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def new_log_lines(self) -> list[str]:
        """Return the complete lines written to stdout since the last call."""
        with self.stdout.open("rb") as handle:
            handle.seek(self._offset)
            data = self._partial + handle.read()
        self._offset += len(data) - len(self._partial)
        *lines, self._partial = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in lines]


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileServer]:
    """A started :class:`HostileServer`; its whole stdout checked once it stopped."""
    server = HostileServer.start(tmp_path_factory.mktemp("hostile-gunicorn"))
    try:
        server.wait_until_serving()
        yield server
    finally:
        server.stop()
    # Stopped: whatever it wrote last is complete now, and must be as clean as the rest.
    clean_records(server.new_log_lines())
    assert server._partial == b"", "the last line on stdout is incomplete"


@pytest.fixture(params=["test_client", "gunicorn"])
def transport(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Transport]:
    """The same app, in this process through the test client, or in gunicorn over a socket."""
    if request.param == "gunicorn":
        server: HostileServer = request.getfixturevalue("hostile_server")
        for entry in server.version_dir.iterdir():
            entry.unlink()
        server.new_log_lines()  # what earlier tests left is theirs
        yield GunicornTransport(server)
        return
    mozlog: MozlogCapture = request.getfixturevalue("mozlog")
    version_dir = tmp_path / "version"
    version_dir.mkdir()
    app = create_app(str(version_dir))
    try:
        yield TestClientTransport(app, mozlog, version_dir)
    finally:
        app.extensions["dockerflow"].close()


def check_answer(transport: Transport, target: bytes, headers: Headers, answer: Answer) -> None:
    """Assert what every hostile request must get; see the module docstring."""
    assert answer.status < 500, answer
    if answer.request_id is None:  # the app never saw it: gunicorn refused it
        assert transport.name == "gunicorn", answer
        assert answer.status in GUNICORN_REFUSALS, answer
        transport.read_log()
        transport.assert_still_serving()
        return
    sent = next((value for name, value in headers if name.lower() == b"x-request-id"), None)
    sent_text = None if sent is None else sent.decode("latin-1")
    if sent_text is not None and sanitize_request_id(sent_text) == sent_text:
        assert answer.request_id == sent_text
    else:
        assert is_fresh_uuid(answer.request_id), answer.request_id
        assert answer.request_id != sent_text
    path = unquote_to_bytes(target.partition(b"?")[0]).decode("latin-1")
    if path == "/__lbheartbeat__":  # an empty body, as python-dockerflow's
        assert (answer.headers["content-type"], answer.body) == ("text/html; charset=utf-8", b"")
    elif path in OUR_PATHS:
        assert answer.headers["content-type"] == "application/json", answer
        answer.json()
    summary = transport.wait_for_record(
        lambda r: r["Type"] == "request.summary" and r["Fields"]["rid"] == answer.request_id
    )
    assert summary["Fields"]["code"] == answer.status
    assert bounded_text(summary["Fields"])
    transport.assert_still_serving()


# -- request IDs, paths, headers ------------------------------------------------------------------

LBHEARTBEAT = b"/__lbheartbeat__"
REQUEST_IDS = {
    "huge": b"a" * 100_000,
    "one_too_long": b"a" * 129,
    "every_byte": bytes(range(256)),
    "high_bytes": bytes(range(0x80, 0x100)),
    "bare_cr": b"abc\rdef",
    "bare_lf": b"abc\ndef",
    "crlf_injection": b"\r\nX-Injected: yes",
    "nul": b"abc\x00def",
    "ansi_clear_screen": b"\x1b[2J",
    "tab": b"abc\tdef",
    "unicode": "r\u00e9q-\u2603-\U0001f600".encode(),
    "longest_allowed": b"a" * 128,
    "aws_trace_id": b"Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
}


@pytest.mark.parametrize("value", REQUEST_IDS.values(), ids=REQUEST_IDS.keys())
def test_request_ids(transport: Transport, value: bytes) -> None:
    headers = [(b"X-Request-ID", value)]
    first = transport.send(LBHEARTBEAT, headers)
    check_answer(transport, LBHEARTBEAT, headers, first)
    if first.request_id is not None and first.request_id != value.decode("latin-1"):
        again = transport.send(LBHEARTBEAT, headers)
        assert again.request_id != first.request_id, "a replaced request ID must be fresh"


REQUESTS: dict[str, tuple[bytes, Headers]] = {
    "path_10k": (b"/" + b"a" * 10_000, ()),
    "path_100k": (b"/" + b"a" * 100_000, ()),
    "query_10k_on_lbheartbeat": (LBHEARTBEAT + b"?q=" + b"x" * 10_000, ()),
    "header_64k": (LBHEARTBEAT, [(b"X-Big", b"b" * 65_536)]),
    "headers_300": (LBHEARTBEAT, [(f"X-H{n}".encode(), b"v") for n in range(300)]),
    "user_agent_64k": (LBHEARTBEAT, [(b"User-Agent", b"u" * 65_536)]),
    "query_percent_ff": (LBHEARTBEAT + b"?q=%ff%fe%00%0d%0a%1b[2J", ()),
    "query_raw_ff": (LBHEARTBEAT + b"?q=\xff\xfe", ()),
    "path_raw_ff": (LBHEARTBEAT + b"\xff", ()),
    "path_percent_controls": (b"/%ff%00%0d%0a%1b[2J", ()),
    "lbheartbeat_then_percent_controls": (b"/__lbheartbeat__%0d%0a%1b[2J", ()),
    "heartbeat_hostile_check_names": (b"/__heartbeat__?check=" + b"%1b[2J%0d%0a%ff," * 50, ()),
    "heartbeat_hostile_exclude": (b"/__heartbeat__?exclude=" + b"%ff," * 1000, ()),
    # Raw bytes that are not UTF-8 in a heartbeat's query: gunicorn 27 refuses such a request
    # line itself (400); uWSGI and others pass them on, as the test client's environ does.
    "heartbeat_raw_ff_check": (b"/__heartbeat__?check=\xff", ()),
    "heartbeat_raw_bytes_exclude": (b"/__heartbeat__?exclude=a,\xfe\xff&check=\xc3", ()),
    "latin1_agent_and_language": (
        LBHEARTBEAT,
        [(b"User-Agent", b"caf\xe9 \xff\x80"), (b"Accept-Language", b"d\xe9, \xa0")],
    ),
    "utf8_agent": (LBHEARTBEAT, [(b"User-Agent", "\u2603 \U0001f600".encode())]),
    "ansi_agent": (LBHEARTBEAT, [(b"User-Agent", b"\x1b[2J\x1b]0;pwned\x07")]),
    "cr_in_language": (LBHEARTBEAT, [(b"Accept-Language", b"en\rforged")]),
}


@pytest.mark.parametrize(("target", "headers"), REQUESTS.values(), ids=REQUESTS.keys())
def test_paths_queries_and_headers(transport: Transport, target: bytes, headers: Headers) -> None:
    check_answer(transport, target, headers, transport.send(target, headers))


@pytest.fixture
def hypothesis_app(mozlog: MozlogCapture, tmp_path: Path) -> Iterator[Flask]:
    app = create_app(str(tmp_path))
    try:
        yield app
    finally:
        app.extensions["dockerflow"].close()


@settings(
    max_examples=150,
    deadline=None,
    # One app and one log capture for every example: each example clears the capture.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(raw=st.binary(max_size=300))
def test_any_request_id_bytes(hypothesis_app: Flask, mozlog: MozlogCapture, raw: bytes) -> None:
    value = raw.decode("latin-1")  # what a WSGI server makes of the header's bytes
    mozlog.clear()
    response = hypothesis_app.test_client().get(
        "/__lbheartbeat__", environ_overrides={"HTTP_X_REQUEST_ID": value}
    )
    echoed = response.headers["X-Request-ID"]
    if sanitize_request_id(value) == value:
        assert echoed == value
    else:
        assert is_fresh_uuid(echoed)
    (summary,) = [r for r in clean_records(mozlog.lines()) if r["Type"] == "request.summary"]
    assert summary["Fields"]["rid"] == echoed


# -- version.json ---------------------------------------------------------------------------------

VALID_VERSION = {"source": "https://github.com/mozilla/x", "version": "1.2.3", "commit": "abc"}


def _write(content: bytes) -> Callable[[Path, Path], None]:
    def make(version: Path, elsewhere: Path) -> None:
        version.write_bytes(content)

    return make


def _link(target: Callable[[Path], Path]) -> Callable[[Path, Path], None]:
    def make(version: Path, elsewhere: Path) -> None:
        version.symlink_to(target(elsewhere))

    return make


def _fifo(elsewhere: Path) -> Path:
    os.mkfifo(elsewhere / "fifo")
    return elsewhere / "fifo"


def _valid_file(elsewhere: Path) -> Path:
    (elsewhere / "real-version.json").write_text(json.dumps(VALID_VERSION))
    return elsewhere / "real-version.json"


#: How version.json is made, and the status it must get; 500 always with a JSON error body.
VERSION_FILES: dict[str, tuple[Callable[[Path, Path], None], int]] = {
    "malformed": (_write(b'{"version": "1.2.3", '), 500),
    "not_an_object": (_write(b'["1.2.3"]'), 500),
    "not_utf8": (_write(b'{"version": "\xff\xfe"}'), 500),
    "huge_2mib": (_write(b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'), 500),
    "nested_100k_deep": (_write(b"[" * 100_000 + b"]" * 100_000), 500),
    "int_of_5000_digits": (_write(b'{"build": ' + b"9" * 5000 + b"}"), 500),
    "symlink_to_dev_zero": (_link(lambda _: Path("/dev/zero")), 500),
    "symlink_to_fifo": (_link(_fifo), 500),
    "symlink_to_directory": (_link(lambda elsewhere: elsewhere), 500),
    "symlink_to_etc_passwd": (_link(lambda _: Path("/etc/passwd")), 500),
    "symlink_loop": (_link(lambda _: Path("version.json")), 500),
    "dangling_symlink": (_link(lambda elsewhere: elsewhere / "missing.json"), 404),
    "symlink_to_valid_json": (_link(_valid_file), 200),
}


@pytest.mark.parametrize(("make", "status"), VERSION_FILES.values(), ids=VERSION_FILES.keys())
def test_version_json(
    transport: Transport,
    tmp_path: Path,
    make: Callable[[Path, Path], None],
    status: int,
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    make(transport.version_dir / "version.json", elsewhere)

    started = time.monotonic()
    answer = transport.send(b"/__version__")
    assert time.monotonic() - started < REQUEST_TIMEOUT

    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    if status == 200:
        assert body == VALID_VERSION
    elif status == 404:
        assert body == {"error": "version.json not found"}
    else:
        assert body == {"error": "version.json could not be read"}
    summary = transport.wait_for_record(
        lambda r: r["Type"] == "request.summary" and r["Fields"]["rid"] == answer.request_id
    )
    assert summary["Fields"]["code"] == status
    transport.assert_still_serving()


def test_version_json_with_nan_is_refused_or_served_as_json(transport: Transport) -> None:
    (transport.version_dir / "version.json").write_text('{"version": "1", "build": NaN}')
    answer = transport.send(b"/__version__")
    assert answer.headers["content-type"] == "application/json"
    assert answer.status in (200, 500)
    answer.json()  # strict: NaN is not JSON


def test_version_json_nested_near_the_recursion_limit_gets_a_json_answer(
    transport: Transport,
) -> None:
    # Where parsing stops and encoding fails depends on the stack depth of the server: try
    # every depth up to the recursion limit (gunicorn's interpreter has the same default).
    version = transport.version_dir / "version.json"
    limit = sys.getrecursionlimit()
    not_json = []
    for depth in range(limit - 400, limit + 1):
        version.write_text('{"v": ' + "[" * depth + "]" * depth + "}")
        answer = transport.send(b"/__version__")
        if answer.status not in (200, 500) or answer.headers["content-type"] != "application/json":
            not_json.append((depth, answer.status, answer.headers["content-type"]))
    assert not_json == []
    transport.assert_still_serving()


# -- log extras -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LOG_KINDS)
def test_hostile_log_records(
    transport: Transport, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pytest's own capture handler, which it attaches to every logger, raises on a message whose
    # arguments do not fit; a production handler reports that on stderr instead. The formatter
    # under test never raises: its line must come out either way.
    monkeypatch.setattr(logging, "raiseExceptions", False)
    target = f"/_hostile/log/{kind}".encode()
    answer = transport.send(target)
    assert answer.status == 200, answer
    assert answer.json() == {"logged": kind}

    record = transport.wait_for_record(
        lambda r: r["Type"] == LOGGER_NAME and r["Fields"].get("rid") == answer.request_id
    )
    assert all(bounded_text(r["Fields"]) for r in transport.records)
    fields = record["Fields"]
    assert "msg" in fields
    if kind == "exception":
        # The exception's own text is written as its repr(): escaped even once decoded.
        for text in (fields["error"], fields["traceback"]):
            assert "\r" not in text and "\x1b" not in text
    check_answer(transport, target, (), answer)
