"""Probe storm: heartbeats per second under gunicorn and wrk, against the ceiling (issue 24).

Run with ``.venv/bin/python benchmarks/probe_storm_bench.py`` from the repository root (as root,
or with wrk installed and PostgreSQL's ``initdb`` usable by the current user). The default run
takes about 7.5 minutes on 2 cores; ``--quick`` is a smoke run (1 round, 2 s; about 1.5 minutes);
``--help`` lists the sizes.

What is measured: Flask apps served by gunicorn and hit on ``/__heartbeat__`` by ``wrk -t2 -c64
-d5s --latency``. Two worker classes (``--workers gthread,sync``, default both):

* **gthread**, ``-w 4 -k gthread --threads 8``, measured once with keep-alive connections (wrk's
  default) and once with ``Connection: close`` (one connection per request, as kubelet's probes
  do);
* **sync**, ``-w 4 -k sync`` (``--sync-workers``): one request at a time per worker; as many
  workers as gthread's, twice the 2 cores, so that a core has a worker ready while another's
  waits on its socket (A, F and H wait on nothing else; more would only queue on the cores).
  gunicorn's sync worker closes every connection after its answer, so it is measured with
  ``Connection: close`` only (keep-alive would measure the same thing again).

The apps are chosen by ``STORM_APP`` in :func:`create_app`:

* **A**, the ceiling of any Flask endpoint: a bare view returning a constant small JSON dict;
* **B**, the ceiling of a heartbeat that touches the database: a bare view running ``SELECT 1``
  on a pooled SQLAlchemy engine (``create_engine(url)``: QueuePool, psycopg2);
* **C**, python-dockerflow 2026.3.4, ``Dockerflow(app, db=db)`` over an engine made the same way;
* **D**, ours, ``Dockerflow(app, db=engine)`` over an engine made the same way, no cache;
* **F**, ours, ``Dockerflow(app)`` with 10 trivial ``def`` checks returning ``[]``, no cache;
* **H**, ours, ``Dockerflow(app)`` with 1 trivial ``def`` check returning ``[]``, no cache;
* **G**, ours, ``Dockerflow(app)`` with 10 trivial ``async def`` checks (each ``await
  asyncio.sleep(0)``, then returns ``[]``), no cache;
* **E** (only with ``--apps``), D with ``DOCKERFLOW_HEARTBEAT_CACHE_TTL=1``.

gthread workers serve A, B, C, D, F, H and G (``--apps``); sync workers serve A, F and H, those
their targets need (``--sync-apps``; with ``--apps``, those of them also in ``--apps``). A and B
import neither dockerflow: they run in our venv. C runs in the throwaway venv ``/tmp/dfref-venv``
(made or completed here with the same gunicorn, psycopg2-binary, Flask and SQLAlchemy versions
as ours), from a temporary working directory, so only python-dockerflow is importable there.

How: rounds (default 3) each run every (worker class, app) pair once, the order rotated by one
each round. Each pair starts a fresh gunicorn in each round (no process carries memory, pools or
threads from an earlier round), which serves its connection modes one after the other: per
mode, one second of the same wrk load warms it up, then it is measured. On gthread workers in
keep-alive mode, B and D (``--single-apps``) are first measured one heartbeat at a time at low
load: ``wrk -t1 -c1`` for 2 s on one kept-alive connection.

Beside heartbeats/s the table gives what gunicorn's worker processes spent per heartbeat during
wrk's measured window (read from ``/proc`` just before and just after it, divided by wrk's
requests): **CPU µs** (utime + stime of each worker process, every thread's, summed over the
workers) and **context switches**, voluntary + involuntary (``voluntary_ctxt_switches`` and
``nonvoluntary_ctxt_switches`` of ``/proc/PID/task/*/status``, every thread of every worker;
a thread that ends in the window loses its switches in it, and the run says so). They are
steadier than the rates on a shared machine. The report gives per worker class, app and mode
the medians over rounds (heartbeats/s, CPU µs per heartbeat, context switches per heartbeat,
p50, p99) and each round's heartbeats/s and CPU µs, and the targets, ``MET`` or ``MISSED``, on
those medians (each ratio is also printed per round, pairing the runs of one round, to show the
noise):

* F >= 0.60 x A on gthread workers, F >= 0.70 x A on sync workers, H >= 0.75 x A on both,
  heartbeats/s, in each mode;
* G <= 1.2 x F in CPU µs per heartbeat, and G >= 0.83 x F in heartbeats/s, in each mode;
* D >= 0.85 x B and D >= 1.8 x C, heartbeats/s, in each mode (gthread);
* a single heartbeat at low load: D's p50 <= 1.15 x B's p50 (gthread).

A target is judged wherever both of its apps ran (``--sync-apps`` can add B, C, D or G to sync
workers, and their targets with them).

Every heartbeat must answer 200: the non-2xx count is printed and any non-zero count warned of.
B runs ``SELECT 1`` for every request; ours runs a check at most once at a time per process and
lets the heartbeats that arrive meanwhile share that run, so under load D can pass B (the DB
column shows the queries per heartbeat).

Database: a private PostgreSQL made for the run (``initdb`` into a temporary directory, started
with ``pg_ctl`` on a free port, as user ``postgres`` when run as root) with
``pg_stat_statements`` preloaded. The DB column counts the ``calls`` of the statement ``SELECT
$1`` (the check's ``SELECT 1``, normalised) in the benchmark's own database during wrk's
measured window, per request: exact, and free for the server (the shared servers are not
touched). wrk comes from Debian's packages: if it is not on ``PATH`` the script runs ``apt-get
install -y wrk`` (after ``apt-get update`` if that fails), printing what it does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REF_VENV = Path("/tmp/dfref-venv")
REF_VERSION = "2026.3.4"
DATABASE = "storm"
#: The check's ``SELECT 1`` (python-dockerflow sends ``SELECT 1;``) as pg_stat_statements keeps it.
CHECK_QUERY = r"^\s*select \$1\s*;?\s*$"
#: Installed in the reference venv at our versions, and printed.
SHARED_DISTRIBUTIONS = ("flask", "werkzeug", "sqlalchemy", "gunicorn", "psycopg2-binary")
#: wrk's connections: kept alive (wrk's default), or one per request as kubelet's probes do.
MODES = {"keep-alive": [], "close": ["-H", "Connection: close"]}
#: gunicorn's worker classes. A sync worker closes every connection after its answer (gunicorn's
#: sync worker does not keep connections alive), so it is measured with ``Connection: close`` only.
WORKER_CLASSES = ("gthread", "sync")
SYNC_MODES = ("close",)
TRIVIAL_CHECKS = 10
#: Heartbeats/s targets, per worker class: (ours, the app it is held against, the least ratio).
#: Each is judged wherever both apps ran.
RATE_TARGETS = {
    "gthread": (("D", "B", 0.85), ("D", "C", 1.8), ("F", "A", 0.60), ("H", "A", 0.75)),
    "sync": (("D", "B", 0.85), ("D", "C", 1.8), ("F", "A", 0.70), ("H", "A", 0.75)),
}
#: G against F, both worker classes: the most CPU per heartbeat, as a multiple of F's, and the
#: least heartbeats/s (the same bound as a rate: 1 / 1.2).
ASYNC_CPU_TARGET = 1.2
ASYNC_RATE_TARGET = 0.83
#: The most D's p50 at low load may be, as a multiple of B's.
SINGLE_TARGET = 1.15


# -- the apps, in each gunicorn worker -------------------------------------------------------------


def create_app() -> Any:
    """The app gunicorn serves: ``STORM_APP`` names it (a letter of :data:`APPS`)."""
    factories = {
        "A": _constant_json_app,
        "B": _select_one_app,
        "C": _reference_app,
        "D": _ours_database_app,
        "E": _ours_database_app,
        "F": _ours_trivial_checks_app,
        "H": _ours_one_trivial_check_app,
        "G": _ours_trivial_async_checks_app,
    }
    return factories[os.environ["STORM_APP"]]()


def _engine() -> Any:
    """The database engine of B, C and D: SQLAlchemy's defaults (a QueuePool of 5 + 10)."""
    import sqlalchemy

    return sqlalchemy.create_engine(os.environ["STORM_DB_URL"])


