"""The engine knows no HTTP: importing it must not import flask or werkzeug."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dockerflow.engine

ENGINE_DIR = Path(dockerflow.engine.__file__).parent
FORBIDDEN_WORDS = ("import flask", "from flask", "werkzeug")

PROBE = """
import sys
import dockerflow.engine, dockerflow.checks, dockerflow.health
web = sorted(m for m in sys.modules if m.split(".")[0] in ("flask", "werkzeug"))
assert not web, web
assert "dockerflow.flask" not in sys.modules
print("isolated")
"""


def test_engine_imports_without_flask() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "isolated"


def test_probe_detects_flask() -> None:
    # The probe itself must be able to fail: importing flask first trips it.
    result = subprocess.run(
        [sys.executable, "-c", "import flask\n" + PROBE],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "AssertionError" in result.stderr


def test_engine_source_does_not_mention_flask_or_werkzeug() -> None:
    sources = sorted(ENGINE_DIR.rglob("*.py"))
    assert {"_engine.py", "_scheduler.py", "_check.py", "_report.py", "_bridge.py"} <= {
        p.name for p in sources
    }
    offenders = [
        p.name
        for p in sources
        if any(word in p.read_text(encoding="utf-8") for word in FORBIDDEN_WORDS)
    ]
    assert offenders == []
