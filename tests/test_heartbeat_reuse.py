"""What a heartbeat works out once and reuses: which checks a query selects, the encoded
body of a passing report, the settings it reads and the silenced IDs made of them. Reuse must
never make the heartbeat lie: every change of the checks, their outcome, the query, the
settings, the signals' receivers or the app's JSON encoding shows in the next heartbeat."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import flask
import pytest
from flask import Flask

from dockerflow.checks import Error, Warning, clear_checks, register
from dockerflow.flask import Dockerflow, NotInitializedError, signals
from dockerflow.flask._bodies import MAX_KEPT
from dockerflow.flask._extension import MAX_SELECTIONS
from dockerflow.health_json import MEDIA_TYPE as HEALTH_JSON


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = Flask("reuse", root_path=str(tmp_path / "app"))
    yield app
    ext = app.extensions.get("dockerflow")
    if ext is not None:
        ext.close()
    clear_checks()


def heartbeat(app: Flask, path: str = "/__heartbeat__", **headers: str) -> Any:
    return app.test_client().get(path, headers=headers)


def jsonify_bytes(app: Flask, body: dict[str, Any]) -> bytes:
    """The body Flask's own jsonify makes of ``body`` in ``app``, as it is configured now."""
    with app.app_context():
        return flask.jsonify(body).get_data()


def passing(*names: str) -> dict[str, Any]:
    return {"status": "ok", "checks": dict.fromkeys(names, "ok"), "details": {}}


def test_a_passing_body_served_again_is_the_one_jsonify_makes(app: Flask) -> None:
    ext = Dockerflow(app)
    ext.check(lambda: [], name="b")
    ext.check(lambda: [], name="a")
    expected = jsonify_bytes(app, passing("b", "a"))
    for _ in range(3):  # the first made as usual, the others from what it kept
        response = heartbeat(app)
        assert response.status_code == 200
        assert response.data == expected
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["Content-Length"] == str(len(expected))
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Vary"] == "Accept"


def test_a_passing_response_served_again_has_the_first_ones_headers_in_order(
    app: Flask,
) -> None:
    ext = Dockerflow(app)
    ext.check(lambda: [], name="up")
    first, *again = [heartbeat(app) for _ in range(3)]

    def headers(response: Any) -> list[tuple[str, str]]:
        return [(k, v) for k, v in response.headers if k != "X-Request-ID"]

    length = str(len(first.data))
    assert headers(first)[:2] == [("Content-Type", "application/json"), ("Content-Length", length)]
    for response in again:
        assert headers(response) == headers(first)
        assert response.data == first.data
        # A hook may still replace the body: the length follows it.
        response.set_data(b"{}")
        assert response.headers["Content-Length"] == "2"


def test_each_response_is_a_new_object_with_its_own_request_id(app: Flask) -> None:
    ext = Dockerflow(app)
    ext.check(lambda: [], name="up")
    seen: list[int] = []

    @app.after_request
    def stamp(response: flask.Response) -> flask.Response:
        # A hook that adds to the response: a response shared between requests would collect.
        seen.append(id(response))
        response.headers.add("X-Stamp", "1")
        return response

    responses = [heartbeat(app) for _ in range(3)]
    assert [r.headers.getlist("X-Stamp") for r in responses] == [["1"]] * 3
    assert len({r.headers["X-Request-ID"] for r in responses}) == 3


def test_a_change_of_outcome_shows_in_the_next_heartbeat(app: Flask) -> None:
    ext = Dockerflow(app)
    failing = {"now": False}
    ext.check(lambda: [Error("down", id="x.E1")] if failing["now"] else [], name="flaky")
    assert heartbeat(app).json == passing("flaky")
    failing["now"] = True
    response = heartbeat(app)
    assert response.status_code == 500
    assert response.json["details"]["flaky"]["messages"] == {"x.E1": "down"}
    failing["now"] = False
    response = heartbeat(app)
    assert (response.status_code, response.json) == (200, passing("flaky"))


def test_checks_registered_or_removed_later_show_in_the_next_heartbeat(app: Flask) -> None:
    ext = Dockerflow(app)
    ext.check(lambda: [], name="first")
    assert heartbeat(app).json == passing("first")
    ext.check(lambda: [], name="second")
    assert heartbeat(app).json == passing("first", "second")
    ext.registry.remove("first")
    assert heartbeat(app).json == passing("second")
    # Module-level checks, as python-dockerflow registers them, and edits of get_checks().
    register(lambda: [], name="module_level")
    assert heartbeat(app).json == passing("second", "module_level")
    clear_checks()
    assert heartbeat(app).json == passing("second")


