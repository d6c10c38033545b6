"""Smoke test of an installed dockerflow-async wheel, as a user gets it from an index.

``make dist`` installs the wheel with the ``flask`` extra into a throwaway venv outside the
checkout and runs this file with that venv's Python, from a temporary directory, in isolated mode
(``-I``) and with warnings as errors::

    python -I -W error .ci/dist_smoke.py 0.1.0

It uses only the standard library and what the wheel installs. It exits with status 1, naming
the failure, if the package is not the venv's own, its version is not the expected one, or a
Dockerflow endpoint or the ``flask dockerflow`` command does not answer as documented.
"""

from __future__ import annotations

import json
import logging
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path

import flask

import dockerflow
import dockerflow.flask
from dockerflow.checks import Error

VERSION_JSON = {
    "source": "https://example.com/smoke",
    "version": "1.2.3",
    "commit": "0123456789abcdef0123456789abcdef01234567",
    "build": "https://example.com/builds/1",
}


def check(condition: bool, message: str) -> None:
    """Stop with ``message`` unless ``condition`` holds.

    :param condition: what must be true.
    :param message: what went wrong, printed when it is not.
    :raises SystemExit: if ``condition`` is false.
    """
    if not condition:
        raise SystemExit(f"smoke test failed: {message}")


def check_installed(expected: str) -> None:
    """The package is this venv's installed copy, of the expected version, typed.

    :param expected: the version the wheel must carry.
    """
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    package = Path(dockerflow.__file__).resolve().parent
    check(package.parent == site, f"dockerflow imported from {package}, not from {site}")
    check(dockerflow.__version__ == expected, f"__version__ {dockerflow.__version__!r}")
    installed = metadata.version("dockerflow-async")
    check(installed == expected, f"installed metadata says {installed!r}, expected {expected!r}")
    check((package / "py.typed").is_file(), f"no py.typed in {package}")
    recorded = {str(path) for path in metadata.files("dockerflow-async") or []}
    check("dockerflow/py.typed" in recorded, "py.typed is not in the wheel's RECORD")


class Records(logging.Handler):
    """Keeps the messages of the log records it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record's message.

        :param record: the record.
        """
        self.messages.append(record.getMessage())


def check_endpoints(version_dir: str) -> None:
    """A Flask app with ``Dockerflow(app)`` answers the Dockerflow endpoints and command.

    :param version_dir: a directory holding ``version.json``.
    """
    records = Records()
    logging.getLogger().addHandler(records)
    app = flask.Flask("smoke")
    extension = dockerflow.flask.Dockerflow(app, version_path=version_dir)

    @extension.check
    def sync_check() -> list[Error]:
        return []

    @extension.check
    async def async_check() -> list[Error]:
        return []

    @extension.check
    def failing_check() -> list[Error]:
        return [Error("failing on purpose", id="smoke.health.E001")]

    try:
        client = app.test_client()
        response = client.get("/__lbheartbeat__")
        check(response.status_code == 200, f"/__lbheartbeat__ answered {response.status_code}")

        response = client.get("/__heartbeat__?check=sync_check,async_check")
        check(response.status_code == 200, f"/__heartbeat__ answered {response.status_code}")
        body = response.get_json()
        check(body["status"] == "ok", f"/__heartbeat__ said {body}")
        check(
            body["checks"] == {"sync_check": "ok", "async_check": "ok"},
            f"/__heartbeat__ checks {body['checks']}",
        )

        response = client.get("/__heartbeat__")
        check(
            response.status_code == 500, f"failing /__heartbeat__ answered {response.status_code}"
        )
        check(
            response.get_json()["checks"]["failing_check"] == "error",
            f"failing /__heartbeat__ said {response.get_json()}",
        )
        # The status page: its template and assets are package data of the wheel.
        page = client.get("/__heartbeat__", headers={"Accept": "text/html"})
        check(
            page.status_code == 500 and "smoke.health.E001" in page.get_data(as_text=True),
            f"the status page answered {page.status_code}",
        )
        script = client.get("/__heartbeat__/assets/page.js")
        check(script.status_code == 200, f"the page's script answered {script.status_code}")
        check(
            any("smoke.health.E001" in message for message in records.messages),
            f"the failing check's message was not logged: {records.messages}",
        )

        response = client.get("/__version__")
        check(response.status_code == 200, f"/__version__ answered {response.status_code}")
        check(response.get_json() == VERSION_JSON, f"/__version__ said {response.get_json()}")

        result = app.test_cli_runner().invoke(
            args=["dockerflow", "heartbeat", "--exclude", "failing_check"]
        )
        check(result.exit_code == 0, f"flask dockerflow heartbeat exited {result.exit_code}")
        check(json.loads(result.stdout)["status"] == "ok", f"the command printed {result.stdout}")
    finally:
        extension.close()


def main(argv: list[str]) -> int:
    """Run the smoke test against the installed package.

    :param argv: the command line: the script and the expected version.
    :returns: 0; a failure stops the script with status 1.
    """
    if len(argv) != 2:
        print(f"usage: {argv[0]} EXPECTED_VERSION", file=sys.stderr)
        return 2
    check_installed(argv[1])
    with tempfile.TemporaryDirectory() as version_dir:
        Path(version_dir, "version.json").write_text(json.dumps(VERSION_JSON))
        check_endpoints(version_dir)
    print(
        f"smoke test passed: dockerflow-async {dockerflow.__version__} from "
        f"{Path(dockerflow.__file__).parent}, Flask {metadata.version('flask')}, "
        f"Python {sys.version.split()[0]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