def _constant_json_app() -> Any:
    """A: a bare view returning a constant small JSON dict (Flask serialises it per request)."""
    from flask import Flask

    app = Flask(__name__)

    @app.get("/__heartbeat__")
    def heartbeat() -> Any:
        return {"status": "ok", "checks": {}, "details": {}}

    return app


def _select_one_app() -> Any:
    """B: a bare view running ``SELECT 1`` on a pooled engine, in the request's thread."""
    from flask import Flask
    from sqlalchemy import text

    engine = _engine()
    app = Flask(__name__)

    @app.get("/__heartbeat__")
    def heartbeat() -> Any:
        with engine.connect() as connection:
            ok = connection.execute(text("SELECT 1")).scalar() == 1
        return {"status": "ok" if ok else "error", "checks": {}, "details": {}}, 200 if ok else 500

    return app


class _HasEngine:
    """What python-dockerflow's database check needs of a Flask-SQLAlchemy object: ``.engine``."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine


def _reference_app() -> Any:
    """C: python-dockerflow's extension with its database check (in the reference venv)."""
    from flask import Flask

    from dockerflow.flask import Dockerflow

    app = Flask(__name__)
    Dockerflow(app, db=_HasEngine(_engine()))
    return app


def _ours_database_app() -> Any:
    """D (and E): our extension with its database check on the same engine as B's."""
    from flask import Flask

    from dockerflow.flask import Dockerflow

    app = Flask(__name__)
    Dockerflow(app, db=_engine())
    return app


def _ours_trivial_checks_app(count: int = TRIVIAL_CHECKS) -> Any:
    """F: our extension with :data:`TRIVIAL_CHECKS` ``def`` checks that return ``[]``."""
    from flask import Flask

    from dockerflow.flask import Dockerflow

    app = Flask(__name__)
    dockerflow = Dockerflow(app)
    for number in range(count):
        # A function of its own per check: the engine keys runs by function.
        def trivial() -> list[Any]:
            return []

        dockerflow.check(trivial, name=f"trivial_{number}")
    return app


def _ours_one_trivial_check_app() -> Any:
    """H: our extension with one ``def`` check that returns ``[]``."""
    return _ours_trivial_checks_app(1)