def test_a_check_registered_again_under_its_name_is_the_one_run(app: Flask) -> None:
    ext = Dockerflow(app)
    ext.check(lambda: [], name="db")
    assert heartbeat(app).status_code == 200
    ext.check(lambda: [Error("replaced", id="x.E2")], name="db")
    response = heartbeat(app)
    assert (response.status_code, response.json["details"]["db"]["messages"]) == (
        500,
        {"x.E2": "replaced"},
    )


def test_each_query_gets_its_own_selection_and_body(app: Flask) -> None:
    ext = Dockerflow(app)
    for name in ("a", "b", "c"):
        ext.check(lambda: [], name=name, groups=["front"] if name != "c" else [])
    for _ in range(2):  # the second round from what the first worked out
        assert heartbeat(app).json == passing("a", "b", "c")
        assert heartbeat(app, "/__heartbeat__?exclude=b").json == passing("a", "c")
        assert heartbeat(app, "/__heartbeat__?check=c").json == passing("c")
        assert heartbeat(app, "/__heartbeat__/front").json == passing("a", "b")
        assert heartbeat(app, "/__heartbeat__/front?exclude=a").json == passing("b")
        # Errors are never kept: each such request is answered with its error.
        assert heartbeat(app, "/__heartbeat__?check=nope").status_code == 400
        assert heartbeat(app, "/__heartbeat__?check=a&exclude=a").status_code == 400
        assert heartbeat(app, "/__heartbeat__/nope").status_code == 404


def test_what_is_kept_is_bounded_whatever_the_queries(app: Flask) -> None:
    ext = Dockerflow(app)
    for i in range(3):
        ext.check(lambda: [], name=f"c{i}")
    client = app.test_client()
    for i in range(3 * MAX_SELECTIONS):
        # Every query distinct (an unknown name to leave out is ignored), two bodies in turn.
        response = client.get(f"/__heartbeat__?exclude=c{i % 2},unknown{i}")
        assert response.json == passing(*(f"c{j}" for j in range(3) if j != i % 2))
    state = ext._state(app)
    assert len(state.selections[1]) <= MAX_SELECTIONS
    assert len(state.passing_bodies._kept) <= MAX_KEPT


def test_the_apps_json_encoding_is_followed(app: Flask) -> None:
    ext = Dockerflow(app)
    ext.check(lambda: [], name="b")
    ext.check(lambda: [], name="a")
    assert heartbeat(app).data == jsonify_bytes(app, passing("b", "a"))
    # Debug mode indents Flask's JSON.
    app.debug = True
    indented = heartbeat(app).data
    assert indented == jsonify_bytes(app, passing("b", "a"))
    assert b"\n" in indented
    app.debug = False
    # Keys in the order given rather than sorted: a new JSON provider (Flask 2.2+), the config
    # key before it.
    if hasattr(app, "json"):
        from flask.json.provider import DefaultJSONProvider

        class Unsorted(DefaultJSONProvider):
            sort_keys = False

        app.json = Unsorted(app)
    else:  # pragma: no cover - Flask < 2.2 (make test-min)
        app.config["JSON_SORT_KEYS"] = False
    body = heartbeat(app).data
    assert body == jsonify_bytes(app, passing("b", "a"))
    assert list(json.loads(body)["checks"]) == ["b", "a"]  # registration order, not sorted


def test_a_body_served_again_keeps_its_reports_time_for_health_json(app: Flask) -> None:
    """With the report cache on, a report first served as the Dockerflow JSON body made from
    a kept body, then as health+json, keeps the time it was made at."""
    app.config["DOCKERFLOW_HEARTBEAT_CACHE_TTL"] = 60
    ext = Dockerflow(app)
    ext.check(lambda: [], name="up")
    assert heartbeat(app).status_code == 200  # the body is kept
    ext._state(app).engine.cache.clear()  # the next heartbeat makes a new report
    before = datetime.now(timezone.utc)
    assert heartbeat(app).status_code == 200  # ... served from the kept body
    after = datetime.now(timezone.utc)
    time.sleep(0.05)
    body = heartbeat(app, Accept=HEALTH_JSON).json
    (entry,) = body["checks"]["up:responseTime"]
    made = datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= made <= after


