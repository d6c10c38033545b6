"""Probe storm: wrk hammers ``/__heartbeat__`` of gunicorn gthread workers with a real database.

Run with ``.venv/bin/python benchmarks/probe_storm_bench.py`` from the repository root (as root,
or with wrk installed and PostgreSQL's ``initdb`` usable by the current user).

gunicorn serves the app of this module (``probe_storm_bench:create_app()``) with
``-w 4 -k gthread --threads 8``; its only check is the database check that ``Dockerflow(app,
db=...)`` adds: ``SELECT 1`` through a sync SQLAlchemy engine on psycopg2. ``wrk -t2 -c64 -d5s
--latency`` hits ``/__heartbeat__``. Three runs:

1. ours, ``DOCKERFLOW_HEARTBEAT_CACHE_TTL=1``: a worker runs the check at most about once a
   second, so the database sees about workers x seconds queries;
2. ours without a cache: single-flight lets one run of the check serve every heartbeat that
   arrives while it is in flight, so at most one run at a time per process;
3. python-dockerflow 2026.3.4 (in the throwaway venv ``/tmp/dfref-venv``, made or completed here
   with the same gunicorn, psycopg2-binary, Flask and SQLAlchemy versions as ours): every heartbeat
   runs the check inline in its request thread.

How the queries are counted: on a private PostgreSQL made for the run (``initdb`` into a temporary
directory, started with ``pg_ctl`` on a free port, as user ``postgres`` when run as root) with
``pg_stat_statements`` preloaded. The count is the ``calls`` of the statement ``SELECT $1`` (the
check's ``SELECT 1``, normalised) in the benchmark's own database, reset after the warm-up and read
when wrk is done. That is exact: the server counts each execution as it finishes, nothing else
runs in that database, and unlike ``log_statement = all`` it costs the server nothing per query
(``xact_commit`` in ``pg_stat_database`` is flushed lazily and counts the driver's connection
set-up too). The shared servers are not touched.

Concurrency inside each worker is measured by the app: pool ``checkout``/``checkin`` events on the
application's engine (our check's own engine is a ``pool.recreate()`` copy, which keeps the pool's
event listeners) count check runs in flight; ``/_storm/stats`` reports the maximum per process.

wrk comes from Debian's packages: if it is not on ``PATH`` the script runs ``apt-get install -y
wrk`` (after ``apt-get update`` if that fails), printing what it does. Target: ours without a
cache serves at least 3 times the reference's heartbeats per second.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REF_VENV = Path("/tmp/dfref-venv")
REF_VERSION = "2026.3.4"
#: Heartbeats per second, ours without a cache against python-dockerflow's, in the same run.
TARGET_RATIO = 3.0
DATABASE = "storm"
#: The check's ``SELECT 1`` (python-dockerflow sends ``SELECT 1;``) as pg_stat_statements keeps it.
CHECK_QUERY = r"^\s*select \$1\s*;?\s*$"


# -- the app, in each gunicorn worker -------------------------------------------------------------


class _Counters:
    """This process's heartbeats, and its check's database connections checked out at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.runs = 0
        self.heartbeats = 0

    def enter(self, *_: Any) -> None:
        with self._lock:
            self.now += 1
            self.runs += 1
            self.peak = max(self.peak, self.now)

    def leave(self, *_: Any) -> None:
        with self._lock:
            self.now -= 1

    def heartbeat(self) -> None:
        with self._lock:
            self.heartbeats += 1


