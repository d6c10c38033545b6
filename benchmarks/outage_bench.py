"""A database outage under probe load: gunicorn gthread 2 x 4, two code trees side by side.

Run with ``.venv/bin/python benchmarks/outage_bench.py`` from the repository root
(``--after-tree PATH``, ``--before-ref REF``; ``--help`` for the durations).

What runs: the deployment docs/deployment.rst describes, ``gunicorn -c examples/gunicorn.conf.py``
(mozlog JSON on stdout, here to a file) with 2 workers x 4 ``gthread`` threads, bound to
127.0.0.1, serving :func:`create_app`: a Flask app with ``Dockerflow(app, db=engine)``, the
built-in database check on a SQLAlchemy engine (psycopg2, SQLAlchemy's default pool), and
``DOCKERFLOW_CHECK_TIMEOUT`` (``--timeout``, default 3 s as the library's); every other setting
is the default. (Below 2 s, a run outlasts the timeout: libpq's connect timeout counts whole
seconds, at least 2.)
The engine's PostgreSQL (``--postgres-url``, the tests' shared server by default; only ``SELECT 1``
is sent) is reached through a TCP proxy run by this script on 127.0.0.1 which passes, then
black-holes for ``--fault`` seconds (default 20), then passes again. A black hole accepts new
connections and keeps them, and forwards nothing either way on any connection, old or new; what
it read meanwhile is held, and forwarded once it passes again, as a network partition that heals
delivers what TCP retransmits.

The load is open-loop, on a fixed schedule whatever the answers: ``GET /__heartbeat__`` 20 times
a second and ``GET /__lbheartbeat__`` 10 times a second, each probe on a new connection of its
own (``Connection: close``, as kubelet's probes), the two endpoints never sharing one. A probe's
latency is counted from its scheduled time to the end of its answer, so a late send is counted
too; a probe with no answer within ``--client-timeout`` (15 s) counts as failing, with that
latency. The load generator is this script (asyncio, in the same event loop as the proxy); its
own overhead is printed: the send lag (actual send time minus scheduled time) and the latency of
the same client against a stub HTTP server in the same loop.

Phases: warm-up (5 s, not counted), before the fault (10 s), the fault (20 s), after it (15 s).
Per tree, the table gives:

* p50/p99/max of both endpoints before, during and after the fault, and the share of
  lbheartbeats over 100 ms during the fault, also among those sent once the first failing run
  was over (fault start + timeout + 0.1 s); a probe is "during" the fault if it was scheduled
  before its end and answered after its start;
* heartbeats answered per second during the fault, and probes with no answer;
* detection: fault start -> the first failing heartbeat answered (a status other than 200, or no
  answer), and recovery: fault end -> the first passing heartbeat answered;
* hidden outages: heartbeats answered 200 that were sent at least timeout + 0.1 s after the
  fault's start and answered before its end;
* false alarms: failing heartbeats answered before the fault, or sent more than timeout + 1 s
  after its end;
* gunicorn threads busy: each worker counts the requests inside the app (a WSGI middleware around
  it, a request counted from its call to the close of its body) and samples the count every
  20 ms into a file: the mean of both workers summed, the peak (0.1 s bins) and the share of
  0.1 s bins with all 8 threads busy throughout; probes in flight at the client at their peak;
* the proxy's connections.

Targets, ``MET`` or ``MISSED`` per tree: heartbeat p99 <= 1.2 x the timeout and lbheartbeat p99
<= 100 ms, during the fault and after it; 0 hidden outages; 0 false alarms.

Two trees run one after the other in one run, each in a fresh gunicorn alone on the machine:
"before", the ``dockerflow`` package of ``--before-ref`` (default ``5049c0f``, main before issue
21) taken with ``git archive`` into a temporary directory, and "after", the tree the script runs
from (or ``--after-tree``, or ``--after-ref``'s package taken the same way). Each tree is the
working directory of its gunicorn and the first entry of its ``PYTHONPATH``, ahead of the venv's
editable install; each worker writes which ``dockerflow`` it imported, and the table says it.
Both use this venv's interpreter and libraries. About 2 minutes.

This module is also the app gunicorn serves (``outage_bench:create_app()``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKERS = 2
THREADS = 4
HEARTBEATS_PER_SECOND = 20
LBHEARTBEATS_PER_SECOND = 10
HEARTBEAT = "/__heartbeat__"
LBHEARTBEAT = "/__lbheartbeat__"
#: main before issue 21.
DEFAULT_BEFORE_REF = "5049c0f"
#: Seconds between two samples of the busy threads in a worker.
SAMPLE_EVERY = 0.02
#: Seconds of the bins the samples of both workers are summed in.
BIN = 0.1
LBHEARTBEAT_TARGET = 0.1
HEARTBEAT_TARGET_FACTOR = 1.2


# -- the app, in each gunicorn worker ------------------------------------------------------------


def create_app() -> Any:
    """The app gunicorn serves: the database check through the proxy, busy threads counted."""
    import sqlalchemy
    from flask import Flask

    import dockerflow
    from dockerflow.flask import Dockerflow

    directory = Path(os.environ["OUTAGE_BENCH_DIR"])
    app = Flask(__name__)
    app.config["DOCKERFLOW_CHECK_TIMEOUT"] = float(os.environ["OUTAGE_BENCH_TIMEOUT"])
    Dockerflow(app, db=sqlalchemy.create_engine(os.environ["OUTAGE_BENCH_DB_URL"]))
    app.wsgi_app = BusyThreads(app.wsgi_app, directory / f"busy-{os.getpid()}.txt")  # type: ignore[method-assign]
    info = {"pid": os.getpid(), "dockerflow": str(Path(dockerflow.__file__).parent)}
    (directory / f"worker-{os.getpid()}.json").write_text(json.dumps(info))
    return app


class BusyThreads:
    """WSGI middleware counting the requests inside the app; a thread writes the count down.

    Every :data:`SAMPLE_EVERY` seconds a daemon thread appends ``<time.monotonic()> <count>``
    to ``path`` (unbuffered: gunicorn's stop leaves no buffer unwritten).
    """

    def __init__(self, app: Callable[..., Any], path: Path) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._busy = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        threading.Thread(target=self._sample, name="busy-sampler", daemon=True).start()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        with self._lock:
            self._busy += 1
        try:
            body = self._app(environ, start_response)
            try:
                return [b"".join(body)]
            finally:
                if hasattr(body, "close"):
                    body.close()
        finally:
            with self._lock:
                self._busy -= 1

    def _sample(self) -> None:
        while True:
            os.write(self._fd, f"{time.monotonic():.4f} {self._busy}\n".encode())
            time.sleep(SAMPLE_EVERY)


# -- the proxy -----------------------------------------------------------------------------------


class Proxy:
    """A TCP proxy on 127.0.0.1 to ``upstream``, passing or black-holing (see the docstring)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._passing = asyncio.Event()
        self._passing.set()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0
        self.connections_in_hole = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def black_hole(self) -> None:
        self._passing.clear()

    def pass_through(self) -> None:
        self._passing.set()

    async def close(self) -> None:
        """Stop listening and hang up every connection, held ones included."""
        assert self._server is not None
        self._server.close()
        self._passing.set()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        if not self._passing.is_set():
            self.connections_in_hole += 1
        try:
            await self._passing.wait()  # accepted, and held until the hole ends
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(up_writer)
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                up_writer.close()
                self._writers.discard(up_writer)
        except OSError:
            pass
        finally:
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._passing.wait()  # read during a hole: held, not forwarded
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            # One side hung up: so does the other (PostgreSQL's protocol has no half-close).
            writer.close()


# -- the load ------------------------------------------------------------------------------------


@dataclass
class Probe:
    """One request of the schedule and what came of it (``time.monotonic()`` seconds)."""

    path: str
    scheduled: float
    sent: float = math.nan
    done: float = math.nan
    #: The HTTP status; ``None``: no answer within the client timeout, or a broken connection.
    status: int | None = None
    #: Why a heartbeat failed, from its body (see :func:`failure_reason`).
    reason: str = ""

    @property
    def latency(self) -> float:
        return self.done - self.scheduled

    @property
    def passed(self) -> bool:
        return self.status == 200


async def request(port: int, path: str, timeout: float) -> tuple[int | None, bytes]:
    """Send ``GET path`` on a new connection; return the status (``None`` if none came) and
    the body."""

    async def exchange() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.read()  # to the end: the whole answer is counted
            return int(head.split(b" ", 2)[1]), body
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(exchange(), timeout)
    except (OSError, TimeoutError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
        return None, b""


def failure_reason(body: bytes) -> str:
    """A failing heartbeat's messages, numbers masked, or its checks' statuses without details."""
    try:
        report = json.loads(body)
    except ValueError:
        return "no JSON answer" if body else "no answer"
    details = report.get("details") or {}
    if not details:
        return json.dumps(report.get("checks"), sort_keys=True)
    reasons = []
    for name, detail in sorted(details.items()):
        for message_id, text in sorted(detail.get("messages", {}).items()):
            masked = re.sub(r"\d+(\.\d+)?", "#", text)
            reasons.append(f"{name} {message_id.rsplit('.', 1)[-1]}: {masked[:90]}")
    return "; ".join(reasons)


async def run_probe(probe: Probe, port: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(probe.scheduled - loop.time())
    probe.sent = loop.time()
    probe.status, body = await request(port, probe.path, timeout)
    probe.done = loop.time()
    if probe.path == HEARTBEAT and not probe.passed:
        probe.reason = failure_reason(body)


def schedule(start: float, seconds: float) -> list[Probe]:
    """Every probe of ``seconds`` from ``start``, both endpoints, in time order."""
    probes = [
        Probe(path, start + n / rate)
        for path, rate in (
            (HEARTBEAT, HEARTBEATS_PER_SECOND),
            (LBHEARTBEAT, LBHEARTBEATS_PER_SECOND),
        )
        for n in range(int(seconds * rate))
    ]
    return sorted(probes, key=lambda probe: probe.scheduled)


async def client_floor(count: int = 200) -> list[float]:
    """Latencies of this client against a stub HTTP server in the same loop (its overhead)."""

    async def stub(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(stub, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    start = asyncio.get_running_loop().time() + 0.05
    probes = [Probe(LBHEARTBEAT, start + n * 0.01) for n in range(count)]
    await asyncio.gather(*(run_probe(probe, port, 5.0) for probe in probes))
    server.close()
    return [probe.latency for probe in probes]


# -- one tree ------------------------------------------------------------------------------------


@dataclass
class Phases:
    warmup: float
    steady: float
    fault: float
    after: float


@dataclass
class TreeRun:
    """What one tree's run left: probes, the fault's times, the workers' samples."""

    label: str
    tree: Path
    description: str
    probes: list[Probe] = field(default_factory=list)
    measured_from: float = 0.0
    fault_start: float = 0.0
    fault_end: float = 0.0
    end: float = 0.0
    busy: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    imported: list[str] = field(default_factory=list)
    proxy_connections: int = 0
    proxy_connections_in_hole: int = 0
    load: tuple[float, float] = (0.0, 0.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gunicorn(
    tree: Path, directory: Path, port: int, db_url: str, args: argparse.Namespace
) -> Any:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKERFLOW_")}
    env.update(args.settings)
    env.update(
        PYTHONPATH=str(tree),
        OUTAGE_BENCH_DIR=str(directory),
        OUTAGE_BENCH_TIMEOUT=str(args.timeout),
        OUTAGE_BENCH_DB_URL=db_url,
        XDG_RUNTIME_DIR=str(directory),  # gunicorn >= 25 opens a control socket there
        PYTHONUNBUFFERED="1",
    )
    command = [
        *(sys.executable, "-m", "gunicorn", "-c", str(REPO / "examples" / "gunicorn.conf.py")),
        *("--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS)),
        *("--worker-class", "gthread", "--threads", str(THREADS)),
        *("--pythonpath", str(HERE), "--no-control-socket"),
        "outage_bench:create_app()",
    ]
    with (directory / "gunicorn.log").open("wb") as log:
        return subprocess.Popen(command, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop(process: Any) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_until_serving(process: Any, port: int, directory: Path) -> None:
    """Wait for both workers to have loaded the app and a heartbeat to pass."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        workers = list(directory.glob("worker-*.json"))
        if len(workers) == WORKERS and (await request(port, HEARTBEAT, 5.0))[0] == 200:
            return
        await asyncio.sleep(0.1)
    log = (directory / "gunicorn.log").read_text(errors="replace")[-3000:]
    sys.exit(f"gunicorn did not serve a passing heartbeat within 60 s:\n{log}")


async def run_tree(run: TreeRun, args: argparse.Namespace, upstream: tuple[str, int]) -> None:
    """Start gunicorn on ``run.tree``, drive the schedule and the fault, collect the samples."""
    import sqlalchemy

    proxy = Proxy(upstream)
    await proxy.start()
    db_url = (
        sqlalchemy.engine.make_url(args.postgres_url)
        .set(drivername="postgresql+psycopg2", host="127.0.0.1", port=proxy.port)
        .render_as_string(hide_password=False)
    )
    with tempfile.TemporaryDirectory(prefix=f"outage-bench-{run.label}-") as tmp:
        directory = Path(tmp)
        port = free_port()
        load_start = os.getloadavg()[0]
        process = start_gunicorn(run.tree, directory, port, db_url, args)
        try:
            await wait_until_serving(process, port, directory)
            loop = asyncio.get_running_loop()
            phases: Phases = args.phases
            start = loop.time() + 0.2
            total = phases.warmup + phases.steady + phases.fault + phases.after
            run.probes = schedule(start, total)
            run.measured_from = start + phases.warmup
            planned_start = run.measured_from + phases.steady
            probes = asyncio.gather(*(run_probe(p, port, args.client_timeout) for p in run.probes))
            await asyncio.sleep(planned_start - loop.time())
            proxy.black_hole()
            run.fault_start = loop.time()
            await asyncio.sleep(planned_start + phases.fault - loop.time())
            proxy.pass_through()
            run.fault_end = loop.time()
            run.end = start + total
            await probes
        finally:
            stop(process)
            await proxy.close()
        run.load = (load_start, os.getloadavg()[0])
        run.proxy_connections = proxy.connections
        run.proxy_connections_in_hole = proxy.connections_in_hole
        for path in directory.glob("worker-*.json"):
            run.imported.append(json.loads(path.read_text())["dockerflow"])
        for path in directory.glob("busy-*.txt"):
            samples = []
            for line in path.read_text().splitlines():
                moment, _, count = line.partition(" ")
                with contextlib.suppress(ValueError):
                    samples.append((float(moment), int(count)))
            run.busy[int(path.stem.split("-")[1])] = samples


# -- figures -------------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (``nan`` for none)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


def secs(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.2f} s"


@dataclass
class Figures:
    """The figures of one :class:`TreeRun` (see the module docstring)."""

    rows: dict[str, str]
    targets: dict[str, bool]


def busy_figures(run: TreeRun, start: float, end: float) -> tuple[float, float, float]:
    """Mean of both workers' busy threads summed, peak of the 0.1 s bins, share all busy."""
    bins: dict[int, list[tuple[float, float]]] = {}  # bin -> (mean, min) per worker
    means = []
    for samples in run.busy.values():
        inside = [(moment, count) for moment, count in samples if start <= moment < end]
        if not inside:
            continue
        means.append(sum(count for _, count in inside) / len(inside))
        by_bin: dict[int, list[int]] = {}
        for moment, count in inside:
            by_bin.setdefault(int((moment - start) / BIN), []).append(count)
        for number, counts in by_bin.items():
            bins.setdefault(number, []).append((sum(counts) / len(counts), min(counts)))
    whole = [entries for entries in bins.values() if len(entries) == len(run.busy)]
    peak = max((sum(mean for mean, _ in entries) for entries in whole), default=math.nan)
    all_busy = sum(1 for entries in whole if all(low == THREADS for _, low in entries))
    return sum(means), peak, all_busy / len(whole) if whole else math.nan


def figures(run: TreeRun, timeout: float) -> Figures:
    probes = [probe for probe in run.probes if probe.scheduled >= run.measured_from]
    heartbeats = [probe for probe in probes if probe.path == HEARTBEAT]
    # A probe is "during" the fault if it was scheduled before the fault's end and answered after
    # its start: one sent just before the hole and caught in it counts as during.
    phases: dict[str, Callable[[Probe], bool]] = {
        "before": lambda p: p.done < run.fault_start,
        "during": lambda p: p.scheduled < run.fault_end and p.done >= run.fault_start,
        "after": lambda p: p.scheduled >= run.fault_end,
    }
    rows: dict[str, str] = {}
    p99: dict[tuple[str, str], float] = {}
    for path, name in ((HEARTBEAT, "heartbeat"), (LBHEARTBEAT, "lbheartbeat")):
        for phase, belongs in phases.items():
            latencies = [p.latency for p in probes if p.path == path and belongs(p)]
            p99[(name, phase)] = percentile(latencies, 0.99)
            rows[f"{name} {phase} the fault: p50 / p99 / max"] = (
                f"{ms(percentile(latencies, 0.5))} / {ms(p99[(name, phase)])} / "
                f"{ms(max(latencies, default=math.nan))}"
            )
    lb_during = [p for p in probes if p.path == LBHEARTBEAT and phases["during"](p)]
    slow = sum(1 for p in lb_during if p.latency > LBHEARTBEAT_TARGET)
    rows["lbheartbeats over 100 ms during the fault"] = (
        f"{slow}/{len(lb_during)} ({100 * slow / max(1, len(lb_during)):.0f} %)"
    )
    # Those sent once the first failing run was over (the fault's start + the timeout + 0.1 s).
    late = [p for p in lb_during if p.scheduled >= run.fault_start + timeout + 0.1]
    rows["  of those sent after fault start + timeout + 0.1 s"] = (
        f"{sum(p.latency > LBHEARTBEAT_TARGET for p in late)}/{len(late)}"
    )
    fault_seconds = run.fault_end - run.fault_start
    served = sum(1 for p in heartbeats if run.fault_start <= p.done < run.fault_end)
    rows["heartbeats answered per second during the fault"] = (
        f"{served / fault_seconds:.1f} of {HEARTBEATS_PER_SECOND}"
    )
    unanswered = [p for p in probes if p.status is None]
    rows["probes with no answer (heartbeat / lbheartbeat)"] = (
        f"{sum(p.path == HEARTBEAT for p in unanswered)} / "
        f"{sum(p.path == LBHEARTBEAT for p in unanswered)}"
    )
    failing_after_start = [p for p in heartbeats if not p.passed and p.done >= run.fault_start]
    detection = min((p.done for p in failing_after_start), default=None)
    passing_after_end = [p for p in heartbeats if p.passed and p.done >= run.fault_end]
    recovery = min((p.done for p in passing_after_end), default=None)
    rows["detection: fault start -> first failing heartbeat"] = secs(
        None if detection is None else detection - run.fault_start
    )
    rows["recovery: fault end -> first passing heartbeat"] = secs(
        None if recovery is None else recovery - run.fault_end
    )
    last_failure = max(
        (p.done for p in heartbeats if not p.passed and p.done >= run.fault_end), default=None
    )
    rows["fault end -> last failing heartbeat"] = secs(
        None if last_failure is None else last_failure - run.fault_end
    )
    hidden = [
        p
        for p in heartbeats
        if p.passed and p.sent >= run.fault_start + timeout + 0.1 and p.done <= run.fault_end
    ]
    false_alarms = [
        p
        for p in heartbeats
        if not p.passed and (p.done < run.fault_start or p.sent > run.fault_end + timeout + 1.0)
    ]
    rows["hidden outages (200 during the hole)"] = str(len(hidden))
    rows["false alarms (before; after end + timeout + 1 s)"] = (
        f"{sum(p.done < run.fault_start for p in false_alarms)}; "
        f"{sum(p.done >= run.fault_start for p in false_alarms)}"
    )
    windows = {
        "before": (run.measured_from, run.fault_start),
        "during": (run.fault_start, run.fault_end),
    }
    for phase, (start, end) in windows.items():
        mean, peak, share = busy_figures(run, start, end)
        rows[f"threads busy {phase} the fault: mean / peak / all 8"] = (
            f"{mean:.2f} / {peak:.2f} / {100 * share:.0f} %"
        )
    in_flight = peak_in_flight(run.probes, run.fault_start, run.fault_end)
    rows["probes in flight at the client, peak during the fault"] = str(in_flight)
    rows["proxy connections (all / opened in the hole)"] = (
        f"{run.proxy_connections} / {run.proxy_connections_in_hole}"
    )
    lags = [p.sent - p.scheduled for p in run.probes]
    rows["client send lag p99 / max"] = f"{ms(percentile(lags, 0.99))} / {ms(max(lags))}"
    rows["load average (1 min) at start / end"] = f"{run.load[0]:.2f} / {run.load[1]:.2f}"
    bound = HEARTBEAT_TARGET_FACTOR * timeout
    targets = {
        f"heartbeat p99 <= {bound:g} s during and after the fault": max(
            p99[("heartbeat", "during")], p99[("heartbeat", "after")]
        )
        <= bound,
        "lbheartbeat p99 <= 100 ms during and after the fault": max(
            p99[("lbheartbeat", "during")], p99[("lbheartbeat", "after")]
        )
        <= LBHEARTBEAT_TARGET,
        "0 hidden outages": not hidden,
        "0 false alarms": not false_alarms,
    }
    return Figures(rows, targets)


def peak_in_flight(probes: Iterable[Probe], start: float, end: float) -> int:
    """The most probes sent and not yet answered at one time between ``start`` and ``end``."""
    events = sorted(
        [(p.sent, 1) for p in probes if p.sent < end]
        + [(p.done, -1) for p in probes if p.sent < end]
    )
    current = peak = 0
    for moment, change in events:
        current += change
        if start <= moment < end:
            peak = max(peak, current)
    return peak


# -- the run -------------------------------------------------------------------------------------


def git(directory: Path, *command: str) -> str:
    return subprocess.run(
        ["git", "-C", str(directory), *command], check=True, capture_output=True, text=True
    ).stdout.strip()


def describe(tree: Path) -> str:
    """The commit of ``tree``, and whether its ``dockerflow`` package differs from it."""
    try:
        commit = git(tree, "log", "-1", "--format=%h %s")
        dirty = git(tree, "status", "--porcelain", "--", "dockerflow")
    except (OSError, subprocess.CalledProcessError):
        return "not a git tree"
    return f"{commit[:70]}{' (+ uncommitted changes in dockerflow/)' if dirty else ''}"


def archive(ref: str, destination: Path) -> str:
    """Extract the ``dockerflow`` package of ``ref`` into ``destination``; describe ``ref``."""
    data = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", ref, "dockerflow"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(destination)], input=data, check=True)
    return git(REPO, "log", "-1", "--format=%h %s", ref)[:70]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--after-tree", type=Path, default=REPO, help="the tree with the fix (default: this one)"
    )
    parser.add_argument(
        "--after-ref",
        help="a git ref to take the tree with the fix from instead (as --before-ref is taken)",
    )
    parser.add_argument(
        "--before-ref", default=DEFAULT_BEFORE_REF, help="git ref of the tree without the fix"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        help="DOCKERFLOW_CHECK_TIMEOUT (default: 3, the library's)",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "DOCKERFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--steady", type=float, default=10.0, help="seconds before the fault")
    parser.add_argument("--fault", type=float, default=20.0, help="seconds of black hole")
    parser.add_argument("--after", type=float, default=15.0, help="seconds after the fault")
    parser.add_argument("--client-timeout", type=float, default=15.0)
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="DOCKERFLOW_NAME=VALUE",
        help="a setting for both trees, in the environment (repeatable; default: none)",
    )
    args = parser.parse_args(argv)
    args.settings = dict(setting.partition("=")[::2] for setting in args.setting)
    if any(not name.startswith("DOCKERFLOW_") for name in args.settings):
        parser.error("--setting takes DOCKERFLOW_NAME=VALUE")
    if args.after_ref is not None and args.after_tree != REPO:
        parser.error("--after-tree and --after-ref are exclusive")
    args.after_tree = args.after_tree.resolve()
    if not (args.after_tree / "dockerflow" / "__init__.py").is_file():
        parser.error(f"--after-tree {args.after_tree} has no dockerflow package")
    if min(args.timeout, args.steady, args.fault, args.after, args.client_timeout) <= 0:
        parser.error("the timeout and every duration must be positive")
    args.phases = Phases(args.warmup, args.steady, args.fault, args.after)
    return args


async def main_async(args: argparse.Namespace) -> None:
    import sqlalchemy

    url = sqlalchemy.engine.make_url(args.postgres_url)
    upstream = (url.host or "127.0.0.1", url.port or 5432)
    started = time.monotonic()
    load = os.popen("uptime").read().strip()
    floor = await client_floor()
    with (
        tempfile.TemporaryDirectory(prefix="outage-bench-before-tree-") as before_tmp,
        tempfile.TemporaryDirectory(prefix="outage-bench-after-tree-") as after_tmp,
    ):
        before_tree = Path(before_tmp)
        before = TreeRun(
            "before", before_tree, f"{args.before_ref}: {archive(args.before_ref, before_tree)}"
        )
        if args.after_ref is None:
            after = TreeRun(
                "after", args.after_tree, f"{args.after_tree}: {describe(args.after_tree)}"
            )
        else:
            after_tree = Path(after_tmp)
            after = TreeRun(
                "after", after_tree, f"{args.after_ref}: {archive(args.after_ref, after_tree)}"
            )
        runs = [before, after]
        for run in runs:
            print(f"running {run.label}: {run.description}", file=sys.stderr, flush=True)
            await run_tree(run, args, upstream)
    results = [figures(run, args.timeout) for run in runs]

    phases = args.phases
    print(
        f"\ngunicorn -c examples/gunicorn.conf.py -w {WORKERS} -k gthread --threads {THREADS}; "
        f"DOCKERFLOW_CHECK_TIMEOUT={args.timeout:g}; database check (psycopg2) through a proxy "
        f"to {upstream[0]}:{upstream[1]} that black-holes for {phases.fault:g} s; "
        f"{HEARTBEATS_PER_SECOND} heartbeats/s + {LBHEARTBEATS_PER_SECOND} lbheartbeats/s, "
        f"open-loop, a new connection each; warm-up {phases.warmup:g} s, "
        f"{phases.steady:g} s before the fault, {phases.after:g} s after"
    )
    if args.settings:
        print("settings: " + ", ".join(f"{k}={v}" for k, v in args.settings.items()))
    for run in runs:
        print(f"{run.label}: {run.description}")
        print(f"  {run.label} workers imported: {', '.join(sorted(set(run.imported)))}")
    print(
        f"client overhead (this script against a stub server in its loop, {len(floor)} requests): "
        f"p50 {ms(percentile(floor, 0.5))}, p99 {ms(percentile(floor, 0.99))}, "
        f"max {ms(max(floor))}"
    )
    print()
    width = max(len(row) for row in results[0].rows)
    print(f"| {'':{width}} | {'before':>28} | {'after':>28} |")
    print(f"|{'-' * (width + 2)}|{'-' * 30}|{'-' * 30}|")
    for row in results[0].rows:
        cells = " | ".join(f"{result.rows[row]:>28}" for result in results)
        print(f"| {row:{width}} | {cells} |")
    print()
    for target in results[0].targets:
        verdicts = ", ".join(
            f"{run.label} {'MET' if result.targets[target] else 'MISSED'}"
            for run, result in zip(runs, results, strict=True)
        )
        print(f"target: {target}: {verdicts}")
    print("\nfailing heartbeats during the fault, by what they said (the most frequent 6):")
    for run in runs:
        during = [
            p.reason
            for p in run.probes
            if p.path == HEARTBEAT
            and not p.passed
            and p.scheduled < run.fault_end
            and p.done >= run.fault_start
        ]
        for reason, count in Counter(during).most_common(6):
            print(f"  {run.label}: {count:4d} x {reason}")
    print(f"\nuptime at start: {load}")
    print(f"uptime at end:   {os.popen('uptime').read().strip()}")
    print(f"whole run {time.monotonic() - started:.0f} s")


def main(argv: Sequence[str] | None = None) -> None:
    """Run both trees and print the table and the targets."""
    asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    main()