def test_heartbeat_settings_changed_between_heartbeats_are_seen(app: Flask) -> None:
    ext = Dockerflow(app)
    ext.check(lambda: [Error("down", id="x.E1"), Warning("meh", id="x.W1")], name="down")
    browser = {"Accept": "text/html"}
    for _ in range(2):  # whatever is worked out once is worked out by now
        assert heartbeat(app).status_code == 500
    app.config["DOCKERFLOW_HEARTBEAT_FAILED_STATUS_CODE"] = 503
    assert heartbeat(app).status_code == 503
    assert heartbeat(app, **browser).content_type.startswith("text/html")
    app.config["DOCKERFLOW_HEARTBEAT_PAGE"] = False
    assert heartbeat(app, **browser).content_type == "application/json"
    app.config["DOCKERFLOW_HEARTBEAT_PAGE"] = True
    assert heartbeat(app, **browser).content_type.startswith("text/html")
    assert heartbeat(app).json["details"]
    app.config["DOCKERFLOW_HEARTBEAT_DETAILS"] = "debug"
    assert heartbeat(app).json["details"] == {}
    assert heartbeat(app, **browser).content_type == "application/json"
    app.debug = True  # read on every heartbeat too
    assert heartbeat(app).json["details"]
    app.debug = False
    assert heartbeat(app).json["details"] == {}
    app.config["DOCKERFLOW_HEARTBEAT_DETAILS"] = "always"
    app.config["DOCKERFLOW_SILENCED_CHECKS"] = "x.E1"
    response = heartbeat(app)
    assert (response.status_code, response.json["status"]) == (200, "warning")
    app.config["DOCKERFLOW_SILENCED_CHECKS"] = "x.E1,x.W1"
    assert heartbeat(app).json["status"] == "ok"
    app.config["DOCKERFLOW_SILENCED_CHECKS"] = ""
    assert heartbeat(app).status_code == 503


def test_silenced_checks_of_the_extension_replaced_or_edited_are_seen(app: Flask) -> None:
    ext = Dockerflow(app, silenced_checks=["x.E1"])
    ext.check(lambda: [Error("one", id="x.E1"), Error("two", id="x.E2")], name="e")
    assert heartbeat(app).status_code == 500
    ext.silenced_checks.append("x.E2")
    assert heartbeat(app).status_code == 200
    ext.silenced_checks = ["x.E2"]
    assert heartbeat(app).status_code == 500
    ext.silenced_checks[0] = "x.E1"
    ext.silenced_checks.append("x.E2")
    assert heartbeat(app).status_code == 200
    # Another set given to the engine meanwhile is put right at the next heartbeat.
    ext._state(app).engine.silenced_ids = frozenset()
    assert heartbeat(app).status_code == 200


def test_receivers_connected_after_heartbeats_get_the_signals(app: Flask) -> None:
    ext = Dockerflow(app)
    failing = {"now": False}
    ext.check(lambda: [Error("down", id="x.E1")] if failing["now"] else [], name="flaky")
    for _ in range(3):  # nobody listens yet: nothing is sent
        assert heartbeat(app).status_code == 200
    got: list[tuple[str, Any]] = []

    def on_passed(sender: Flask, level: int) -> None:
        got.append(("passed", level))

    def on_failed(sender: Flask, level: int) -> None:
        got.append(("failed", level))

    def on_checked(sender: Flask, **kwargs: Any) -> None:
        got.append(("checked", kwargs["passed"]))

    def on_changed(sender: Flask, **kwargs: Any) -> None:
        got.append(("changed", (kwargs["previous_status"], kwargs["report"].status)))

    pairs = [
        (signals.heartbeat_passed, on_passed),
        (signals.heartbeat_failed, on_failed),
        (signals.heartbeat_checked, on_checked),
        (signals.heartbeat_status_changed, on_changed),
    ]
    for signal, receiver in pairs:
        signal.connect(receiver, app)
    try:
        assert heartbeat(app).status_code == 200
        failing["now"] = True
        assert heartbeat(app).status_code == 500
        assert heartbeat(app).status_code == 500
    finally:
        for signal, receiver in pairs:
            signal.disconnect(receiver, app)
    assert got == [
        ("passed", 0),
        ("checked", True),
        ("failed", 40),
        ("checked", False),
        ("changed", ("ok", "error")),
        ("failed", 40),
        ("checked", False),
    ]


def test_one_extension_serving_two_apps_in_turn_uses_each_ones_state(
    app: Flask, tmp_path: Path
) -> None:
    other = Flask("other", root_path=str(tmp_path / "other"))
    app.config["DOCKERFLOW_HEARTBEAT_FAILED_STATUS_CODE"] = 503
    ext = Dockerflow()
    ext.init_app(app)
    ext.init_app(other)
    ext.check(lambda: [Error("down", id="x.E1")], name="down")
    for _ in range(2):  # the state last looked up is never another app's
        assert heartbeat(app).status_code == 503
        assert heartbeat(other).status_code == 500
    assert ext._state(app) is not ext._state(other)
    with pytest.raises(NotInitializedError):
        ext._state(Flask("never-set-up"))
    assert heartbeat(app).status_code == 503
