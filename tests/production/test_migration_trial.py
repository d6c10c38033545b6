"""The migration trial of issue 22, from the wheel: a python-dockerflow service, moved as
docs/migrating.rst says and nothing else, starts under gunicorn and answers as documented.

The service (``trial_service/``: an application factory with unbound extensions, Flask-SQLAlchemy
on the shared PostgreSQL, Flask-Migrate, redis-py, Flask-Login, one custom check) runs from a
virtual environment of its own, outside the checkout, holding the wheel with exactly the extras
migrating.rst names for ``db=``, ``migrate=`` and ``redis=`` and the service's own libraries.

Cost: the environment is made once per Python and set of requirements and kept under
``build/trial/`` (the first run installs from the package index, about a minute); every run
then builds the wheel from a copy of the sources (about 4 s) and reinstalls only it, so a run
adds about 15 s. ``make dist`` runs this module against the wheel it built, named by
``DOCKERFLOW_TRIAL_WHEEL``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .gunicorn_helpers import REPO, START_TIMEOUT, Gunicorn, free_port, get, postgres_url, redis_url

#: The extras docs/migrating.rst names for Dockerflow(db=..., migrate=..., redis=...).
EXTRAS = "flask,sqlalchemy,alembic,redis"
#: The service's own dependencies, as it had them with python-dockerflow.
SERVICE_REQUIREMENTS = (
    "flask-sqlalchemy",
    "flask-migrate",
    "flask-login",
    "psycopg2-binary",
    "gunicorn",
)
SERVICE = Path(__file__).resolve().parent / "trial_service"
#: The variable ``make dist`` sets to the wheel it built.
WHEEL_ENV = "DOCKERFLOW_TRIAL_WHEEL"
#: Seconds pip may take to make the environment (the first run downloads every library).
INSTALL_TIMEOUT = 600

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def test_migrating_rst_names_these_extras() -> None:
    text = (REPO / "docs" / "migrating.rst").read_text()
    assert f"pip install 'dockerflow-async[{EXTRAS}]'" in text


def _pip(python: Path, *args: str, timeout: float = INSTALL_TIMEOUT) -> None:
    result = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"pip {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


def _build_wheel(out: Path) -> Path:
    """Build the wheel from a copy of the sources, so that the checkout gets no build files."""
    given = os.environ.get(WHEEL_ENV)
    if given:
        return Path(given).resolve()
    source = out / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(
        REPO / "dockerflow", source / "dockerflow", ignore=shutil.ignore_patterns("__pycache__")
    )
    _pip(Path(sys.executable), "wheel", "--no-deps", "-w", str(out), str(source))
    (wheel,) = out.glob("dockerflow_async-*.whl")
    return wheel


def _environment_key() -> str:
    """What the kept environment depends on: the Python, the requirements and the extras'."""
    pyproject = (REPO / "pyproject.toml").read_text()
    # From the dependencies to the end of the extras (tomllib is not in Python 3.10).
    start = pyproject.index("\ndependencies = ")
    requirements = pyproject[start : pyproject.index("\n[tool.", start)]
    text = repr((sys.version_info[:2], EXTRAS, SERVICE_REQUIREMENTS, requirements))
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"py{sys.version_info[0]}{sys.version_info[1]}-{digest}"


@pytest.fixture(scope="module")
def trial_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The Python of the service's environment, holding the freshly built wheel."""
    wheel = _build_wheel(tmp_path_factory.mktemp("wheel"))
    root = REPO / "build" / "trial"
    root.mkdir(parents=True, exist_ok=True)
    venv = root / _environment_key()
    python = venv / "bin" / "python"
    # Suites of one checkout run side by side (make -j2 test-pythons test-min): the one that
    # installs holds the lock alone, and those that serve from the environment share it.
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
            _pip(python, "install", f"{wheel}[{EXTRAS}]", *SERVICE_REQUIREMENTS)
            (venv / ".complete").touch()
        else:
            _pip(python, "install", "--no-deps", "--force-reinstall", str(wheel))
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield python


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    import psycopg2
    from sqlalchemy.engine import make_url

    url = postgres_url()
    name = f"dockerflow_trial_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(url)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield (
            make_url(url)
            .set(drivername="postgresql+psycopg2", database=name)
            .render_as_string(hide_password=False)
        )
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


# Builds a wheel, keeps a venv per Python (made at the first run), migrates and starts gunicorn:
# well past the suite's 60 s on a loaded machine the first time.
@pytest.mark.timeout(300)
def test_the_service_runs_from_the_wheel(trial_python: Path, tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    shutil.copytree(
        SERVICE, app_dir / "trial_service", ignore=shutil.ignore_patterns("__pycache__")
    )
    bin_dir = trial_python.parent
    with scratch_database() as database:
        env = {
            # Nothing of the checkout or of the suite's environment leaks in.
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(tmp_path),
            "XDG_RUNTIME_DIR": str(tmp_path),
            "PYTHONUNBUFFERED": "1",
            "TRIAL_DATABASE_URL": database,
            "TRIAL_REDIS_URL": redis_url(),
            "FLASK_APP": "trial_service:create_app",
        }
        where = subprocess.run(
            [
                str(trial_python),
                "-c",
                "import dockerflow, flask_migrate; print(dockerflow.__file__)",
            ],
            cwd=app_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert where.stdout.startswith(str(trial_python.parents[1])), where.stdout
        # The migrations are a step of their own before the server starts (docs/deployment.rst).
        upgrade = subprocess.run(
            [str(bin_dir / "flask"), "db", "upgrade"],
            cwd=app_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert upgrade.returncode == 0, upgrade.stderr
        port = free_port()
        stdout = (tmp_path / "stdout.log").open("wb")
        stderr = (tmp_path / "stderr.log").open("wb")
        process = subprocess.Popen(
            [
                str(bin_dir / "gunicorn"),
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "--worker-class",
                "gthread",
                "--threads",
                "4",
                "--graceful-timeout",
                "3",
                "trial_service:create_app()",
            ],
            cwd=app_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
        server = Gunicorn(port, process, tmp_path, [stdout, stderr])
        try:
            server.wait_until_serving(time.monotonic() + START_TIMEOUT)
            status, body = get(port, "/__heartbeat__")
            assert status == 200, body
            assert body["checks"] == {
                "queue_depth": "ok",
                "check_database_connected": "ok",
                "check_redis_connected": "ok",
                "check_migrations_applied": "ok",
            }, (body, server.output)
            assert get(port, "/__lbheartbeat__")[0] == 200
            assert get(port, "/login/7")[0] == 200
        finally:
            server.stop()
        assert "Traceback" not in server.output, server.output
