"""What the Dockerflow Flask extension adds to each request, ours against python-dockerflow.

Each side runs in its own interpreter: ours from the project's venv, python-dockerflow 2026.3.4
from a throwaway venv (``/tmp/dfref-venv``, created on first run, never the project's venv;
its Flask module imports SQLAlchemy, so that is installed there too). Each child builds a
hello-world app twice, bare and with ``Dockerflow(app)``, and calls both through their WSGI
callables with a prebuilt environ (copied per call, as a server hands each request a fresh
dict) carrying a valid ``X-Request-ID`` and a ``User-Agent``.

Within a round the two apps take turns in chunks of ``--chunk`` requests, so chunk ``i`` of
the bare app and chunk ``i`` of the extension app ran side by side. The children run one after
the other, sides alternating, ``--passes`` times each. The table shows medians over all chunks:
bare µs and extension µs, and "added", the median of the per-pair differences, which shrugs
off a chunk that another process on a shared core stretched. "norm" is the ratio of the
medians of the per-pair differences divided by the pair's bare time; it cancels a machine that
was uniformly slower while one side ran, so the two ratios agreeing means the run was steady.

Two logging set-ups, identical on both sides except for each package's own formatter:

* ``summary on``: ``request.summary`` at INFO, one ``StreamHandler`` writing mozlog JSON to
  a stream that discards it (ours: ``JsonLogFormatter``; python-dockerflow:
  ``MozlogFormatter``, as its ``JsonLogFormatter`` is deprecated and warns);
* ``summary off``: the same handler, the logger at WARNING.

Run from the repository root::

    .venv/bin/python benchmarks/request_overhead_bench.py
    .venv/bin/python benchmarks/request_overhead_bench.py --requests 5000 --passes 1 --profile

``--profile`` adds, for each side, a cProfile breakdown of the extension's request hooks.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REFERENCE_VERSION = "2026.3.4"
REFERENCE_VENV = Path("/tmp/dfref-venv")
# python-dockerflow's dockerflow.flask imports sqlalchemy unconditionally.
REFERENCE_REQUIREMENTS = (f"dockerflow=={REFERENCE_VERSION}", "flask", "sqlalchemy")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
OURS_PYTHON = PROJECT_ROOT / ".venv" / "bin" / "python"
TARGET_RATIO = 0.5

REQUEST_ID = "4b1c5a5e-0f1d-4a57-9c39-2a0b6f1f5f7e"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
# (label, level of the request.summary logger)
CONFIGS = (("summary on", "INFO"), ("summary off", "WARNING"))
SIDES = ("ours", "reference")
# The extension's per-request functions, in either package, for --profile.
HOOKS = r"_before_request|_after_request|summary_extra|user_id|extract_request_id|_state"
# Linux: the calling thread's usage; elsewhere the process's (one thread runs here anyway).
RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


# -- child: runs inside one venv, imports flask and that venv's dockerflow ----------------------


class _DiscardStream:
    """A text stream that drops what is written, keeping the last line and a count."""

    def __init__(self) -> None:
        self.writes = 0
        self.last = ""

    def write(self, text: str) -> int:
        self.writes += 1
        self.last = text
        return len(text)

    def flush(self) -> None:
        pass


def _describe_dockerflow(side: str) -> str:
    """Name the dockerflow this child imported; exit if it is the wrong one."""
    import importlib.metadata

    import dockerflow

    origin = str(Path(dockerflow.__file__).resolve().parent)
    ours = origin.startswith(str(PROJECT_ROOT))
    if side == "ours":
        if not ours:
            raise SystemExit(f"ours: imported dockerflow from {origin}, not {PROJECT_ROOT}")
        return f"dockerflow-async {importlib.metadata.version('dockerflow-async')} ({origin})"
    version = importlib.metadata.version("dockerflow")
    if version != REFERENCE_VERSION or ours:
        raise SystemExit(f"reference: imported dockerflow {version} from {origin}")
    return f"python-dockerflow {version} ({origin})"


def _make_apps(side: str, stream: _DiscardStream) -> tuple[Any, Any, Any]:
    """Return ``(bare_app, ext_app, summary_logger)`` with the summary handler installed."""
    import logging

    import flask

    from dockerflow.flask import Dockerflow

    if side == "ours":
        from dockerflow.logging import JsonLogFormatter as Formatter
    else:
        from dockerflow.logging import MozlogFormatter as Formatter

    handler = logging.StreamHandler(stream)
    handler.setFormatter(Formatter(logger_name="bench"))
    summary = logging.getLogger("request.summary")
    summary.handlers[:] = [handler]
    summary.propagate = False

    def hello() -> str:
        return "hello"

    bare = flask.Flask(__name__)
    bare.add_url_rule("/", "hello", hello)
    ext = flask.Flask(__name__)
    ext.add_url_rule("/", "hello", hello)
    Dockerflow(ext)
    return bare, ext, summary


def _make_caller(app: Any, environ: dict[str, Any]) -> Callable[[], tuple[str, list[Any], bytes]]:
    """Return a function that sends one request to ``app`` as a WSGI server would."""
    seen: list[Any] = []

    def start_response(status: str, headers: list[Any], exc_info: Any = None) -> None:
        seen[:] = [status, headers]

    def call() -> tuple[str, list[Any], bytes]:
        body = app(environ.copy(), start_response)
        try:
            data = b"".join(body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return seen[0], seen[1], data

    return call


def _check_once(
    side: str, name: str, call: Callable[[], Any], stream: _DiscardStream, logs: bool
) -> None:
    """Exit unless one request behaves as the benchmark assumes."""
    before = stream.writes
    status, headers, data = call()
    if status != "200 OK" or data != b"hello":
        raise SystemExit(f"{side}/{name}: unexpected response {status} {data!r}")
    wrote = stream.writes - before
    if name == "bare" or not logs:
        if wrote:
            raise SystemExit(f"{side}/{name}: wrote {wrote} log lines, expected none")
        return
    if wrote != 1:
        raise SystemExit(f"{side}/{name}: wrote {wrote} log lines, expected one")
    fields = json.loads(stream.last)["Fields"]
    if fields.get("rid") != REQUEST_ID or fields.get("agent") != USER_AGENT:
        raise SystemExit(f"{side}/{name}: unexpected request.summary fields {fields}")
    if side == "ours" and dict(headers).get("X-Request-ID") != REQUEST_ID:
        raise SystemExit(f"{side}/{name}: X-Request-ID was not echoed")


def _time_round(
    callers: dict[str, Callable[[], Any]], requests: int, chunk: int
) -> dict[str, list[float]]:
    """Call each caller ``requests`` times; return its µs per request in each chunk.

    The callers take turns in chunks of ``chunk`` calls, first one then the other going
    first, so chunk ``i`` of one caller and chunk ``i`` of the other ran side by side. Besides
    wall-clock µs (``name``), each chunk gives the thread's CPU µs (``name cpu``) and its
    context switches (``name csw``) per request, from ``getrusage(RUSAGE_THREAD)``.
    """
    times: dict[str, list[float]] = {}
    for name in callers:
        times[name], times[f"{name} cpu"], times[f"{name} csw"] = [], [], []
    order = list(callers)
    gc.collect()
    for done in range(0, requests, chunk):
        count = min(chunk, requests - done)
        for name in order:
            call = callers[name]
            before = resource.getrusage(RUSAGE_THREAD)
            cpu = time.thread_time_ns()
            start = time.perf_counter_ns()
            for _ in range(count):
                call()
            times[name].append((time.perf_counter_ns() - start) / count / 1000)
            times[f"{name} cpu"].append((time.thread_time_ns() - cpu) / count / 1000)
            after = resource.getrusage(RUSAGE_THREAD)
            switches = after.ru_nvcsw + after.ru_nivcsw - before.ru_nvcsw - before.ru_nivcsw
            times[f"{name} csw"].append(switches / count)
        order.reverse()
    return times


def _profile(call: Callable[[], Any], requests: int) -> str:
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(lambda: [call() for _ in range(requests)])
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("cumulative")
    stats.print_stats(HOOKS)
    stats.print_callees(HOOKS)
    return out.getvalue()


def child(side: str, args: argparse.Namespace) -> dict[str, Any]:
    import logging

    from werkzeug.test import EnvironBuilder

    environ = EnvironBuilder(
        path="/", headers={"X-Request-ID": REQUEST_ID, "User-Agent": USER_AGENT}
    ).get_environ()
    stream = _DiscardStream()
    bare, ext, summary = _make_apps(side, stream)
    callers = {"bare": _make_caller(bare, environ), "ext": _make_caller(ext, environ)}
    result: dict[str, Any] = {"dockerflow": _describe_dockerflow(side), "rounds": {}}
    for label, level in CONFIGS:
        summary.setLevel(getattr(logging, level))
        for name, call in callers.items():
            _check_once(side, name, call, stream, logs=level == "INFO")
            for _ in range(args.warmup):
                call()
        result["rounds"][label] = [
            _time_round(callers, args.requests, args.chunk) for _ in range(args.rounds)
        ]
    if args.profile:
        summary.setLevel(logging.INFO)
        result["profile"] = _profile(callers["ext"], args.requests)
    return result


# -- parent: prepares the reference venv, runs the children, prints the table -------------------


def ensure_reference_venv(venv: Path, attempts: int = 6) -> Path:
    """Return the reference venv's python, creating the venv or installing into it if needed.

    Another benchmark may be creating the same venv at the same time: a step that fails (a
    half-made venv, pip busy) is retried after a pause.
    """
    python = venv / "bin" / "python"
    probe = (
        "import importlib.metadata as m, dockerflow.flask; "
        f"assert m.version('dockerflow') == {REFERENCE_VERSION!r}"
    )
    for attempt in range(1, attempts + 1):
        if (
            python.exists()
            and subprocess.run([python, "-I", "-c", probe], capture_output=True).returncode == 0
        ):
            return python
        try:
            if not python.exists():
                subprocess.run([sys.executable, "-m", "venv", venv], check=True)
            subprocess.run(
                [python, "-m", "pip", "install", "-q", *REFERENCE_REQUIREMENTS], check=True
            )
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"setting up {venv} failed ({exc}); retry {attempt}/{attempts}", file=sys.stderr)
            time.sleep(10)
    raise SystemExit(
        f"could not set up {venv}; create it with: python3 -m venv {venv} && "
        f"{python} -m pip install {' '.join(REFERENCE_REQUIREMENTS)}"
    )


def run_child(python: Path, side: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        str(python),
        "-I",  # neither the script's directory nor the cwd on sys.path: the venv's dockerflow
        str(Path(__file__).resolve()),
        "--child",
        side,
        "--requests",
        str(args.requests),
        "--rounds",
        str(args.rounds),
        "--warmup",
        str(args.warmup),
        "--chunk",
        str(args.chunk),
    ]
    if args.profile:
        command.append("--profile")
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{side} child failed:\n{done.stderr}")
    if done.stderr:
        print(f"{side} child stderr:\n{done.stderr}", file=sys.stderr)
    return json.loads(done.stdout)


def summarise(rounds: list[dict[str, list[float]]], measure: str = "") -> dict[str, float]:
    """Return medians over all chunks of bare µs, extension µs, and of the per-chunk-pair
    added µs and added relative to bare.

    Medians of pairs shrug off a chunk that a busy machine stretched, and the relative figure
    also a machine that was uniformly slower while one side ran.

    :param measure: ``""`` for wall-clock µs, ``" cpu"`` for CPU µs, ``" csw"`` for context
        switches, per request.
    """
    bare = [t for r in rounds for t in r["bare" + measure]]
    ext = [t for r in rounds for t in r["ext" + measure]]
    relative = [(e - b) / b for b, e in zip(bare, ext, strict=True) if b > 0]
    return {
        "bare": statistics.median(bare),
        "ext": statistics.median(ext),
        "added": statistics.median(e - b for b, e in zip(bare, ext, strict=True)),
        "relative": statistics.median(relative) if relative else 0.0,
    }


def _ratio(ours: float, ref: float) -> str:
    return f"{ours / ref:.2f}" if ref > 0 else "n/a"


def print_table(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    for side in SIDES:
        print(f"{side + ':':<11}{results[side][0]['dockerflow']}")
    rounds = args.rounds * args.passes
    print(f"{args.requests} requests per app per round, {rounds} rounds per side and config")
    print(f"load: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    verdicts = []
    for title, measure in (("wall-clock µs", ""), ("CPU µs (thread)", " cpu")):
        print(f"\n{title} per request")
        header = (
            f"{'config':<12} {'side':<10} {'bare':>8} {'+ext':>8} {'added':>9}"
            f" {'ours/ref':>9} {'norm':>6} {'csw/req':>8}"
        )
        print(header)
        print("-" * len(header))
        for label, _level in CONFIGS:
            runs = {
                side: [r for run in results[side] for r in run["rounds"][label]] for side in SIDES
            }
            stats = {side: summarise(runs[side], measure) for side in SIDES}
            for side in SIDES:
                s = stats[side]
                switches = summarise(runs[side], " csw")["ext"]
                ratios = f" {'':>9} {'':>6}"
                if side == SIDES[-1]:
                    ours, ref = stats["ours"], stats["reference"]
                    ratio = ours["added"] / ref["added"] if ref["added"] > 0 else float("inf")
                    ratios = f" {_ratio(ours['added'], ref['added']):>9}"
                    ratios += f" {_ratio(ours['relative'], ref['relative']):>6}"
                    verdicts.append((f"{label}, {title}", ratio))
                print(
                    f"{label:<12} {side:<10} {s['bare']:>8.2f} {s['ext']:>8.2f}"
                    f" {s['added']:>9.2f}{ratios} {switches:>8.3f}"
                )
    print()
    for name, ratio in verdicts:
        verdict = "MET" if ratio <= TARGET_RATIO else "MISSED"
        print(
            f"{verdict:<7} request overhead, {name}: ours/ref {ratio:.2f} (target <= {TARGET_RATIO})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="requests per app per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per config in each child")
    parser.add_argument("--passes", type=int, default=2, help="times each side's child runs")
    parser.add_argument("--warmup", type=int, default=2_000, help="untimed requests per app first")
    parser.add_argument("--chunk", type=int, default=200, help="requests per turn within a round")
    parser.add_argument("--profile", action="store_true", help="cProfile the extension's hooks")
    parser.add_argument("--ours-python", type=Path, default=OURS_PYTHON)
    parser.add_argument("--reference-venv", type=Path, default=REFERENCE_VENV)
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        json.dump(child(args.child, args), sys.stdout)
        return

    pythons = {"ours": args.ours_python, "reference": ensure_reference_venv(args.reference_venv)}
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    # One child at a time, sides alternating: two at once would compete for the cores.
    for _ in range(args.passes):
        for side in SIDES:
            results[side].append(run_child(pythons[side], side, args))
    print_table(results, args)
    if args.profile:
        for side in SIDES:
            print(f"\ncProfile of the {side} extension app, summary on:")
            print(results[side][0]["profile"])


if __name__ == "__main__":
    main()