class _HasEngine:
    """What python-dockerflow's database check needs of a Flask-SQLAlchemy object: ``.engine``."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine


def create_app() -> Any:
    """The app gunicorn serves; ``STORM_IMPL`` is ``ours`` or ``reference``."""
    import sqlalchemy
    from flask import Flask, jsonify, request

    from dockerflow.flask import Dockerflow

    engine = sqlalchemy.create_engine(os.environ["STORM_DB_URL"])
    counters = _Counters()
    sqlalchemy.event.listen(engine.pool, "checkout", counters.enter)
    sqlalchemy.event.listen(engine.pool, "checkin", counters.leave)
    app = Flask(__name__)
    if os.environ["STORM_IMPL"] == "ours":
        Dockerflow(app, db=engine)
    else:
        Dockerflow(app, db=_HasEngine(engine))

    @app.before_request
    def count() -> None:
        if request.path == "/__heartbeat__":
            counters.heartbeat()

    @app.get("/_storm/stats")
    def stats() -> Any:
        return jsonify(
            pid=os.getpid(),
            max_in_flight=counters.peak,
            runs=counters.runs,
            heartbeats=counters.heartbeats,
        )

    return app


# -- set-up: wrk, the reference venv, a private PostgreSQL ------------------------------------------


def run_loud(command: Sequence[str]) -> bool:
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


def ensure_reference_venv() -> Path:
    """Return the reference venv's python, creating or completing ``/tmp/dfref-venv``."""
    python = REF_VENV / "bin" / "python"
    if not python.exists() and not run_loud(["python3", "-m", "venv", str(REF_VENV)]):
        sys.exit(f"could not create {REF_VENV}")
    # The same versions as ours, so that only the extension differs.
    wanted = {"dockerflow": REF_VERSION}
    for name in ("flask", "sqlalchemy", "gunicorn", "psycopg2-binary"):
        wanted[name] = importlib.metadata.version(name)
    probe = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: out[name] = None\n"
        "print(json.dumps(out))\n"
    )
    have = json.loads(
        subprocess.run(
            [str(python), "-c", probe, *wanted], capture_output=True, text=True, check=True
        ).stdout
    )
    missing = [f"{name}=={version}" for name, version in wanted.items() if have[name] != version]
    if missing and not run_loud([str(python), "-m", "pip", "install", "--quiet", *missing]):
        sys.exit(f"could not install {' '.join(missing)} into {REF_VENV}")
    return python


