from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g
from werkzeug.test import EnvironBuilder

from dockerflow import checks as compat_checks
from dockerflow import health
from dockerflow.checks import Error, Info, Warning
from dockerflow.engine import CheckRegistrationError, ConfigurationError
from dockerflow.flask import AlreadyInitializedError, Dockerflow, signals


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    app = Flask("testapp", root_path=str(tmp_path / "app"))
    app.config["TESTING"] = True

    @app.route("/")
    def index() -> str:
        return "hello"

    @app.route("/boom")
    def boom() -> str:
        raise ValueError("kaboom \r\n\x1b[31m")

    return app


@pytest.fixture
def dockerflow(app: Flask) -> Iterator[Dockerflow]:
    ext = Dockerflow(app)
    yield ext
    ext._bridge.stop()


@pytest.fixture(autouse=True)
def _clean_compat_registry() -> Iterator[None]:
    compat_checks.clear_checks()
    yield
    compat_checks.clear_checks()


# -- extension set-up ---------------------------------------------------------------------------


def test_app_extensions_holds_the_instance(app: Flask, dockerflow: Dockerflow) -> None:
    assert app.extensions["dockerflow"] is dockerflow


def test_factory_pattern_and_one_instance_for_two_apps(tmp_path: Path) -> None:
    ext = Dockerflow()
    apps = [Flask(f"app{i}", root_path=str(tmp_path)) for i in range(2)]
    for app in apps:
        ext.init_app(app)

    @ext.check
    def shared() -> list[Any]:
        return []

    try:
        for app in apps:
            response = app.test_client().get("/__heartbeat__")
            assert response.status_code == 200
            assert response.json == {"status": "ok", "checks": {"shared": "ok"}, "details": {}}
    finally:
        ext._bridge.stop()


def test_second_extension_on_same_app_is_refused(app: Flask, dockerflow: Dockerflow) -> None:
    with pytest.raises(AlreadyInitializedError, match="already initialised"):
        Dockerflow(app)
    # Code written for python-dockerflow catches AssertionError (redash-stmo does).
    with pytest.raises(AssertionError):
        Dockerflow().init_app(app)
    assert app.extensions["dockerflow"] is dockerflow


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("DOCKERFLOW_CHECK_TIMEOUT", "soon"),
        ("DOCKERFLOW_CHECK_TIMEOUT", 0),
        ("DOCKERFLOW_HEARTBEAT_FAIL_LEVEL", "bad"),
        ("DOCKERFLOW_HEARTBEAT_FAILED_STATUS_CODE", 200),
        ("DOCKERFLOW_HEARTBEAT_DETAILS", "sometimes"),
        ("DOCKERFLOW_HEARTBEAT_CACHE_TTL", -1),
        ("DOCKERFLOW_ERROR_ENDPOINT", "maybe"),
        ("DOCKERFLOW_REQUEST_ID_HEADER_NAME", "X Bad\n"),
    ],
)
def test_invalid_settings_name_key_and_value(tmp_path: Path, key: str, value: object) -> None:
    app = Flask("bad", root_path=str(tmp_path))
    app.config[key] = value
    with pytest.raises(ConfigurationError) as info:
        Dockerflow(app)
    assert key in str(info.value)
    assert repr(value) in str(info.value)
    assert "dockerflow" not in app.extensions


def test_settings_fall_back_to_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKERFLOW_HEARTBEAT_FAILED_STATUS_CODE", "503")
    app = Flask("envapp", root_path=str(tmp_path))
    ext = Dockerflow(app)
    ext.check(lambda: [Error("down", id="x.E1")], name="down")
    try:
        assert app.test_client().get("/__heartbeat__").status_code == 503
        assert app.config["DOCKERFLOW_HEARTBEAT_FAILED_STATUS_CODE"] == 503
    finally:
        ext._bridge.stop()


# -- checks -------------------------------------------------------------------------------------


def test_decorators_return_the_function(dockerflow: Dockerflow) -> None:
    def plain() -> None:
        return None

    async def coro() -> None:
        return None

    assert dockerflow.check(plain) is plain
    assert dockerflow.check(name="c", timeout=1.0)(coro) is coro
    assert compat_checks.register(plain) is plain
    assert set(dockerflow.checks) == {"plain", "c"}


