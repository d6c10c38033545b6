"""The status page in a real browser: Chromium from the distribution's packages, driven by
Playwright, loading ``/__heartbeat__`` from a running gunicorn under a strict
Content-Security-Policy. It renders, shows the failing check's message (masked), updates by
itself when the check recovers, logs no console error of its own and asks no other origin.

Skipped where Chromium or Playwright is missing, except under ``CI=true``, where it fails
(``.ci/run`` installs both). One browser launch and two page loads: about 10 s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from .gunicorn_helpers import START_TIMEOUT, Gunicorn, get, start_gunicorn

CHROMIUM = "/usr/bin/chromium"
#: Chromium's switches for a quiet, headless run in a sandbox of the test's own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
#: The one console line Chromium writes of itself for any page answered with 500, which the
#: heartbeat must be while a critical check fails.
FAILED_STATUS_LINE = "Failed to load resource: the server responded with a status of 500"


def _missing(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        _missing(f"{CHROMIUM} not found: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _missing(f"playwright not installed ({exc}): pip install -e '.[test]'")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Gunicorn, Path]]:
    flag = tmp_path / "payments-down"
    flag.touch()
    made = start_gunicorn(
        tmp_path, "page_app:create_app()", ["-w", "1"], {"PAGE_APP_FAIL_FLAG": str(flag)}
    )
    try:
        made.wait_until_serving(time.monotonic() + START_TIMEOUT)
        yield made, flag
    finally:
        made.stop()
    assert made.forbidden_output() == []


def test_the_page_renders_shows_the_failure_and_updates_when_it_recovers(
    browser: Any, server: tuple[Gunicorn, Path], tmp_path: Path
) -> None:
    gunicorn, flag = server
    url = f"http://127.0.0.1:{gunicorn.port}/__heartbeat__"
    origin = f"http://127.0.0.1:{gunicorn.port}"
    # A probe's */* still gets the JSON, with the heartbeat's status.
    status, body = get(gunicorn.port, "/__heartbeat__")
    assert status == 500 and body["checks"]["payments"] == "error"

    page = browser.new_page(viewport={"width": 1100, "height": 760})
    console: list[Any] = []
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda message: console.append(message))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: requests.append(request.url))

    response = page.goto(url)
    assert response is not None and response.status == 500  # a failing heartbeat, as HTML
    assert response.headers["content-type"].startswith("text/html")
    failing = page.locator("[data-check=payments]")
    assert failing.get_attribute("data-status") == "error"
    message = failing.locator(".msg").inner_text()
    assert message == "payments API refused the connection: https://svc:***@payments.internal/"
    assert "hunter2" not in page.content()
    assert page.locator("[data-check=search] .tag").first.inner_text() == "non-critical"
    assert "round_trip" in page.locator("[data-check=database] .data").inner_text()
    page.screenshot(path=str(tmp_path / "status-page.png"), full_page=True)

    # The check recovers: the page's own refresh (every 5 s) shows it, with no reload.
    flag.unlink()
    page.wait_for_selector("[data-check=payments][data-status=ok]", timeout=20_000)
    page.wait_for_selector("main[data-status=warning]", timeout=5_000)
    strip = page.locator("[data-check=payments] .strip .cell")
    assert strip.first.get_attribute("class") == "cell s-error"
    assert strip.last.get_attribute("class") == "cell s-ok"
    assert page.locator("[data-check=payments] .changed").inner_text().startswith("ok for ")
    assert page.title().startswith("WARNING")

    assert errors == []
    # Chromium reports each 500 answer of the heartbeat itself on the console; anything
    # else (a CSP violation, a script error, an asset not found) is a defect of the page.
    own = [
        f"{message.type}: {message.text} ({message.location.get('url')})"
        for message in console
        if message.type in ("error", "warning")
        and not (
            message.text.startswith(FAILED_STATUS_LINE)
            and message.location.get("url", "").startswith(url)
        )
    ]
    assert own == []
    assert {f"{urlsplit(r).scheme}://{urlsplit(r).netloc}" for r in requests} == {origin}
    page.close()
