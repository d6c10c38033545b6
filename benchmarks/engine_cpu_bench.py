"""CPU time per heartbeat of the engine alone, for trivial checks (issue 24's F, H and G).

Process CPU time (every thread's: the request thread, the worker threads and the loop thread) per
:meth:`Engine.run_sync`, median of interleaved rounds, and voluntary context switches per
heartbeat. CPU time is steadier than wall time on a shared machine, but a loaded machine still
inflates it (cache misses, migrations): compare figures of one run, not across runs. Run:

    .venv/bin/python benchmarks/engine_cpu_bench.py [--rounds 5] [--heartbeats 2000]

With ``--profile CASE`` (``F``, ``H`` or ``G``) it prints instead the top entries of a cProfile
of that case, every thread's calls merged (the request thread, the workers, the loop thread).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import statistics
import time
from collections.abc import Callable

from threads_profile import print_profile

from dockerflow.engine import Check, Engine


def sync_ok() -> None:
    return None


async def async_ok() -> None:
    await asyncio.sleep(0)


def cases() -> dict[str, list[Check]]:
    return {
        "F: 10 trivial sync": [Check(f"s{i}", _fresh(sync_ok)) for i in range(10)],
        "H: 1 trivial sync": [Check("h", _fresh(sync_ok))],
        "G: 10 trivial async": [Check(f"a{i}", _fresh_async()) for i in range(10)],
    }


def _fresh(func: Callable[[], None]) -> Callable[[], None]:
    # A function object of its own per check: the engine keys runs by function.
    def check() -> None:
        return func()

    return check


def _fresh_async() -> Callable[[], object]:
    async def check() -> None:
        await async_ok()

    return check


def measure(engine: Engine, checks: list[Check], heartbeats: int) -> tuple[float, float]:
    """Return CPU µs and voluntary context switches per heartbeat."""
    for _ in range(50):
        engine.run_sync(checks)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = time.process_time()
    for _ in range(heartbeats):
        report = engine.run_sync(checks)
        assert report.status == "ok", report.as_dict()
    cpu = time.process_time() - cpu
    switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - usage.ru_nvcsw
    return cpu / heartbeats * 1e6, switches / heartbeats


def profile(case: str, heartbeats: int, top: int) -> None:
    """Print the top entries (by own time) of a cProfile of ``case``, over every thread."""
    engine = Engine()
    checks = next(checks for name, checks in cases().items() if name.startswith(case))

    def run(count: int) -> None:
        for _ in range(count):
            engine.run_sync(checks)

    try:
        print_profile(
            f"cProfile of {case} over {heartbeats} heartbeats",
            lambda: run(50),
            lambda: run(heartbeats),
            top,
        )
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--heartbeats", type=int, default=2000)
    parser.add_argument("--profile", choices=["F", "H", "G"], help="profile one case instead")
    parser.add_argument("--top", type=int, default=25, help="entries of the profile shown")
    args = parser.parse_args()
    logging.getLogger("dockerflow").addHandler(logging.NullHandler())
    if args.profile:
        profile(args.profile, args.heartbeats, args.top)
        return
    engine = Engine()
    by_case = cases()
    cpu: dict[str, list[float]] = {name: [] for name in by_case}
    csw: dict[str, list[float]] = {name: [] for name in by_case}
    try:
        for _ in range(args.rounds):  # interleaved: load changes hit every case alike
            for name, checks in by_case.items():
                us, switches = measure(engine, checks, args.heartbeats)
                cpu[name].append(us)
                csw[name].append(switches)
    finally:
        engine.close()
    print(f"{'case':<22} {'CPU µs/heartbeat':>17} {'(min..max)':>16} {'vol. csw/hb':>12}")
    for name in by_case:
        low, high = min(cpu[name]), max(cpu[name])
        print(
            f"{name:<22} {statistics.median(cpu[name]):>17.1f} "
            f"{f'({low:.0f}..{high:.0f})':>16} {statistics.median(csw[name]):>12.2f}"
        )
    f = statistics.median(cpu["F: 10 trivial sync"])
    g = statistics.median(cpu["G: 10 trivial async"])
    print(f"\nG / F = {g / f:.2f} (issue 24 target <= 1.2)")


if __name__ == "__main__":
    main()