def test_bad_check_registration(dockerflow: Dockerflow) -> None:
    with pytest.raises(CheckRegistrationError, match="timeout"):
        dockerflow.check(lambda: None, name="x", timeout=-1)
    with pytest.raises(CheckRegistrationError, match="function"):
        dockerflow.check("not callable", name="x")  # type: ignore[call-overload]


def test_heartbeat_shape_and_levels(app: Flask, dockerflow: Dockerflow) -> None:
    @dockerflow.check
    def fine() -> list[Any]:
        return []

    @dockerflow.check(name="warned")
    async def warns() -> list[Any]:
        return [Warning("careful", id="x.W1")]

    response = app.test_client().get("/__heartbeat__")
    assert response.status_code == 200  # a warning alone passes by default
    assert response.headers["Cache-Control"] == "no-store"
    assert response.json == {
        "status": "warning",
        "checks": {"fine": "ok", "warned": "warning"},
        "details": {"warned": {"status": "warning", "level": 30, "messages": {"x.W1": "careful"}}},
    }


def test_error_fails_with_configured_status(app: Flask, dockerflow: Dockerflow) -> None:
    dockerflow.check(lambda: [Error("db down", id="x.E1")], name="db")
    response = app.test_client().get("/__heartbeat__")
    assert response.status_code == 500
    assert response.json["status"] == "error"
    assert response.json["details"]["db"]["messages"] == {"x.E1": "db down"}


def test_strict_fail_level(tmp_path: Path) -> None:
    app = Flask("strict", root_path=str(tmp_path))
    app.config["DOCKERFLOW_HEARTBEAT_FAIL_LEVEL"] = "warning"
    ext = Dockerflow(app)
    ext.check(lambda: [Warning("w", id="x.W1")], name="w")
    try:
        assert app.test_client().get("/__heartbeat__").status_code == 500
    finally:
        ext._bridge.stop()


@pytest.mark.parametrize(
    ("mode", "debug", "shown"),
    [
        ("always", False, True),
        ("never", False, False),
        ("debug", False, False),
        ("debug", True, True),
    ],
)
def test_details_modes(tmp_path: Path, mode: str, debug: bool, shown: bool) -> None:
    app = Flask("details", root_path=str(tmp_path))
    app.config["DOCKERFLOW_HEARTBEAT_DETAILS"] = mode
    app.debug = debug
    ext = Dockerflow(app)
    ext.check(lambda: [Error("e", id="x.E1")], name="e")
    try:
        body = app.test_client().get("/__heartbeat__").json
        assert body["checks"] == {"e": "error"}
        assert bool(body["details"]) is shown
    finally:
        ext._bridge.stop()


def test_silenced_checks(tmp_path: Path) -> None:
    app = Flask("silenced", root_path=str(tmp_path))
    app.config["DOCKERFLOW_SILENCED_CHECKS"] = "x.E2"
    ext = Dockerflow(app, silenced_checks=["x.E1"])
    ext.check(lambda: [Error("one", id="x.E1")], name="one")
    ext.check(lambda: [Error("two", id="x.E2"), Info("i", id="x.I1")], name="two")
    try:
        response = app.test_client().get("/__heartbeat__")
        assert response.status_code == 200
        assert response.json["checks"] == {"one": "ok", "two": "info"}
    finally:
        ext._bridge.stop()


