from __future__ import annotations

import subprocess
import sys
import textwrap

OPTIONAL = ["sqlalchemy", "redis", "asyncpg", "alembic", "flask_sqlalchemy", "flask_migrate"]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_flask_facade_imports_no_optional_driver() -> None:
    result = run_python(
        f"""
        import sys
        from dockerflow.flask import Dockerflow, checks
        from dockerflow import checks as compat, health
        loaded = [name for name in {OPTIONAL!r} if name in sys.modules]
        print(loaded)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_flask_facade_works_with_optional_drivers_missing() -> None:
    result = run_python(
        f"""
        import sys
        import importlib.abc

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {OPTIONAL!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}")
                return None

        sys.meta_path.insert(0, Block())
        from flask import Flask
        from dockerflow.flask import Dockerflow

        app = Flask("blocked")
        ext = Dockerflow(app)
        ext.check(lambda: None, name="plain")
        response = app.test_client().get("/__heartbeat__")
        print(response.status_code, response.json["checks"])
        try:
            Dockerflow(Flask("redis_missing"), redis=object())
        except ImportError as exc:
            print("error:", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "200 {'plain': 'ok'}"
    assert "pip install 'dockerflow-async[redis]'" in lines[1]
