"""uWSGI and the drain: its signals are out of Python's sight, so nothing of it is replaced.

uWSGI handles SIGTERM in C, and Python's record of the handler is stale (``SIG_IGN``): the
extension must not install a handler of its own there (uWSGI's would be lost), and must say that
``DOCKERFLOW_DRAIN_SECONDS`` has no effect. uWSGI's own graceful stop
(``hook-master-start = unix_signal:15 gracefully_kill_them_all``) then works as without the
extension: a request in flight completes.

Skipped when the ``uwsgi`` binary is not installed (``pip install uwsgi`` builds it from source).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .gunicorn_helpers import APPS, REPO, START_TIMEOUT, free_port, get

DRAIN = 1.5
SLOW = 1.5
WORKERS = 2
#: Seconds uWSGI may take to stop once the slow request is over, on a loaded machine.
EXIT_SLACK = 5.0


def uwsgi_binary() -> str:
    beside = Path(sys.executable).with_name("uwsgi")
    found = str(beside) if beside.exists() else shutil.which("uwsgi")
    if found is None:
        pytest.skip("uwsgi is not installed (pip install uwsgi)")
    return found


def test_uwsgi_keeps_its_handler_and_its_graceful_stop(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKERFLOW_")}
    env.update(DOCKERFLOW_DRAIN_SECONDS=str(DRAIN), PYTHONUNBUFFERED="1")
    log = tmp_path / "uwsgi.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                uwsgi_binary(),
                *("--http-socket", f"127.0.0.1:{port}", "--home", sys.prefix),
                *("--pythonpath", str(APPS), "--module", "drain_wsgi"),
                *("--master", "--processes", str(WORKERS), "--threads", "4", "--lazy-apps"),
                *("--need-app", "--disable-logging"),
                *("--hook-master-start", "unix_signal:15 gracefully_kill_them_all"),
            ],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                assert process.poll() is None, log.read_text(errors="replace")
                try:
                    if get(port, "/__heartbeat__", timeout=1.0)[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.1)
            # A worker still loading the app misses uWSGI's graceful stop, and the master
            # then waits for it for a minute: SIGTERM only once both are ready.
            while log.read_text(errors="replace").count("(default app)") < WORKERS:
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.05)
            statuses = {get(port, "/__heartbeat__")[0] for _ in range(20)}
            assert statuses == {200}

            slow: dict[str, Any] = {}
            thread = threading.Thread(
                target=lambda: slow.update(result=get(port, f"/slow?seconds={SLOW}", timeout=30))
            )
            thread.start()
            while "SLOW_STARTED" not in log.read_text(errors="replace"):
                assert time.monotonic() < deadline + 10, log.read_text(errors="replace")
                time.sleep(0.02)
            sent = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=SLOW + EXIT_SLACK)
            stopped = time.monotonic() - sent
            thread.join(10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(5)
    text = log.read_text(errors="replace")
    print(f"\nuWSGI stopped {stopped:.2f}s after SIGTERM")
    assert slow["result"][0] == 200, text
    assert "Draining" not in text
    assert "DOCKERFLOW_DRAIN_SECONDS=1.5 has no effect in this process: under uWSGI" in text
    assert "Traceback" not in text
