"""CPU per heartbeat of the sync heartbeat view against an ``async def`` Flask view, same checks.

Flask runs an ``async def`` view through asgiref's ``async_to_sync``: a new event loop for each
request, run in a thread of asgiref's. The checks' async clients must stay on the engine's one
loop, so the async view runs the checks as the sync view does (``Dockerflow.run_checks``, through
the engine's loop thread for async checks); what it adds is Flask's loop per request. The bare
views (no checks) show that cost alone.

Each app has 10 trivial checks, all sync or all async. In-process through the WSGI callable;
process CPU time (every thread's) and voluntary context switches per request, median of
interleaved rounds. Run:

    .venv/bin/python benchmarks/heartbeat_view_bench.py [--rounds 5] [--requests 1000]

With ``--profile CASE`` it prints instead the top entries of a cProfile of one case (``CASE`` is
its short name: ``sync-sync`` for the sync view with 10 sync checks, ``sync-async``,
``async-sync``, ``async-async``, ``bare-sync``, ``bare-async``), every thread's calls merged.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import statistics
import time
from collections.abc import Callable

from flask import Flask, jsonify
from threads_profile import print_profile
from werkzeug.test import EnvironBuilder

from dockerflow.flask import Dockerflow


def make_app(is_async: bool) -> tuple[Flask, Dockerflow]:
    app = Flask(f"bench-{'async' if is_async else 'sync'}-checks")
    ext = Dockerflow(app)
    for i in range(10):
        if is_async:

            async def async_ok() -> None:
                await asyncio.sleep(0)

            ext.check(async_ok, name=f"a{i}")
        else:

            def sync_ok() -> None:
                return None

            ext.check(sync_ok, name=f"s{i}")

    @app.route("/async-heartbeat")
    async def async_heartbeat() -> object:
        # Blocks this request's own loop (a new one per request, nothing else runs on it).
        report = ext.run_checks()
        return jsonify(report.as_dict()), 200 if report.status == "ok" else 500

    @app.route("/bare-sync")
    def bare_sync() -> object:
        return jsonify({})

    @app.route("/bare-async")
    async def bare_async() -> object:
        return jsonify({})

    return app, ext


def requester(app: Flask, path: str) -> Callable[[int], None]:
    """Return a function making that many requests of ``path`` through ``app``'s WSGI callable."""
    environ = EnvironBuilder(path=path).get_environ()

    def start_response(status: str, headers: object, exc_info: object = None) -> None:
        assert status.startswith("200"), (path, status)

    def make(count: int) -> None:
        for _ in range(count):
            b"".join(app(dict(environ), start_response))

    return make


def measure(app: Flask, path: str, requests: int) -> tuple[float, float]:
    """Return CPU µs and voluntary context switches per request of ``path``."""
    make = requester(app, path)
    make(50)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = time.process_time()
    make(requests)
    cpu = time.process_time() - cpu
    switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - usage.ru_nvcsw
    return cpu / requests * 1e6, switches / requests


#: ``--profile`` case -> (whether the app's checks are async, the path requested).
PROFILED = {
    "sync-sync": (False, "/__heartbeat__"),
    "sync-async": (True, "/__heartbeat__"),
    "async-sync": (False, "/async-heartbeat"),
    "async-async": (True, "/async-heartbeat"),
    "bare-sync": (False, "/bare-sync"),
    "bare-async": (False, "/bare-async"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--profile", choices=sorted(PROFILED), help="profile one case instead")
    parser.add_argument("--top", type=int, default=25, help="entries of the profile shown")
    args = parser.parse_args()
    logging.getLogger("dockerflow").addHandler(logging.NullHandler())
    logging.getLogger("request.summary").disabled = True  # one log line per request otherwise
    if args.profile:
        checks_async, path = PROFILED[args.profile]
        app, ext = make_app(is_async=checks_async)
        make = requester(app, path)
        try:
            print_profile(
                f"cProfile of {args.profile} over {args.requests} requests",
                lambda: make(50),
                lambda: make(args.requests),
                args.top,
            )
        finally:
            ext.close()
        return
    sync_app, sync_ext = make_app(is_async=False)
    async_app, async_ext = make_app(is_async=True)
    cases: dict[str, Callable[[], tuple[float, float]]] = {
        "sync view, 10 sync checks": lambda: measure(sync_app, "/__heartbeat__", args.requests),
        "async view, 10 sync checks": lambda: measure(sync_app, "/async-heartbeat", args.requests),
        "sync view, 10 async checks": lambda: measure(async_app, "/__heartbeat__", args.requests),
        "async view, 10 async checks": lambda: measure(
            async_app, "/async-heartbeat", args.requests
        ),
        "bare sync view": lambda: measure(sync_app, "/bare-sync", args.requests),
        "bare async view": lambda: measure(sync_app, "/bare-async", args.requests),
    }
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    csw: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for _ in range(args.rounds):  # interleaved: load changes hit every case alike
            for name, run in cases.items():
                us, switches = run()
                cpu[name].append(us)
                csw[name].append(switches)
    finally:
        sync_ext.close()
        async_ext.close()
    print(f"{'case':<30} {'CPU µs/request':>15} {'(min..max)':>16} {'vol. csw/req':>13}")
    for name in cases:
        low, high = min(cpu[name]), max(cpu[name])
        print(
            f"{name:<30} {statistics.median(cpu[name]):>15.1f} "
            f"{f'({low:.0f}..{high:.0f})':>16} {statistics.median(csw[name]):>13.2f}"
        )
    med = {name: statistics.median(values) for name, values in cpu.items()}
    print()
    for checks in ("sync", "async"):
        ratio = med[f"async view, 10 {checks} checks"] / med[f"sync view, 10 {checks} checks"]
        print(f"async view / sync view, 10 {checks} checks: {ratio:.2f}")
    print(
        f"bare async view - bare sync view: {med['bare async view'] - med['bare sync view']:.0f} µs"
    )


if __name__ == "__main__":
    main()