def _ours_trivial_async_checks_app() -> Any:
    """G: our extension with :data:`TRIVIAL_CHECKS` ``async def`` checks, each yielding once."""
    from flask import Flask

    from dockerflow.flask import Dockerflow

    app = Flask(__name__)
    dockerflow = Dockerflow(app)
    for number in range(TRIVIAL_CHECKS):

        async def trivial() -> list[Any]:
            await asyncio.sleep(0)
            return []

        dockerflow.check(trivial, name=f"trivial_async_{number}")
    return app


@dataclass(frozen=True)
class App:
    """One app of the benchmark: its letter, label, interpreter and environment."""

    key: str
    label: str
    reference: bool = False
    env: dict[str, str] = field(default_factory=dict)
    uses_db: bool = True


NO_CACHE = {"DOCKERFLOW_HEARTBEAT_CACHE_TTL": "0"}
APPS = {
    app.key: app
    for app in (
        App("A", "bare Flask, constant JSON", uses_db=False),
        App("B", "bare Flask, SELECT 1"),
        App("C", f"python-dockerflow {REF_VERSION}", reference=True),
        App("D", "ours, DB check, no cache", env=NO_CACHE),
        App("E", "ours, DB check, cache TTL 1 s", env={"DOCKERFLOW_HEARTBEAT_CACHE_TTL": "1"}),
        App("F", f"ours, {TRIVIAL_CHECKS} trivial checks, no cache", env=NO_CACHE, uses_db=False),
        App("H", "ours, 1 trivial check, no cache", env=NO_CACHE, uses_db=False),
        App(
            "G",
            f"ours, {TRIVIAL_CHECKS} trivial async checks, no cache",
            env=NO_CACHE,
            uses_db=False,
        ),
    )
}
#: The apps each worker class serves by default: sync workers serve only those of their targets.
DEFAULT_APPS = {"gthread": "ABCDFHG", "sync": "AFH"}
#: The apps measured one heartbeat at a time at low load (gthread, keep-alive): the target's.
DEFAULT_SINGLE_APPS = "BD"


# -- set-up: wrk, the reference venv, a private PostgreSQL ------------------------------------------


def run_loud(command: Sequence[str]) -> bool:
    """Run ``command``, echoing it first; return whether it succeeded."""
    print(f"$ {' '.join(command)}", flush=True)
    return subprocess.run(command, check=False).returncode == 0