def test_checks_run_concurrently_with_timeouts(tmp_path: Path) -> None:
    """A heartbeat runs its checks at the same time, each under its own timeout.

    Five sync checks meet at a barrier and five async ones wait for each other: they pass only
    if all five run at once, whenever a loaded machine gets round to starting them (they have
    10 s). Six more hang and are cut at the 1 s timeout, one at its own 0.1 s: the heartbeat
    answers at about the longest timeout, not at the 6.1 s the timeouts add up to.
    """
    app = Flask("slow", root_path=str(tmp_path))
    app.config["DOCKERFLOW_CHECK_TIMEOUT"] = 1.0
    ext = Dockerflow(app)
    meeting = 10.0
    barrier = threading.Barrier(5)
    arrived: list[str] = []
    everyone = asyncio.Event()  # bound to the loop the checks run on when first awaited

    # A new function per check: one function registered under two names shares its runs.
    def meets_in_a_thread() -> Any:
        def meet() -> None:
            barrier.wait(meeting / 2)

        return meet

    def meets_on_the_loop(name: str) -> Any:
        async def meet() -> None:
            arrived.append(name)
            if len(arrived) == 5:
                everyone.set()
            await asyncio.wait_for(everyone.wait(), meeting / 2)

        return meet

    def hangs_in_a_thread() -> Any:
        return lambda: released.wait(30)

    def hangs_on_the_loop() -> Any:
        async def hang() -> None:
            await asyncio.sleep(30)

        return hang

    released = threading.Event()
    for i in range(5):
        ext.check(meets_in_a_thread(), name=f"sync{i}", timeout=meeting)
        ext.check(meets_on_the_loop(f"async{i}"), name=f"async{i}", timeout=meeting)
    for i in range(3):
        ext.check(hangs_in_a_thread(), name=f"hung_sync{i}")
        ext.check(hangs_on_the_loop(), name=f"hung_async{i}")
    ext.check(hangs_on_the_loop(), name="quick_timeout", timeout=0.1)
    try:
        started = time.perf_counter()
        response = app.test_client().get("/__heartbeat__")
        elapsed = time.perf_counter() - started
        body = response.json
        assert [body["checks"][f"sync{i}"] for i in range(5)] == ["ok"] * 5, body
        assert [body["checks"][f"async{i}"] for i in range(5)] == ["ok"] * 5, body
        for i in range(3):
            assert body["details"][f"hung_sync{i}"]["messages"] == {
                health.ERROR_CHECK_TIMEOUT: "Check timed out after 1s"
            }
            assert list(body["details"][f"hung_async{i}"]["messages"]) == [
                health.ERROR_CHECK_TIMEOUT
            ]
        assert list(body["details"]["quick_timeout"]["messages"]) == [health.ERROR_CHECK_TIMEOUT]
        # The hung checks wait out their timeouts side by side: 1 s (with room for a loaded
        # machine), not the 6.1 s they add up to.
        assert 1.0 <= elapsed < 4.0
    finally:
        released.set()
        ext._bridge.stop()


def test_async_clients_live_on_one_loop_across_heartbeats(
    app: Flask, dockerflow: Dockerflow
) -> None:
    seen: list[tuple[int, int]] = []

    @dockerflow.check
    async def loop_probe() -> None:
        seen.append((id(asyncio.get_running_loop()), threading.get_ident()))

    client = app.test_client()
    for _ in range(3):
        assert client.get("/__heartbeat__").status_code == 200
    assert len(seen) == 3
    assert len(set(seen)) == 1


def test_compat_registry_runs_in_every_extension(app: Flask, dockerflow: Dockerflow) -> None:
    @compat_checks.register
    def legacy() -> list[Any]:
        return [Info("hello", id="legacy.I1")]

    compat_checks.register_partial(lambda value: [] if value else [Error("x")], 1, name="partial")
    body = app.test_client().get("/__heartbeat__").json
    assert body["checks"] == {"legacy": "info", "partial": "ok"}
    assert set(compat_checks.get_checks()) == {"legacy", "partial"}


def test_init_check_partial(app: Flask, dockerflow: Dockerflow) -> None:
    def needs(obj: dict[str, bool]) -> list[Any]:
        return [] if obj["up"] else [Error("down", id="x.E1")]

    dockerflow.init_check(needs, {"up": False})
    assert app.test_client().get("/__heartbeat__").json["checks"] == {"needs": "error"}


def test_exclude_and_only_query_parameters(app: Flask, dockerflow: Dockerflow) -> None:
    dockerflow.check(lambda: [Error("e", id="x.E1")], name="optional")
    dockerflow.check(lambda: [], name="core")
    client = app.test_client()
    response = client.get("/__heartbeat__?exclude=optional")
    assert response.status_code == 200
    assert response.json["checks"] == {"core": "ok"}
    assert client.get("/__heartbeat__?check=optional").json["checks"] == {"optional": "error"}
    unknown = client.get("/__heartbeat__?check=nope")
    assert unknown.status_code == 400
    assert "nope" in unknown.json["error"]


