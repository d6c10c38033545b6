"""The HTTP dependency check against real local servers: one that answers, one that refuses, one
that accepts and never answers, one that sends its headers and stalls the body, and one whose TLS
certificate is self-signed. Each failure has its own message ID; the URL's secrets never show."""

from __future__ import annotations

import datetime
import http.server
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dockerflow import health
from dockerflow.engine import Check, Engine
from dockerflow.integrations import HttpCheck, http_check, release

from .helpers import BlackHole

pytest.importorskip("httpx")

#: The check's timeout: its request is bounded by 0.4 s, well under the engine's 1 s.
TIMEOUT = 0.5


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the check's client reuses its connection

    def do_GET(self) -> None:
        server: Server = self.server  # type: ignore[assignment]
        server.requests.append((self.path, self.client_address[1], dict(self.headers)))
        status = int(self.path.strip("/").partition("?")[0] or 200)
        body = b"ok"
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "/500")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class Server(http.server.ThreadingHTTPServer):
    """A local HTTP server answering ``/<status>`` with that status; it records each request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, int, dict[str, str]]] = []
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True).start()

    def url(self, path: str = "/200", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    made = Server()
    yield made
    made.stop()


@pytest.fixture
def run(engine: Engine) -> Iterator[Callable[[HttpCheck], Any]]:
    """Run a check once through the engine; its client is closed at teardown."""
    used: list[HttpCheck] = []

    def run(check: HttpCheck) -> Any:
        used.append(check)
        return engine.run_sync([Check("dependency", check)]).results["dependency"]

    yield run
    for check in used:
        engine.bridge.call(release, check)


def only(detail: Any) -> tuple[str, str]:
    ((key, text),) = detail.messages.items()
    return key, text


def test_an_expected_status_passes_and_is_reported_as_a_value(
    run: Callable[..., Any], server: Server
) -> None:
    detail = run(http_check(server.url("/204"), timeout=TIMEOUT))
    assert detail.level == 0
    assert detail.data["status_code"].value == 204


def test_a_redirect_is_an_answer_not_followed(run: Callable[..., Any], server: Server) -> None:
    detail = run(http_check(server.url("/302"), timeout=TIMEOUT))
    assert detail.level == 0 and detail.data["status_code"].value == 302
    assert [path for path, _, _ in server.requests] == ["/302"]  # /500 was never asked for


def test_an_unexpected_status_is_e024(run: Callable[..., Any], server: Server) -> None:
    detail = run(http_check(server.url("/503"), timeout=TIMEOUT))
    assert only(detail) == (
        health.ERROR_HTTP_UNEXPECTED_STATUS,
        f"GET {server.url('/503')} answered 503 Service Unavailable, expected 2xx or 3xx",
    )
    assert detail.data["status_code"].value == 503
    assert run(http_check(server.url("/503"), expected_statuses=[503], timeout=TIMEOUT)).level == 0


def test_the_client_and_its_connection_are_kept_between_runs(
    run: Callable[..., Any], server: Server
) -> None:
    check = http_check(server.url("/200"), headers={"X-Probe": "dockerflow"}, timeout=TIMEOUT)
    for _ in range(3):
        assert run(check).level == 0
    assert len(server.requests) == 3
    assert len({port for _, port, _ in server.requests}) == 1  # one connection for the three
    assert all(headers["X-Probe"] == "dockerflow" for _, _, headers in server.requests)


def test_a_refused_connection_is_e021(run: Callable[..., Any], refused_port: int) -> None:
    key, text = only(run(http_check(f"http://127.0.0.1:{refused_port}/", timeout=TIMEOUT)))
    assert key == health.ERROR_HTTP_CANNOT_CONNECT
    assert text.endswith("failed: connection refused")


def test_a_server_that_never_answers_is_e023(run: Callable[..., Any]) -> None:
    hole = BlackHole()
    try:
        key, text = only(run(http_check(f"http://127.0.0.1:{hole.port}/", timeout=TIMEOUT)))
    finally:
        hole.close()
    assert key == health.ERROR_HTTP_TIMEOUT
    assert text.endswith("did not answer within 0.4s")


def test_headers_then_a_stalled_body_is_e023_with_the_status(run: Callable[..., Any]) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    release_body = threading.Event()

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            release_body.wait(10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        key, text = only(run(http_check(f"http://127.0.0.1:{port}/", timeout=TIMEOUT)))
    finally:
        release_body.set()
        thread.join(10)
        listener.close()
    assert key == health.ERROR_HTTP_TIMEOUT
    assert text.endswith("sent its headers (200) but not its body within 0.4s")


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_a_self_signed_certificate_is_e022_unless_trusted(
    run: Callable[..., Any], tmp_path: Path
) -> None:
    pytest.importorskip("cryptography")
    cert, key = _self_signed(tmp_path)
    server = Server()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    try:
        url = server.url("/200", scheme="https")
        key_id, text = only(run(http_check(url, timeout=TIMEOUT)))
        assert key_id == health.ERROR_HTTP_TLS
        assert "CERTIFICATE_VERIFY_FAILED" in text
        # The same server, its certificate trusted: the check passes over TLS.
        trusted = ssl.create_default_context(cafile=str(cert))
        assert run(http_check(url, verify=trusted, timeout=TIMEOUT)).level == 0
        assert run(http_check(url, verify=str(cert), timeout=TIMEOUT)).level == 0  # a CA bundle
    finally:
        server.stop()


def test_a_name_that_does_not_resolve_is_e020(
    run: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The resolver answers as glibc does for an unknown name, without a query leaving the
    # machine (the sandbox's network is loopback only).
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    key, text = only(run(http_check("http://payments.invalid/health", timeout=TIMEOUT)))
    assert key == health.ERROR_HTTP_NAME_NOT_RESOLVED
    assert "host name not resolved" in text and "Name or service not known" in text


def test_the_urls_password_and_query_values_never_show(
    run: Callable[..., Any], server: Server, refused_port: int
) -> None:
    secret_url = f"http://svc:hunter2@127.0.0.1:{server.port}/503?token=abc123&sig=xyz789&flag"
    refused = f"http://svc:hunter2@127.0.0.1:{refused_port}/?sig=xyz789"
    texts = [only(run(http_check(url, timeout=TIMEOUT)))[1] for url in (secret_url, refused)]
    texts.append(repr(http_check(secret_url)))
    for text in texts:
        assert "hunter2" not in text and "abc123" not in text and "xyz789" not in text
    assert f"svc:***@127.0.0.1:{server.port}/503?token=***&sig=***&flag" in texts[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"url": "ftp://host/"}, "http"),
        ({"url": "/relative"}, "http"),
        ({"url": "http://h/", "method": "BREW"}, "method"),
        ({"url": "http://h/", "expected_statuses": [700]}, "100 to 599"),
        ({"url": "http://h/", "expected_statuses": []}, "100 to 599"),
    ],
)
def test_bad_arguments_are_refused_where_the_check_is_made(
    kwargs: dict[str, Any], match: str
) -> None:
    url = kwargs.pop("url")
    with pytest.raises(ValueError, match=match):
        http_check(url, **kwargs)