def ensure_wrk() -> str:
    """Return wrk's path, installing Debian's package if needed; exit if that is impossible."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is not on PATH: installing Debian's package")
    if shutil.which("apt-get") is None:
        sys.exit("wrk is not on PATH and there is no apt-get: install wrk, then run again")
    if os.geteuid() != 0:
        sys.exit("wrk is not on PATH: run `apt-get install -y wrk` as root, then run again")
    env_ok = run_loud(["apt-get", "install", "-y", "wrk"])
    if not env_ok:
        env_ok = run_loud(["apt-get", "update"]) and run_loud(["apt-get", "install", "-y", "wrk"])
    found = shutil.which("wrk")
    if not env_ok or not found:
        sys.exit("could not install wrk with apt-get (see above): install it, then run again")
    return found


def installed_versions(python: Path | str, names: Sequence[str]) -> dict[str, str | None]:
    """The versions of the distributions ``names`` under ``python`` (``None``: not installed)."""
    probe = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: out[name] = None\n"
        "out['python'] = sys.version.split()[0]\n"
        "print(json.dumps(out))\n"
    )
    # cwd=/: the repository's dockerflow/ must not shadow the reference's.
    done = subprocess.run(
        [str(python), "-c", probe, *names], capture_output=True, text=True, check=True, cwd="/"
    )
    return dict(json.loads(done.stdout))


def ensure_reference_venv() -> Path:
    """Return the reference venv's python, creating or completing ``/tmp/dfref-venv``."""
    python = REF_VENV / "bin" / "python"
    if not python.exists() and not run_loud([sys.executable, "-m", "venv", str(REF_VENV)]):
        sys.exit(f"could not create {REF_VENV}")
    # The same versions as ours, so that only the extension differs.
    wanted = {"dockerflow": REF_VERSION}
    for name in SHARED_DISTRIBUTIONS:
        wanted[name] = importlib.metadata.version(name)
    have = installed_versions(python, list(wanted))
    missing = [f"{name}=={version}" for name, version in wanted.items() if have[name] != version]
    if missing and not run_loud([str(python), "-m", "pip", "install", "--quiet", *missing]):
        sys.exit(f"could not install {' '.join(missing)} into {REF_VENV}")
    return python


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivatePostgres:
    """A PostgreSQL server of the benchmark's own, with pg_stat_statements, in a temp directory."""

    def __init__(self) -> None:
        bindir = self._bindir()
        self.directory = Path(tempfile.mkdtemp(prefix="dockerflow-storm-pg-"))
        self.directory.chmod(0o755)
        self.data = self.directory / "data"
        self.port = free_port()
        # initdb refuses to run as root: run the server as the postgres user then.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.directory, "postgres")
        self._pg_ctl = str(bindir / "pg_ctl")
        subprocess.run(
            [
                *self._as,
                *(str(bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"),
                *("--no-sync", "-E", "UTF8"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c shared_preload_libraries=pg_stat_statements -c max_connections=200 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        subprocess.run(
            [
                *self._as,
                *(self._pg_ctl, "-D", str(self.data), "-l", str(self.directory / "log")),
                *("-w", "-t", "30", "-o", options, "start"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self._admin(f"CREATE DATABASE {DATABASE}", "CREATE EXTENSION pg_stat_statements")

    @staticmethod
    def _bindir() -> Path:
        if shutil.which("pg_config"):
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
            candidate = Path(out.stdout.strip())
            if (candidate / "initdb").exists():
                return candidate
        versions = sorted(
            Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
        )
        if not versions:
            sys.exit("PostgreSQL's initdb was not found: apt-get install -y postgresql")
        return versions[-1].parent

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the benchmark's database."""
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _admin(self, *statements: str) -> list[Any]:
        import psycopg2

        # The "postgres" database: these statements are not counted with the check's.
        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres")
        connection.autocommit = True
        rows = []
        try:
            with connection.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
                    rows.append(cursor.fetchone() if cursor.description else None)
        finally:
            connection.close()
        return rows

    def server_version(self) -> str:
        """The server's ``server_version``."""
        (row,) = self._admin("SHOW server_version")
        return str(row[0])

    def reset_counts(self) -> None:
        """Forget every statement count."""
        self._admin("SELECT pg_stat_statements_reset()")

    def check_queries(self) -> int:
        """How many ``SELECT 1`` ran in the benchmark's database since the last reset."""
        (row,) = self._admin(
            "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s "
            f"JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = '{DATABASE}' "
            f"AND s.query ~* '{CHECK_QUERY}'"
        )
        return int(row[0])

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        subprocess.run(
            [*self._as, self._pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
        )
        shutil.rmtree(self.directory, ignore_errors=True)


# -- gunicorn and wrk -------------------------------------------------------------------------------


def get(url: str) -> tuple[int, Any]:
    """GET ``url`` on a new connection; return its status and JSON body (``None`` if not JSON)."""
    request = urllib.request.Request(url, headers={"Connection": "close"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def gunicorn_workers(kind: str, args: Any) -> list[str]:
    """gunicorn's options for the worker class ``kind``: ``gthread`` or ``sync``."""
    if kind == "gthread":
        return ["-w", str(args.gthread_workers), "-k", "gthread", "--threads", str(args.threads)]
    # No --threads: gunicorn turns a sync worker with more than one thread into a gthread worker.
    return ["-w", str(args.sync_workers), "-k", "sync"]


@contextlib.contextmanager
def gunicorn(
    app: App, kind: str, python: Path | str, env: dict[str, str], args: Any
) -> Iterator[tuple[str, int]]:
    """Serve ``app`` with gunicorn's ``kind`` workers under ``python``.

    :returns: (as a context manager) the heartbeat's URL, once it answers 200, and the PID of
        gunicorn's master process.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}/__heartbeat__"
    with tempfile.TemporaryDirectory(prefix="dockerflow-storm-") as tmp:
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKERFLOW_")}
        child_env.pop("PYTHONPATH", None)
        child_env.update(env, STORM_APP=app.key, XDG_RUNTIME_DIR=tmp)  # gunicorn >= 25: a socket
        log_path = Path(tmp, "gunicorn.log")
        with log_path.open("wb") as log:
            # cwd is the temporary directory: the repository's dockerflow/ must not shadow
            # python-dockerflow in the reference venv.
            server = subprocess.Popen(
                [
                    *(str(python), "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"),
                    *gunicorn_workers(kind, args),
                    *("--pythonpath", str(HERE), "--graceful-timeout", "3"),
                    "probe_storm_bench:create_app()",
                ],
                cwd=tmp,
                env=child_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_until_ok(url, server, log_path)
                yield url, server.pid
            finally:
                server.terminate()
                try:
                    server.wait(10)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()


def wait_until_ok(url: str, server: subprocess.Popen[bytes], log_path: Path) -> None:
    """Return once ``url`` answers 200; exit with gunicorn's log if it does not within 30 s."""
    deadline = time.monotonic() + 30
    last: object = None
    while time.monotonic() < deadline and server.poll() is None:
        try:
            last = get(url)
            if last[0] == 200:
                return
        except OSError as error:
            last = error
        time.sleep(0.1)
    sys.exit(f"gunicorn did not answer 200 on {url} (last: {last!r}):\n{log_path.read_text()}")


@dataclass
class Wrk:
    """What one wrk run reports."""

    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: str


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def _find(pattern: str, text: str) -> str:
    found = re.search(pattern, text, re.MULTILINE)
    if found is None:
        sys.exit(f"wrk's output has no {pattern!r}:\n{text}")
    return found.group(1)


def run_wrk(
    wrk: str, url: str, *, threads: int, connections: int, seconds: float, mode: str
) -> Wrk:
    """Run wrk against ``url`` and parse its report (``--latency``: the percentiles)."""
    command = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s"]
    command += ["--latency", *MODES[mode], url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return Wrk(
        requests=int(_find(r"(\d+) requests in", out)),
        rps=float(_find(r"Requests/sec:\s+([\d.]+)", out)),
        p50_ms=_ms(_find(r"^\s+50%\s+(\S+)", out)),
        p99_ms=_ms(_find(r"^\s+99%\s+(\S+)", out)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors.group(1).strip() if errors else "",
    )


# -- what gunicorn's workers spend: /proc ----------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """What gunicorn's worker processes have spent so far, read from ``/proc``."""

    #: The worker processes' PIDs.
    workers: tuple[int, ...]
    #: User + system CPU time of every worker process (every thread's), in clock ticks.
    ticks: int
    #: Per thread of a worker (thread ID): voluntary and involuntary context switches.
    switches: dict[int, tuple[int, int]]


def _read(path: str) -> str | None:
    """The text of ``path`` under ``/proc``, ``None`` if its process or thread has gone."""
    try:
        return Path(path).read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None


def read_usage(master: int) -> Usage:
    """The CPU time and context switches of the worker processes of gunicorn's ``master``."""
    workers: list[int] = []
    for children in Path(f"/proc/{master}/task").glob("*/children"):
        workers += [int(pid) for pid in (_read(str(children)) or "").split()]
    ticks = 0
    switches: dict[int, tuple[int, int]] = {}
    for pid in workers:
        stat = _read(f"/proc/{pid}/stat")
        if stat is not None:
            # The fields after the command's closing parenthesis: utime and stime are 14th and
            # 15th of all, the 12th and 13th after it.
            fields = stat.rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])
        # /proc/PID/status counts the main thread's switches only: every thread's, one by one.
        for task in Path(f"/proc/{pid}/task").iterdir():
            status = _read(str(task / "status"))
            if status is None:
                continue
            found = dict(re.findall(r"^(\w*ctxt_switches):\s+(\d+)$", status, re.MULTILINE))
            voluntary = int(found["voluntary_ctxt_switches"])
            switches[int(task.name)] = (voluntary, int(found["nonvoluntary_ctxt_switches"]))
    return Usage(tuple(sorted(workers)), ticks, switches)


@dataclass(frozen=True)
class Spent:
    """What the workers spent per request in one measured window."""

    cpu_us: float
    voluntary: float
    involuntary: float
    #: Threads that ended in the window (their switches in it are not counted), and whether the
    #: set of worker processes changed (a worker died or was replaced: the figures are wrong).
    threads_ended: int = 0
    workers_changed: bool = False

    @property
    def switches(self) -> float:
        """Voluntary and involuntary context switches per request."""
        return self.voluntary + self.involuntary


def spent(before: Usage, after: Usage, requests: int) -> Spent:
    """Per request, what the workers spent between ``before`` and ``after``."""
    requests = max(requests, 1)
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    voluntary = involuntary = 0
    for tid, (vol, invol) in after.switches.items():
        # A thread started in the window counts from zero.
        vol_before, invol_before = before.switches.get(tid, (0, 0))
        voluntary += vol - vol_before
        involuntary += invol - invol_before
    return Spent(
        cpu_us=(after.ticks - before.ticks) * tick_us / requests,
        voluntary=voluntary / requests,
        involuntary=involuntary / requests,
        threads_ended=len(before.switches.keys() - after.switches.keys()),
        workers_changed=before.workers != after.workers,
    )


# -- one app in one round: a fresh gunicorn; per mode warm-up, low load, the storm --------------


@dataclass
class Run:
    """One app on one worker class in one mode in one round."""

    kind: str
    app: str
    mode: str
    round: int
    storm: Wrk
    queries: int
    #: What the workers spent per request during the storm.
    spent: Spent
    #: The single-connection measurement (keep-alive runs only).
    single: Wrk | None = None
    #: Non-2xx answers during warm-up and the single-connection measurement.
    other_non_2xx: int = 0


def modes_of(kind: str, modes: Sequence[str]) -> list[str]:
    """The connection modes ``kind`` workers are measured in: ``modes``, or close for sync."""
    return list(modes) if kind == "gthread" else list(SYNC_MODES)


def measure_app(
    app: App,
    kind: str,
    number: int,
    python: Path | str,
    postgres: PrivatePostgres,
    wrk: str,
    args: Any,
) -> list[Run]:
    """Start a fresh gunicorn of ``kind`` workers for ``app``, measure every mode; stop it."""
    env = {"STORM_DB_URL": postgres.url, **app.env}
    with gunicorn(app, kind, python, env, args) as (url, master):
        return [
            measure_mode(app, kind, mode, number, url, master, postgres, wrk, args)
            for mode in modes_of(kind, args.modes)
        ]


def measure_mode(
    app: App,
    kind: str,
    mode: str,
    number: int,
    url: str,
    master: int,
    postgres: PrivatePostgres,
    wrk: str,
    args: Any,
) -> Run:
    """Warm up in ``mode``, check the heartbeat passes, measure low load (keep-alive), the storm."""
    print(f"round {number}: {app.key} ({app.label}), {kind}, {mode}", flush=True)
    load = {"threads": args.wrk_threads, "connections": args.connections, "mode": mode}
    warm = run_wrk(wrk, url, seconds=args.warmup, **load)
    status, body = get(url)
    if status != 200 or not isinstance(body, dict) or body.get("status") != "ok":
        sys.exit(f"{app.key} {app.label}: the heartbeat does not pass: {status} {body}")
    single = None
    if kind == "gthread" and mode == "keep-alive" and app.key in args.single_apps:
        single = run_wrk(
            wrk, url, threads=1, connections=1, seconds=args.single_duration, mode=mode
        )
    postgres.reset_counts()
    before = read_usage(master)
    storm = run_wrk(wrk, url, seconds=args.duration, **load)
    after = read_usage(master)
    queries = postgres.check_queries() if app.uses_db else 0
    other = warm.non_2xx + (single.non_2xx if single else 0)
    used = spent(before, after, storm.requests)
    return Run(kind, app.key, mode, number, storm, queries, used, single, other)


# -- the report -------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (``nan`` if there are none)."""
    return statistics.median(values) if values else float("nan")


class Results:
    """Every run, looked up by worker class, app and mode."""

    def __init__(self, runs: Sequence[Run]) -> None:
        self.runs = list(runs)

    def of(self, kind: str, app: str, mode: str) -> list[Run]:
        """The runs of ``app`` on ``kind`` workers in ``mode``, in round order."""
        return [r for r in self.runs if r.kind == kind and r.app == app and r.mode == mode]

    def rps(self, kind: str, app: str, mode: str) -> float:
        """The median heartbeats/s."""
        return median([r.storm.rps for r in self.of(kind, app, mode)])

    def cpu_us(self, kind: str, app: str, mode: str) -> float:
        """The median CPU µs per heartbeat of the workers."""
        return median([r.spent.cpu_us for r in self.of(kind, app, mode)])

    def single_p50(self, app: str) -> float:
        """The median over rounds of ``app``'s p50 at low load (gthread, keep-alive)."""
        return median([r.single.p50_ms for r in self.of("gthread", app, "keep-alive") if r.single])


def plan(args: Any) -> list[tuple[str, App]]:
    """The (worker class, app) pairs a round runs, in their first round's order."""
    return [(kind, APPS[key]) for kind in args.workers for key in args.apps_of[kind]]


def print_header(
    args: Any, pairs: Sequence[tuple[str, App]], reference: Path | None, pg: str
) -> None:
    """The set-up: machine, versions, sizes, worker classes and their apps."""
    ours = installed_versions(sys.executable, SHARED_DISTRIBUTIONS)
    versions = ", ".join(f"{name} {ours[name]}" for name in SHARED_DISTRIBUTIONS)
    print(f"Python {ours['python']} ({platform.machine()}), {os.cpu_count()} CPUs; {versions}")
    if reference is not None:
        ref = installed_versions(reference, ("dockerflow",))
        print(
            f"reference venv {REF_VENV}: Python {ref['python']}, the same versions, "
            f"dockerflow {ref['dockerflow']}"
        )
    commit = subprocess.run(
        ["git", "-C", str(HERE), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    print(f"ours: dockerflow-async at {commit or 'unknown commit'}; PostgreSQL {pg} (private)")
    print(
        f"wrk -t{args.wrk_threads} -c{args.connections} -d{args.duration:g}s --latency "
        f"(warm-up {args.warmup:g}s of the same); low load: wrk -t1 -c1 "
        f"-d{args.single_duration:g}s keep-alive ({', '.join(args.single_apps) or 'none'}); "
        f"{args.rounds} interleaved round(s), a fresh gunicorn per app and round"
    )
    for kind in args.workers:
        print(
            f"gunicorn {' '.join(gunicorn_workers(kind, args))}: apps "
            f"{', '.join(args.apps_of[kind]) or 'none'}; wrk connections "
            f"{', '.join(modes_of(kind, args.modes))}"
        )
    for key in dict.fromkeys(app.key for _, app in pairs):
        print(f"  {key}: {APPS[key].label}")
    print(
        "CPU µs and context switches per heartbeat: the gunicorn workers' (every thread's) "
        "during wrk's measured window, from /proc, divided by the requests"
    )


def print_storm_table(results: Results, pairs: Sequence[tuple[str, App]], args: Any) -> None:
    """Per worker class, mode and app: medians over rounds and each round's figures."""
    print(
        "\n| workers | app | connections | heartbeats/s (median) | per round "
        "| CPU µs/request (median) | per round | context switches/request: vol. + invol. (medians) "
        "| p50 | p99 | non-2xx | DB queries/request |"
    )
    print("|---|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|")
    for kind in args.workers:
        for mode in modes_of(kind, args.modes):
            for app in (app for pair_kind, app in pairs if pair_kind == kind):
                runs = results.of(kind, app.key, mode)
                requests = sum(r.storm.requests for r in runs)
                per_request = sum(r.queries for r in runs) / max(requests, 1)
                switches = median([r.spent.switches for r in runs])
                voluntary = median([r.spent.voluntary for r in runs])
                involuntary = median([r.spent.involuntary for r in runs])
                print(
                    f"| {kind} | {app.key}: {app.label} | {mode} "
                    f"| {results.rps(kind, app.key, mode):.0f} "
                    f"| {', '.join(f'{r.storm.rps:.0f}' for r in runs)} "
                    f"| {results.cpu_us(kind, app.key, mode):.0f} "
                    f"| {', '.join(f'{r.spent.cpu_us:.0f}' for r in runs)} "
                    f"| {switches:.2f}: {voluntary:.2f} + {involuntary:.2f} "
                    f"| {median([r.storm.p50_ms for r in runs]):.2f} ms "
                    f"| {median([r.storm.p99_ms for r in runs]):.2f} ms "
                    f"| {sum(r.storm.non_2xx for r in runs)} "
                    f"| {f'{per_request:.3f}' if app.uses_db else '-'} |"
                )


def print_single_table(results: Results, args: Any) -> None:
    """Per app: one heartbeat at a time on one kept-alive connection (gthread workers)."""
    rows = []
    for key in args.single_apps:
        singles = [r.single for r in results.of("gthread", key, "keep-alive") if r.single]
        if singles:
            rows.append(
                f"| {key}: {APPS[key].label} | {results.single_p50(key):.3f} ms "
                f"| {', '.join(f'{s.p50_ms:.3f}' for s in singles)} "
                f"| {median([s.p99_ms for s in singles]):.3f} ms "
                f"| {median([s.rps for s in singles]):.0f} |"
            )
    if rows:
        print(
            "\n| app (gthread) | low load p50 (median) | per round p50 | p99 (median) "
            "| heartbeats/s (median) |"
        )
        print("|---|---:|---|---:|---:|")
        print("\n".join(rows))


def target_line(
    name: str, value: float, bound: float, per_round: Sequence[float], *, at_most: bool
) -> str:
    """``name: value (rounds ...) MET|MISSED`` against ``bound``."""
    met = value <= bound if at_most else value >= bound
    rounds = ", ".join(f"{x:.2f}" for x in per_round)
    verdict = "MET" if met else "MISSED"
    return f"{name}: {value:.2f} ({'<=' if at_most else '>='} {bound:g}; rounds {rounds}) {verdict}"


def ratio_per_round(ours: Sequence[Run], other: Sequence[Run], figure: str) -> list[float]:
    """``figure`` (``rps`` or ``cpu_us``) of ``ours`` over ``other``'s, pairing runs by round."""

    def value(run: Run) -> float:
        return run.storm.rps if figure == "rps" else run.spent.cpu_us

    others = {run.round: run for run in other}
    return [
        value(run) / value(others[run.round])
        for run in ours
        if run.round in others and value(others[run.round])
    ]


def print_targets(results: Results, args: Any) -> None:
    """Each target whose apps ran, on the medians, with the ratio per round to show the noise."""
    lines = []
    for kind in args.workers:
        keys = args.apps_of[kind]
        rates = [*RATE_TARGETS[kind], ("G", "F", ASYNC_RATE_TARGET)]
        for mode in modes_of(kind, args.modes):
            for ours, ceiling, bound in rates:
                if ours in keys and ceiling in keys:
                    a, b = results.of(kind, ours, mode), results.of(kind, ceiling, mode)
                    value = results.rps(kind, ours, mode) / results.rps(kind, ceiling, mode)
                    name = f"{kind}: {ours}/{ceiling} heartbeats/s, {mode}"
                    per_round = ratio_per_round(a, b, "rps")
                    lines.append(target_line(name, value, bound, per_round, at_most=False))
            if "G" in keys and "F" in keys:
                a, b = results.of(kind, "G", mode), results.of(kind, "F", mode)
                value = results.cpu_us(kind, "G", mode) / results.cpu_us(kind, "F", mode)
                name = f"{kind}: G/F CPU µs per heartbeat, {mode}"
                per_round = ratio_per_round(a, b, "cpu_us")
                lines.append(target_line(name, value, ASYNC_CPU_TARGET, per_round, at_most=True))
    singles_ran = "gthread" in args.workers and "keep-alive" in args.modes
    if singles_ran and {"D", "B"} <= set(args.single_apps):
        b_singles = {r.round: r.single for r in results.of("gthread", "B", "keep-alive")}
        per_round = [
            r.single.p50_ms / b_single.p50_ms
            for r in results.of("gthread", "D", "keep-alive")
            if r.single and (b_single := b_singles.get(r.round))
        ]
        value = results.single_p50("D") / results.single_p50("B")
        name = "gthread: D/B p50 of one heartbeat at low load"
        lines.append(target_line(name, value, SINGLE_TARGET, per_round, at_most=True))
    if lines:
        print("\nTargets (ratios of medians over rounds):")
        print("\n".join(f"  {line}" for line in lines))


def print_cost_split(results: Results, args: Any) -> None:
    """Where a heartbeat's CPU goes, from the medians of A, H (1 check) and F (10 checks): the
    cost of each further check, and the fixed cost of a heartbeat over a bare view (the
    extension's work, the engine's once per heartbeat and the hand-off to a worker thread that
    the deadline needs). With them, the best F/A a heartbeat with free checks could reach, read
    as A's CPU over F's (the rates follow the CPU when the cores are the limit)."""
    lines = []
    for kind in args.workers:
        if not {"A", "H", "F"} <= set(args.apps_of[kind]):
            continue
        for mode in modes_of(kind, args.modes):
            a, h, f = (results.cpu_us(kind, key, mode) for key in "AHF")
            per_check = (f - h) / 9
            fixed = h - a - per_check
            lines.append(
                f"{kind}, {mode}: A {a:.0f}, H {h:.0f}, F {f:.0f} CPU µs; per further check "
                f"{per_check:.1f} µs, fixed per heartbeat {fixed:.0f} µs; F/A by CPU with free "
                f"checks {a / (a + fixed):.2f}, now {a / f:.2f}"
            )
    if lines:
        print("\nCost split (CPU µs per heartbeat, medians):")
        print("\n".join(f"  {line}" for line in lines))


def print_warnings(results: Results) -> None:
    """Heartbeats that did not answer 200, wrk's socket errors, workers that changed."""
    for run in results.runs:
        where = f"{run.kind} {run.app}, {run.mode}, round {run.round}"
        if run.storm.non_2xx or run.other_non_2xx:
            print(
                f"WARNING {where}: {run.storm.non_2xx} non-2xx answers under load, "
                f"{run.other_non_2xx} in warm-up and low load: a heartbeat must answer 200"
            )
        if run.storm.socket_errors:
            # wrk counts a request unanswered after 2 s as a timeout, outside the percentiles.
            print(f"note {where}: wrk socket errors: {run.storm.socket_errors}")
        if run.spent.workers_changed:
            print(f"WARNING {where}: gunicorn's workers changed in the window: CPU figures wrong")
        if run.spent.threads_ended:
            print(
                f"note {where}: {run.spent.threads_ended} worker thread(s) ended in the window "
                "(their context switches in it are not counted)"
            )


# -- main -------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line: sizes, worker classes, apps, modes; ``--quick`` for a smoke run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, default=5, help="seconds of wrk per run")
    parser.add_argument("--warmup", type=float, default=1, help="seconds of wrk before each run")
    parser.add_argument(
        "--single-duration", type=float, default=2, help="seconds of wrk -c1 at low load"
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s: a smoke run")
    parser.add_argument(
        "--workers",
        default=",".join(WORKER_CLASSES),
        help="gunicorn worker classes: gthread, sync (default both)",
    )
    parser.add_argument(
        "--apps",
        default=DEFAULT_APPS["gthread"],
        help=f"letters of {''.join(APPS)} (default {DEFAULT_APPS['gthread']}); sync workers "
        "serve those of them that are also in --sync-apps",
    )
    parser.add_argument(
        "--sync-apps",
        default=DEFAULT_APPS["sync"],
        help=f"the apps sync workers serve (default {DEFAULT_APPS['sync']})",
    )
    parser.add_argument(
        "--single-apps",
        default=DEFAULT_SINGLE_APPS,
        help=f"the apps measured at low load (default {DEFAULT_SINGLE_APPS}; '' for none)",
    )
    parser.add_argument(
        "--modes",
        default="keep-alive,close",
        help="wrk connection modes of gthread workers: keep-alive, close (sync: close)",
    )
    parser.add_argument("--gthread-workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8, help="threads per gthread worker")
    parser.add_argument("--sync-workers", type=int, default=4)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--wrk-threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.single_duration = 1, 2, 1
    args.workers = [kind.strip() for kind in args.workers.split(",") if kind.strip()]
    if not args.workers or set(args.workers) - set(WORKER_CLASSES):
        parser.error(f"--workers takes a comma-separated subset of {', '.join(WORKER_CLASSES)}")
    letters = {}
    for option in ("apps", "sync_apps", "single_apps"):
        value = getattr(args, option).upper()
        if set(value) - set(APPS) or (option == "apps" and not value):
            flag = "--" + option.replace("_", "-")
            parser.error(f"{flag} takes letters of {''.join(APPS)}, not {value!r}")
        letters[option] = value
    args.apps_of = {
        "gthread": letters["apps"],
        "sync": "".join(key for key in letters["apps"] if key in letters["sync_apps"]),
    }
    args.single_apps = "".join(key for key in letters["single_apps"] if key in letters["apps"])
    args.modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if not args.modes or set(args.modes) - set(MODES):
        parser.error(f"--modes takes a comma-separated subset of {', '.join(MODES)}")
    if args.rounds < 1 or min(args.duration, args.warmup, args.single_duration) <= 0:
        parser.error("--rounds must be at least 1 and every duration positive")
    if min(args.gthread_workers, args.threads, args.sync_workers) < 1:
        parser.error("--gthread-workers, --threads and --sync-workers must be at least 1")
    if not plan(args):
        parser.error("no app to serve: --workers sync needs an app of --apps in --sync-apps")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run every round, then print the set-up, the tables and the targets."""
    started = time.monotonic()
    load_start = os.getloadavg()
    args = parse_args(argv)
    pairs = plan(args)
    wrk = ensure_wrk()
    reference = ensure_reference_venv() if any(app.reference for _, app in pairs) else None
    postgres = PrivatePostgres()
    runs = []
    try:
        pg_version = postgres.server_version()
        for number in range(1, args.rounds + 1):
            shift = (number - 1) % len(pairs)
            for kind, app in pairs[shift:] + pairs[:shift]:
                python = reference if app.reference and reference else sys.executable
                runs += measure_app(app, kind, number, python, postgres, wrk, args)
    finally:
        postgres.stop()

    results = Results(runs)
    print()
    print_header(args, pairs, reference, pg_version)
    print_storm_table(results, pairs, args)
    print_single_table(results, args)
    print_targets(results, args)
    print_cost_split(results, args)
    print_warnings(results)
    load_end = os.getloadavg()
    print(
        f"\nload average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in load_start)} at start, "
        f"{', '.join(f'{x:.2f}' for x in load_end)} at end; "
        f"whole run {time.monotonic() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
