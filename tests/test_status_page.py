"""The status page: who gets it, what it shows (never more than the JSON), its status code, its
assets, and the recent results behind it (the page's strip and ``/__heartbeat__/history``)."""

from __future__ import annotations

import html.parser
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from dockerflow.checks import CheckData, Error, Warning
from dockerflow.engine import CheckResult as Result
from dockerflow.engine import Entry, History, Report, aggregate
from dockerflow.flask import Dockerflow
from dockerflow.flask._page import wants_html

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"
FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    return Flask("pageapp", root_path=str(tmp_path / "app"))


@pytest.fixture
def dockerflow(app: Flask) -> Iterator[Dockerflow]:
    ext = Dockerflow(app)
    ext.check(lambda: [CheckData("round_trip", 0.002, unit="s")], name="database")
    ext.check(lambda: [Warning("queue is long", id="x.W1"), CheckData("depth", 12)], name="queue")
    yield ext
    ext._bridge.stop()


def get(app: Flask, accept: str | None = None, path: str = "/__heartbeat__") -> Any:
    headers = {} if accept is None else {"Accept": accept}
    return app.test_client().get(path, headers=headers)


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (None, False),
        ("*/*", False),
        ("application/json", False),
        ("application/health+json", False),
        ("text/*", False),  # a wildcard never selects the page
        ("text/html;q=0", False),
        ("text/html;q=0.5, application/json", False),
        ("text/html, application/json", False),  # a tie keeps the JSON
        ("application/health+json, text/html;q=0.5", False),
        (BROWSER, True),
        (FIREFOX, True),
        ("text/html", True),
        ("application/xhtml+xml", True),
        ("text/html, application/json;q=0.9", True),
    ],
)
def test_only_a_client_preferring_html_by_name_gets_the_page(
    accept: str | None, html: bool
) -> None:
    parsed = parse_accept_header(accept, MIMEAccept)
    assert wants_html(parsed) is html