# -- signals ------------------------------------------------------------------------------------


def test_signals_fire_with_app_as_sender(app: Flask, dockerflow: Dockerflow) -> None:
    state = {"up": True}
    dockerflow.check(lambda: [] if state["up"] else [Error("down", id="x.E1")], name="flappy")
    events: list[tuple[str, Any]] = []

    @signals.heartbeat_passed.connect_via(app)
    def passed(sender: Flask, level: int, **extra: Any) -> None:
        events.append(("passed", level))

    @signals.heartbeat_failed.connect_via(app)
    def failed(sender: Flask, level: int) -> None:
        events.append(("failed", level))

    @signals.heartbeat_status_changed.connect_via(app)
    def changed(sender: Flask, previous_status: str | None, report: Any, **extra: Any) -> None:
        events.append(("changed", (previous_status, report.status)))

    client = app.test_client()
    client.get("/__heartbeat__")
    client.get("/__heartbeat__")
    state["up"] = False
    client.get("/__heartbeat__")
    assert events == [
        ("passed", 0),  # a worker's first status is not a change
        ("passed", 0),
        ("failed", health.ERROR),
        ("changed", ("ok", "error")),
    ]


# -- simple views -------------------------------------------------------------------------------


def test_lbheartbeat_runs_no_check(app: Flask, dockerflow: Dockerflow) -> None:
    calls: list[int] = []
    dockerflow.check(lambda: calls.append(1), name="counted")
    response = app.test_client().get("/__lbheartbeat__")
    assert (response.status_code, response.data) == (200, b"")
    assert calls == []


def test_version_served_missing_and_malformed(
    app: Flask, dockerflow: Dockerflow, caplog: pytest.LogCaptureFixture
) -> None:
    root = Path(app.root_path).parent
    root.mkdir(parents=True, exist_ok=True)
    client = app.test_client()
    missing = client.get("/__version__")
    assert missing.status_code == 404
    assert missing.is_json

    (root / "version.json").write_text(json.dumps({"version": "1.2.3", "commit": "abc"}))
    assert client.get("/__version__").json == {"version": "1.2.3", "commit": "abc"}

    (root / "version.json").write_text("{not json")
    with caplog.at_level(logging.ERROR, logger="dockerflow.flask"):
        broken = client.get("/__version__")
    assert broken.status_code == 500
    assert broken.json == {"error": "version.json could not be read"}
    assert any("version.json" in r.getMessage() for r in caplog.records)


def test_version_callback_receives_version_path(tmp_path: Path) -> None:
    app = Flask("cb", root_path=str(tmp_path))
    ext = Dockerflow(app, version_path=str(tmp_path / "custom"))
    seen: list[str] = []

    @ext.version_callback
    def loader(path: str) -> dict[str, str]:
        seen.append(path)
        return {"source": "callback"}

    assert app.test_client().get("/__version__").json == {"source": "callback"}
    assert seen == [str(tmp_path / "custom")]


def test_error_endpoint_off_by_default(app: Flask, dockerflow: Dockerflow) -> None:
    assert app.test_client().get("/__error__").status_code == 404


def test_error_endpoint_when_enabled(tmp_path: Path) -> None:
    app = Flask("err", root_path=str(tmp_path))
    app.config["DOCKERFLOW_ERROR_ENDPOINT"] = True
    ext = Dockerflow(app)
    try:
        assert app.test_client().get("/__error__").status_code == 500
    finally:
        ext._bridge.stop()


# -- request ids and request.summary -------------------------------------------------------------


def summaries(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "request.summary"]


def test_request_summary_fields(
    app: Flask, dockerflow: Dockerflow, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="request.summary"):
        response = app.test_client().get(
            "/?a=1",
            headers={"User-Agent": "probe/1", "Accept-Language": "fr", "X-Request-ID": "abc-123"},
        )
    assert response.headers["X-Request-ID"] == "abc-123"
    (record,) = summaries(caplog)
    fields = record.__dict__
    assert (fields["agent"], fields["lang"], fields["method"], fields["path"]) == (
        "probe/1",
        "fr",
        "GET",
        "/",
    )
    assert (fields["errno"], fields["code"], fields["rid"], fields["uid"]) == (
        0,
        200,
        "abc-123",
        "",
    )
    assert isinstance(fields["t"], int) and fields["t"] >= 0
    assert "querystring" not in fields
    assert record.levelno == logging.INFO