def free_port() -> int:
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

    def reset_counts(self) -> None:
        self._admin("SELECT pg_stat_statements_reset()")

    def check_queries(self) -> int:
        (row,) = self._admin(
            "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s "
            f"JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = '{DATABASE}' "
            f"AND s.query ~* '{CHECK_QUERY}'"
        )
        return int(row[0])

    def stop(self) -> None:
        subprocess.run(
            [*self._as, self._pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
        )
        shutil.rmtree(self.directory, ignore_errors=True)


# -- one run ----------------------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    mode: str
    requests: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    non_2xx: int = 0
    socket_errors: str = ""
    queries: int = 0
    #: Per worker pid: (heartbeats served, most check runs in flight at once).
    workers: dict[int, tuple[int, int]] = field(default_factory=dict)


def get_json(url: str) -> Any:
    """GET ``url`` on a new connection; return its JSON body (``None`` if it is empty)."""
    request = urllib.request.Request(url, headers={"Connection": "close"})
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


@contextlib.contextmanager
def gunicorn(python: Path | str, env: dict[str, str], args: argparse.Namespace) -> Iterator[int]:
    """Serve this module's app with gunicorn under ``python``; yield the port once it answers."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dockerflow-storm-") as tmp:
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKERFLOW_")}
        child_env.pop("PYTHONPATH", None)
        child_env.update(env, XDG_RUNTIME_DIR=tmp)  # gunicorn >= 25: a control socket there
        log_path = Path(tmp, "gunicorn.log")
        with log_path.open("wb") as log:
            # cwd is the temporary directory: the repository's dockerflow/ must not shadow
            # python-dockerflow in the reference venv.
            server = subprocess.Popen(
                [
                    *(str(python), "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"),
                    *("-w", str(args.workers), "-k", "gthread", "--threads", str(args.threads)),
                    *("--pythonpath", str(HERE), "--graceful-timeout", "3"),
                    "probe_storm_bench:create_app()",
                ],
                cwd=tmp,
                env=child_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        get_json(f"http://127.0.0.1:{port}/__lbheartbeat__")
                        break
                    except OSError:
                        if time.monotonic() > deadline or server.poll() is not None:
                            sys.exit(f"gunicorn did not start:\n{log_path.read_text()}")
                        time.sleep(0.1)
                yield port
            finally:
                server.terminate()
                try:
                    server.wait(10)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(output: str, result: Result) -> None:
    result.requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    result.rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    result.p50_ms = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    result.p99_ms = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result.non_2xx = int(non_2xx.group(1)) if non_2xx else 0
    errors = re.search(r"Socket errors: (.*)", output)
    result.socket_errors = errors.group(1) if errors else ""


def worker_stats(port: int, workers: int) -> dict[int, tuple[int, int]]:
    """Ask ``/_storm/stats`` on new connections until every worker has answered (bounded)."""
    found: dict[int, tuple[int, int]] = {}
    url = f"http://127.0.0.1:{port}/_storm/stats"
    with ThreadPoolExecutor(8) as pool:
        for _ in range(25):
            for stats in pool.map(lambda _: get_json(url), range(8)):
                found[stats["pid"]] = (stats["heartbeats"], stats["max_in_flight"])
            if len(found) >= workers:
                break
    return found


#: wrk's connections: kept alive (wrk's default), or one per request as kubelet's probes do.
MODES = {"keep-alive": [], "close": ["-H", "Connection: close"]}


def run(
    label: str,
    mode: str,
    python: Path | str,
    env: dict[str, str],
    postgres: PrivatePostgres,
    wrk: str,
    args: argparse.Namespace,
) -> Result:
    result = Result(label, mode)
    env = {"STORM_DB_URL": postgres.url, **env}
    with gunicorn(python, env, args) as port:
        url = f"http://127.0.0.1:{port}/__heartbeat__"
        # Warm up the workers (connections, threads), then count queries from zero.
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: get_json(url)["status"], range(40)))
        if set(statuses) != {"ok"}:
            sys.exit(f"{label}: the heartbeat does not pass: {statuses}")
        postgres.reset_counts()
        command = [wrk, "-t", str(args.wrk_threads), "-c", str(args.connections)]
        command += ["-d", f"{args.duration}s", "--latency", *MODES[mode], url]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        result.queries = postgres.check_queries()
        parse_wrk(output, result)
        result.workers = worker_stats(port, args.workers)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--duration", type=int, default=5, help="seconds of wrk per run")
    parser.add_argument(
        "--modes", default="keep-alive,close", help="wrk connection modes: keep-alive, close"
    )
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args(argv)
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes takes a comma-separated subset of {', '.join(MODES)}")

    wrk = ensure_wrk()
    reference = None if args.skip_reference else ensure_reference_venv()
    runs: list[tuple[str, Path | str, dict[str, str]]] = [
        ("ours, cache TTL 1 s", sys.executable, {"DOCKERFLOW_HEARTBEAT_CACHE_TTL": "1"}),
        ("ours, no cache", sys.executable, {"DOCKERFLOW_HEARTBEAT_CACHE_TTL": "0"}),
    ]
    if reference is not None:
        runs.append((f"python-dockerflow {REF_VERSION}", reference, {}))
    postgres = PrivatePostgres()
    print(f"private PostgreSQL on 127.0.0.1:{postgres.port}, database {DATABASE!r}", flush=True)
    results = []
    try:
        for mode in modes:
            for label, python, env in runs:
                print(f"running: {label}, {mode}", flush=True)
                impl = "ours" if python == sys.executable else "reference"
                env = {"STORM_IMPL": impl, **env}
                results.append(run(label, mode, python, env, postgres, wrk, args))
    finally:
        postgres.stop()

    print()
    print(
        f"gunicorn -w {args.workers} -k gthread --threads {args.threads}; "
        f"wrk -t{args.wrk_threads} -c{args.connections} -d{args.duration}s --latency "
        "/__heartbeat__; database check SELECT 1 on a private PostgreSQL"
    )
    print()
    print(
        "| run | wrk connections | heartbeats/s | p50 | p99 | requests | non-2xx "
        "| DB check queries | queries/request | heartbeats per worker "
        "| max check runs in flight per worker |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in results:
        workers = sorted(r.workers.values(), reverse=True)
        served = ", ".join(str(heartbeats) for heartbeats, _ in workers)
        in_flight = ", ".join(str(peak) for _, peak in workers)
        print(
            f"| {r.label} | {r.mode} | {r.rps:.0f} | {r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms "
            f"| {r.requests} | {r.non_2xx} | {r.queries} | {r.queries / max(r.requests, 1):.3f} "
            f"| {served} | {in_flight} |"
        )
    errors = [f"{r.label}, {r.mode}: {r.socket_errors}" for r in results if r.socket_errors]
    if errors:
        print("\nwrk socket errors: " + "; ".join(errors))
    if reference is not None:
        print()
        for mode in modes:
            ours = [r for r in results if r.mode == mode and not r.label.startswith("python")]
            (ref,) = [r for r in results if r.mode == mode and r.label.startswith("python")]
            ratios = ", ".join(f"{r.label}: {r.rps / ref.rps:.2f}x" for r in ours)
            (uncached,) = [r for r in ours if "no cache" in r.label]
            met = uncached.rps >= TARGET_RATIO * ref.rps
            print(
                f"target ({mode}): ours without a cache >= {TARGET_RATIO:g}x the reference's "
                f"heartbeats/s: {'met' if met else 'MISSED'} ({ratios})"
            )


if __name__ == "__main__":
    main()