#: The heartbeat body of main before the status page (and values per check) existed, for a
#: passing check and a warning one that report no values: python-dockerflow's clients read it.
TODAY = (
    b'{"checks":{"database":"ok","queue":"warning"},"details":{"queue":{"level":30,'
    b'"messages":{"x.W1":"queue is long"},"status":"warning"}},"status":"warning"}\n'
)


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/*"])
@pytest.mark.parametrize("page", [True, False])
def test_probes_and_scripts_keep_the_json_byte_for_byte(
    app: Flask, accept: str | None, page: bool
) -> None:
    app.config["DOCKERFLOW_HEARTBEAT_PAGE"] = page
    ext = Dockerflow(app)
    ext.check(lambda: [], name="database")
    ext.check(lambda: [Warning("queue is long", id="x.W1")], name="queue")
    try:
        response = get(app, accept)
    finally:
        ext._bridge.stop()
    assert response.status_code == 200
    assert response.content_type == "application/json"
    assert response.data == TODAY
    assert response.headers["Vary"] == "Accept"


def test_a_browser_gets_the_page_with_the_heartbeats_status(
    app: Flask, dockerflow: Dockerflow
) -> None:
    response = get(app, BROWSER)
    assert response.status_code == 200
    assert response.content_type == "text/html; charset=utf-8"
    assert response.headers["Vary"] == "Accept"
    assert response.headers["Cache-Control"] == "no-store"
    text = response.get_data(as_text=True)
    assert "queue is long" in text and "x.W1" in text and "round_trip" in text

    dockerflow.check(lambda: [Error("payments down", id="x.E1")], name="payments")
    app.config["DOCKERFLOW_HEARTBEAT_FAILED_STATUS_CODE"] = 503
    failing = get(app, BROWSER)
    assert failing.status_code == 503  # a failing heartbeat is still 5xx as a page
    assert failing.headers["Vary"] == "Accept"
    assert "payments down" in failing.get_data(as_text=True)


@pytest.mark.parametrize(
    ("config", "debug"),
    [
        ({"DOCKERFLOW_HEARTBEAT_PAGE": False}, False),
        ({"DOCKERFLOW_HEARTBEAT_DETAILS": "never"}, False),
        ({"DOCKERFLOW_HEARTBEAT_DETAILS": "debug"}, False),
    ],
)
def test_where_the_page_is_off_a_browser_gets_the_json_and_no_page_route_answers(
    app: Flask, dockerflow: Dockerflow, config: dict[str, Any], debug: bool
) -> None:
    app.config.update(config)
    app.debug = debug
    response = get(app, BROWSER)
    assert response.content_type == "application/json"
    # Nor are the results recorded: turned on now, the page has seen none of them.
    app.config.update(DOCKERFLOW_HEARTBEAT_PAGE=True, DOCKERFLOW_HEARTBEAT_DETAILS="always")
    assert dockerflow._state(app).history.snapshot() == {}
    app.config.update(config)
    for path in (
        "/__heartbeat__/history",
        "/__heartbeat__/assets/page.js",
        "/__heartbeat__/icon/ok.svg",
    ):
        assert get(app, None, path).status_code == 404, path


def test_details_debug_in_debug_mode_serves_the_page(app: Flask, dockerflow: Dockerflow) -> None:
    app.config["DOCKERFLOW_HEARTBEAT_DETAILS"] = "debug"
    app.debug = True
    assert get(app, BROWSER).content_type.startswith("text/html")


def test_the_page_shows_no_more_than_the_json(app: Flask, dockerflow: Dockerflow) -> None:
    app.config["DOCKERFLOW_SILENCED_CHECKS"] = "x.SILENT"

    def leaky() -> list[Any]:
        return [
            Error("cannot reach postgresql://app:hunter2@db/app", id="x.E2"),
            Warning("this one is silenced", id="x.SILENT"),
            CheckData("dsn", "redis://:hunter2@cache:6379/0"),
        ]

    dockerflow.check(leaky)
    text = get(app, BROWSER).get_data(as_text=True)
    assert "hunter2" not in text
    assert "postgresql://app:***@db/app" in text and "redis://:***@cache:6379/0" in text
    assert "silenced" not in text


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "style" or "style" in names or any(n.startswith("on") for n in names):
            self.inline.append(tag)
        if tag == "script" and not names.get("src"):
            self.inline.append("inline script")
        for key in ("src", "href"):
            if names.get(key):
                self.sources.append(str(names[key]))


def test_the_page_has_no_inline_script_or_style_and_its_assets_are_served(
    app: Flask, dockerflow: Dockerflow
) -> None:
    tags = _Tags()
    tags.feed(get(app, BROWSER).get_data(as_text=True))
    assert tags.inline == []
    assert all(source.startswith("/__heartbeat__") for source in tags.sources), tags.sources
    for source in tags.sources:
        response = get(app, None, source)
        assert response.status_code == 200, source
    js = get(app, None, "/__heartbeat__/assets/page.js")
    assert js.content_type.startswith("text/javascript")
    assert get(app, None, "/__heartbeat__/assets/nothing.js").status_code == 404


def test_groups_are_shown_where_checks_have_them(app: Flask, dockerflow: Dockerflow) -> None:
    # Check.groups (named check groups) may not exist yet: the page reads it with getattr.
    check = dockerflow.registry.get("database")
    assert check is not None
    object.__setattr__(check, "groups", ("storage", "critical-path"))
    text = get(app, BROWSER).get_data(as_text=True)
    assert "group: storage" in text and "group: critical-path" in text


def test_history_json_is_bounded_and_says_when_a_check_changed(
    app: Flask, dockerflow: Dockerflow
) -> None:
    failing = {"on": False}
    dockerflow.check(lambda: [Error("down", id="x.E3")] if failing["on"] else [], name="flappy")
    for i in range(History.size + 5):
        failing["on"] = i >= History.size  # the last five fail
        get(app)
    body = get(app, None, "/__heartbeat__/history").get_json()
    assert body["size"] == History.size
    flappy = body["checks"]["flappy"]
    assert len(flappy["results"]) == History.size
    assert flappy["status"] == "error"
    assert flappy["changed_at"] == flappy["results"][-5]["time"]
    assert flappy["results"][-1]["messages"] == {"x.E3": "down"}
    assert set(flappy["results"][-1]) == {"time", "status", "level", "duration", "messages", "data"}
    database = body["checks"]["database"]
    assert database["changed_at"] is None
    assert database["results"][0]["data"] == {"round_trip": {"value": 0.002, "unit": "s"}}


def test_a_group_called_history_keeps_its_url_and_the_history_is_there_otherwise(
    app: Flask, dockerflow: Dockerflow
) -> None:
    """/__heartbeat__/history is the recent results, unless a group has that name: then the
    probe asking for the group gets the group's heartbeat, never the history."""
    assert "checks" in get(app, None, "/__heartbeat__/history").get_json()
    dockerflow.check(lambda: [Error("down", id="x.E4")], name="archive", groups=["history"])
    response = get(app, None, "/__heartbeat__/history")
    assert response.status_code == 500
    assert response.get_json()["checks"] == {"archive": "error"}


def _report(level_text: str) -> Report:
    messages = () if level_text == "ok" else (Error("x", id="x.E9"),)
    return aggregate([Result("c", messages, 0.1)])


def test_history_records_a_report_served_again_once_and_keeps_text_short() -> None:
    history = History()
    report = _report("error")
    history.record(report, at=1.0)
    history.record(report, at=2.0)  # the cache served the same report again
    history.record(_report("ok"), at=3.0)
    record = history.snapshot()["c"]
    assert [entry.at for entry in record.entries] == [1.0, 3.0]
    assert record.first_seen == 1.0 and record.changed_at == 3.0
    long = aggregate([Result("c", (Error("y" * 5000, id="x.E9"),), 0.1)])
    history.record(long, at=4.0)
    assert len(history.snapshot()["c"].entries[-1].messages[0][1]) == 200


def test_history_of_a_result_reported_again_is_one_entry_per_heartbeat() -> None:
    history = History()
    for at in (1.0, 2.0, 3.0):  # the same outcome each time, each a report of its own
        history.record(_report("error"), at=at)
    before = history.snapshot()
    history.record(_report("ok"), at=4.0)
    (entries,) = [record.entries for record in before.values()]
    assert [(e.at, e.level, e.status) for e in entries] == [(t, 40, "error") for t in (1, 2, 3)]
    assert all(isinstance(e, Entry) for e in entries)
    assert entries[0].messages == entries[2].messages == (("x.E9", "x"),)
    assert entries[1].messages is entries[0].messages  # the texts are shared, not cut again
    record = history.snapshot()["c"]
    assert [(e.at, e.messages) for e in record.entries[2:]] == [(3.0, (("x.E9", "x"),)), (4.0, ())]
    assert before["c"].changed_at is None and record.changed_at == 4.0  # a copy, not a view