def test_querystring_logged_when_enabled_and_not_utf8(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = Flask("qs", root_path=str(tmp_path))
    app.config["DOCKERFLOW_SUMMARY_LOG_QUERYSTRING"] = True
    ext = Dockerflow(app)
    try:
        with caplog.at_level(logging.INFO, logger="request.summary"):
            environ = EnvironBuilder(path="/__lbheartbeat__").get_environ()
            environ["QUERY_STRING"] = "q=\xff\xfe&x=1"  # WSGI strings are latin-1: raw bytes
            # Called as a WSGI server would: the test client re-encodes the query string.
            body = app.wsgi_app(environ, lambda status, headers, exc_info=None: None)
            b"".join(body)
        (record,) = summaries(caplog)
        assert record.__dict__["querystring"] == "q=\\xff\\xfe&x=1"
    finally:
        ext._bridge.stop()


def test_exception_logs_exactly_one_error_record(
    app: Flask, dockerflow: Dockerflow, caplog: pytest.LogCaptureFixture
) -> None:
    app.config["TESTING"] = False
    app.config["PROPAGATE_EXCEPTIONS"] = False
    with caplog.at_level(logging.INFO, logger="request.summary"):
        response = app.test_client().get("/boom")
    assert response.status_code == 500
    (record,) = summaries(caplog)
    assert record.levelno == logging.ERROR
    assert record.__dict__["errno"] == 500
    assert record.__dict__["code"] == 500
    assert "kaboom" in record.getMessage()


@pytest.mark.parametrize(
    "bad",
    ["x" * 1000, "abc\r\nInjected: yes", "\x1b[31mred", "has space", "nul\x00", "ünïcode", ""],
)
def test_hostile_request_ids_are_replaced(app: Flask, dockerflow: Dockerflow, bad: str) -> None:
    seen: dict[str, str] = {}

    @app.route("/rid")
    def rid() -> str:
        seen["g"] = g.request_id
        return "ok"

    environ = {"HTTP_X_REQUEST_ID": bad.encode("utf-8").decode("latin-1")}
    response = app.test_client().get("/rid", environ_base=environ)
    rid_out = response.headers["X-Request-ID"]
    assert rid_out != bad
    assert len(rid_out) == 36  # a fresh UUID
    assert seen["g"] == rid_out


def test_app_set_request_id_is_kept(app: Flask, dockerflow: Dockerflow) -> None:
    @app.before_request
    def own_id() -> None:
        g.request_id = "app-owned"

    seen: dict[str, str] = {}

    @app.route("/own")
    def own() -> str:
        seen["rid"] = g.request_id
        seen["private"] = g._request_id
        return "ok"

    # The extension's before_request hook runs first (it was registered first), so the app
    # overwrites g.request_id afterwards; g._request_id keeps the extension's id.
    response = app.test_client().get("/own", headers={"X-Request-ID": "given-1"})
    assert seen == {"rid": "app-owned", "private": "given-1"}
    assert response.headers["X-Request-ID"] == "given-1"


def test_custom_request_id_header(tmp_path: Path) -> None:
    app = Flask("hdr", root_path=str(tmp_path))
    app.config["DOCKERFLOW_REQUEST_ID_HEADER_NAME"] = "X-Trace"
    ext = Dockerflow(app)
    try:
        response = app.test_client().get("/__lbheartbeat__", headers={"X-Trace": "t-1"})
        assert response.headers["X-Trace"] == "t-1"
    finally:
        ext._bridge.stop()


def test_own_endpoints_can_be_left_out_of_summary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = Flask("quiet", root_path=str(tmp_path))
    app.config["DOCKERFLOW_SUMMARY_LOG_DOCKERFLOW_ENDPOINTS"] = False

    @app.route("/")
    def index() -> str:
        return "hi"

    ext = Dockerflow(app)
    try:
        with caplog.at_level(logging.INFO, logger="request.summary"):
            client = app.test_client()
            client.get("/__lbheartbeat__")
            client.get("/__heartbeat__")
            client.get("/")
        assert [r.__dict__["path"] for r in summaries(caplog)] == ["/"]
    finally:
        ext._bridge.stop()


def test_overridable_summary_hooks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Custom(Dockerflow):
        def user_id(self) -> str | None:
            return "user-7"

        def summary_extra(self) -> dict[str, Any]:
            out = super().summary_extra()
            out["tenant"] = "acme"
            return out

    app = Flask("custom", root_path=str(tmp_path))
    ext = Custom(app)
    try:
        with caplog.at_level(logging.INFO, logger="request.summary"):
            app.test_client().get("/__lbheartbeat__")
        (record,) = summaries(caplog)
        assert (record.__dict__["uid"], record.__dict__["tenant"]) == ("user-7", "acme")
    finally:
        ext._bridge.stop()


def test_flask_login_user_id_and_broken_loader(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flask_login = pytest.importorskip("flask_login")

    class User(flask_login.UserMixin):  # type: ignore[misc,name-defined]
        def __init__(self, uid: str) -> None:
            self.id = uid

    app = Flask("login", root_path=str(tmp_path))
    app.secret_key = "test"
    manager = flask_login.LoginManager(app)

    @manager.request_loader
    def load(request: Any) -> User | None:
        token = request.headers.get("X-User")
        if token == "explode":
            raise RuntimeError("user store down")
        return User(token) if token else None

    ext = Dockerflow(app)
    try:
        client = app.test_client()
        with caplog.at_level(logging.INFO, logger="request.summary"):
            client.get("/__lbheartbeat__", headers={"X-User": "42"})
            client.get("/__lbheartbeat__")
            response = client.get("/__lbheartbeat__", headers={"X-User": "explode"})
        assert response.status_code == 200
        assert [r.__dict__["uid"] for r in summaries(caplog)] == ["42", "", ""]
    finally:
        ext._bridge.stop()


def test_cli_heartbeat_and_version(tmp_path: Path) -> None:
    app = Flask("cli", root_path=str(tmp_path / "app"))
    ext = Dockerflow(app)
    state = {"up": True}
    ext.check(lambda: [] if state["up"] else [Error("down", id="x.E1")], name="svc")
    (tmp_path / "version.json").write_text('{"version": "9"}')
    runner = app.test_cli_runner()
    try:
        ok = runner.invoke(args=["dockerflow", "heartbeat"])
        assert ok.exit_code == 0
        assert json.loads(ok.output)["checks"] == {"svc": "ok"}
        state["up"] = False
        bad = runner.invoke(args=["dockerflow", "heartbeat"])
        assert bad.exit_code == 1
        assert json.loads(bad.output)["status"] == "error"
        version = runner.invoke(args=["dockerflow", "version"])
        assert version.exit_code == 0
        assert json.loads(version.output) == {"version": "9"}
    finally:
        ext._bridge.stop()


def test_checks_run_with_the_app_context(app: Flask, dockerflow: Dockerflow) -> None:
    from flask import current_app

    seen: list[str] = []

    @dockerflow.check
    def sync_probe() -> None:
        seen.append(current_app.name)

    @dockerflow.check
    async def async_probe() -> None:
        seen.append(current_app.name)

    assert app.test_client().get("/__heartbeat__").status_code == 200
    assert sorted(seen) == ["testapp", "testapp"]


def test_generated_request_ids_are_uuid4(app: Flask, dockerflow: Dockerflow) -> None:
    import uuid

    client = app.test_client()
    ids = {client.get("/__lbheartbeat__").headers["X-Request-ID"] for _ in range(50)}
    assert len(ids) == 50
    for rid in ids:
        parsed = uuid.UUID(rid)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, rid)


def test_request_id_does_not_outlive_the_request(app: Flask, dockerflow: Dockerflow) -> None:
    from dockerflow.logging import request_id_context

    app.config["PROPAGATE_EXCEPTIONS"] = False
    client = app.test_client()
    client.get("/", headers={"X-Request-ID": "kept-1"})
    assert request_id_context.get() is None
    client.get("/boom", headers={"X-Request-ID": "kept-2"})
    assert request_id_context.get() is None


def test_close_stops_the_loop_and_heartbeats_still_work(app: Flask, dockerflow: Dockerflow) -> None:
    @dockerflow.check
    async def on_loop() -> None:
        return None

    client = app.test_client()
    assert client.get("/__heartbeat__").status_code == 200
    thread = dockerflow._bridge.thread
    assert thread is not None and thread.is_alive()
    dockerflow.close()
    assert not thread.is_alive()
    assert client.get("/__heartbeat__").status_code == 200


def test_close_ends_the_background_retries_of_a_check_failing_slowly(
    app: Flask, dockerflow: Dockerflow
) -> None:
    """A slow failure is retried in the background; after close() it is not, and its retry
    does not start the stopped loop again."""
    unblock = threading.Event()
    calls: list[int] = []

    @dockerflow.check(timeout=0.1)
    async def blocks_the_loop() -> None:
        calls.append(1)
        unblock.wait(10)  # never awaits: holds the loop past its timeout

    try:
        assert app.test_client().get("/__heartbeat__").status_code == 500
        thread = dockerflow._bridge.thread
        assert thread is not None
        closer = threading.Thread(target=dockerflow.close, kwargs={"timeout": 10})
        closer.start()
        # close() tells the app's engine first, then waits (bounded) for the blocked loop.
        scheduler = dockerflow._state(app).engine.scheduler
        deadline = time.monotonic() + 10
        while scheduler.retrying and time.monotonic() < deadline:
            time.sleep(0.01)
        unblock.set()
        closer.join(10)
        thread.join(10)
        assert not thread.is_alive()
        assert not dockerflow._bridge.running
        assert calls == [1]
    finally:
        unblock.set()


def test_empty_check_selection_is_refused(app: Flask, dockerflow: Dockerflow) -> None:
    dockerflow.check(lambda: [Error("down", id="x.E1")], name="down")
    response = app.test_client().get("/__heartbeat__?check=")
    assert response.status_code == 400
    assert response.json == {"error": "?check= names no check"}


def test_subset_heartbeats_do_not_change_the_tracked_status(
    app: Flask, dockerflow: Dockerflow
) -> None:
    dockerflow.check(lambda: [Error("down", id="x.E1")], name="down")
    dockerflow.check(lambda: None, name="up")
    changes: list[tuple[str | None, str]] = []

    @signals.heartbeat_status_changed.connect_via(app)
    def changed(sender: Flask, previous_status: str | None, report: Any, **extra: Any) -> None:
        changes.append((previous_status, report.status))

    client = app.test_client()
    client.get("/__heartbeat__")
    client.get("/__heartbeat__?check=up")  # subsets are silent: "ok" here is not a change
    client.get("/__heartbeat__?exclude=down")
    client.get("/__heartbeat__")
    assert changes == []
    dockerflow.registry.remove("down")
    client.get("/__heartbeat__")
    assert changes == [("error", "ok")]


def test_flask_exception_log_keeps_the_request_id(
    app: Flask, dockerflow: Dockerflow, caplog: pytest.LogCaptureFixture
) -> None:
    from dockerflow.logging import RequestIdLogFilter

    app.config["PROPAGATE_EXCEPTIONS"] = False
    rid_filter = RequestIdLogFilter()
    app.logger.addFilter(rid_filter)
    try:
        with caplog.at_level(logging.ERROR):
            app.test_client().get("/boom", headers={"X-Request-ID": "boom-1"})
    finally:
        app.logger.removeFilter(rid_filter)
    (flask_record,) = [r for r in caplog.records if r.name == app.logger.name]
    assert flask_record.__dict__["rid"] == "boom-1"


def test_reregistered_compat_check_uses_its_new_timeout(app: Flask, dockerflow: Dockerflow) -> None:
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.3)
        finished.set()

    compat_checks.register(slow, timeout=0.1)
    assert app.test_client().get("/__heartbeat__").json["checks"] == {"slow": "error"}
    # Let the timed-out run finish (a run still going would be shared, under its old timeout).
    assert finished.wait(10)
    engine = dockerflow._state(app).engine
    deadline = time.monotonic() + 10
    while engine.stuck_runs() and time.monotonic() < deadline:
        time.sleep(0.01)
    compat_checks.register(slow, timeout=2.0)
    assert app.test_client().get("/__heartbeat__").json["checks"] == {"slow": "ok"}
