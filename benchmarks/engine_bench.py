"""Heartbeat latency of the checks engine, against running the same checks inline one by one.

Run with ``python benchmarks/engine_bench.py`` (or ``make bench``). Every engine figure goes
through :meth:`Engine.run_sync`, the path a WSGI request thread takes: a run per check started by
the scheduler (a worker thread for a sync check, a task on the loop thread for an async one), a
wait on each run's event until its deadline, aggregation.

The blocked-loop case is an ``async def`` check that calls ``time.sleep(3)`` (a blocking client
in the wrong kind of check) with a 0.5 s timeout, beside a trivial async and a trivial sync check:
every heartbeat must still answer within 0.5 s + 0.25 s.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from dockerflow.engine import Check, Engine

TARGET_SYNC_50X100_MS = 200.0
TARGET_HUNG_MS = 550.0
TARGET_OVERHEAD_MS = 0.5
TARGET_BLOCKED_LOOP_MS = 750.0


@dataclass
class Row:
    case: str
    engine: list[float]  # seconds per heartbeat
    inline: list[float] | None  # seconds to call the same checks one after another; None: hangs

    @property
    def engine_median(self) -> float:
        return statistics.median(self.engine)

    @property
    def inline_median(self) -> float | None:
        return None if self.inline is None else statistics.median(self.inline)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}" if seconds < 0.01 else f"{seconds * 1000:.1f}"


def time_engine(engine: Engine, checks: Sequence[Check], repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        engine.run_sync(checks)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        report = engine.run_sync(checks)
        times.append(time.perf_counter() - started)
        assert len(report.checks) == len(checks)
    return times


def time_inline_sync(funcs: Sequence[Callable[[], object]], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for func in funcs:
            func()
        times.append(time.perf_counter() - started)
    return times


def time_inline_async(funcs: Sequence[Callable[[], Any]], repeats: int) -> list[float]:
    times: list[float] = []

    async def main() -> None:
        for _ in range(repeats):
            started = time.perf_counter()
            for func in funcs:
                await func()
            times.append(time.perf_counter() - started)

    anyio.run(main)
    return times


def time_inline(funcs: Sequence[Callable[[], Any]], repeats: int, *, is_async: bool) -> list[float]:
    """Time calling ``funcs`` one after another (awaiting each when ``is_async``)."""
    if is_async:
        return time_inline_async(funcs, repeats)
    return time_inline_sync(funcs, repeats)


def sleeping_sync(seconds: float) -> Callable[[], None]:
    def check() -> None:
        time.sleep(seconds)

    return check


def sleeping_async(seconds: float) -> Callable[[], Awaitable[None]]:
    async def check() -> None:
        await anyio.sleep(seconds)

    return check


def trivial_sync() -> None:
    return None


async def trivial_async() -> None:
    return None


def bench_sleepers(engine: Engine, n: int, delay: float, *, is_async: bool, quick: bool) -> Row:
    funcs: list[Callable[[], object]] = [
        sleeping_async(delay) if is_async else sleeping_sync(delay) for _ in range(n)
    ]
    checks = [Check(f"c{i}", func) for i, func in enumerate(funcs)]
    engine_times = time_engine(engine, checks, repeats=5 if quick else 20, warmup=1)
    inline = time_inline(funcs, repeats=1, is_async=is_async)
    kind = "async" if is_async else "sync"
    return Row(f"{n} {kind} x {delay * 1000:.0f} ms", engine_times, inline)


def bench_trivial(engine: Engine, n: int, *, is_async: bool, quick: bool) -> Row:
    func: Callable[[], object] = trivial_async if is_async else trivial_sync
    checks = [Check(f"c{i}", func) for i in range(n)]
    repeats = 100 if quick else 500
    engine_times = time_engine(engine, checks, repeats=repeats, warmup=50)
    funcs = [func] * n
    inline = time_inline(funcs, repeats=repeats, is_async=is_async)
    return Row(f"{n} trivial {'async' if is_async else 'sync'}", engine_times, inline)


def bench_hung(engine: Engine, release: threading.Event, quick: bool) -> tuple[Row, Row]:
    def hung() -> None:
        release.wait()  # released when the benchmark ends, so the process exits cleanly

    first_runs = []
    for i in range(3 if quick else 5):
        # A fresh check each time: before its restart delay a stuck check is not started again.
        check = Check(f"hung{i}", hung, timeout=0.5)
        first_runs.extend(time_engine(engine, [check], repeats=1, warmup=0))
    stuck = Check("hung", hung, timeout=0.5)
    engine.run_sync([stuck])
    already_stuck = time_engine(engine, [stuck], repeats=20, warmup=0)
    return (
        Row("1 hung sync, 0.5 s timeout", first_runs, None),
        Row("  same check, already stuck", already_stuck, None),
    )


def bench_blocked_loop(engine: Engine, quick: bool) -> Row:
    async def blocks_the_loop() -> None:
        time.sleep(3)

    checks = [
        Check("blocks_the_loop", blocks_the_loop, timeout=0.5),
        Check("innocent_async", trivial_async, timeout=0.5),
        Check("innocent_sync", trivial_sync, timeout=0.5),
    ]
    times = []
    for _ in range(2 if quick else 4):
        # Heartbeats during the 3 s the loop is blocked, and the first one after it.
        deadline = time.monotonic() + 3.2
        while time.monotonic() < deadline:
            times.extend(time_engine(engine, checks, repeats=1, warmup=0))
        time.sleep(0.1)
    return Row("blocked loop, 0.5 s timeout", times, None)


def ratio(inline: float, engine: float) -> str:
    if inline >= engine:
        return f"{inline / engine:.1f}x faster"
    return f"{engine / inline:.0f}x slower"


def print_table(rows: Sequence[Row]) -> None:
    header = (
        f"{'case':<30} {'engine median ms':>17} {'engine max ms':>14} "
        f"{'inline ms':>11} {'engine vs inline':>17}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        inline = row.inline_median
        if inline is None:
            inline_text, ratio_text = "∞ (hangs)", "∞ faster"
        else:
            inline_text, ratio_text = ms(inline), ratio(inline, row.engine_median)
        print(
            f"{row.case:<30} {ms(row.engine_median):>17} {ms(max(row.engine)):>14} "
            f"{inline_text:>11} {ratio_text:>17}"
        )


def verdict(value_ms: float, target_ms: float) -> str:
    return "ok" if value_ms <= target_ms else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()

    # Timeout warnings would go to the last-resort handler on stderr; records are still made.
    logging.getLogger("dockerflow").addHandler(logging.NullHandler())
    release = threading.Event()
    engine = Engine(timeout=5)
    try:
        hop = time_engine(engine, [], repeats=500, warmup=50)
        rows = [
            bench_sleepers(engine, 50, 0.1, is_async=False, quick=args.quick),
            bench_sleepers(engine, 50, 0.1, is_async=True, quick=args.quick),
            *bench_hung(engine, release, args.quick),
            bench_trivial(engine, 10, is_async=False, quick=args.quick),
            bench_trivial(engine, 100, is_async=False, quick=args.quick),
            bench_trivial(engine, 10, is_async=True, quick=args.quick),
            bench_trivial(engine, 100, is_async=True, quick=args.quick),
            bench_blocked_loop(engine, args.quick),
        ]
    finally:
        release.set()
        engine.close()

    print_table(rows)
    by_case = {row.case: row for row in rows}
    sync_50 = by_case["50 sync x 100 ms"].engine_median * 1000
    hung = by_case["1 hung sync, 0.5 s timeout"].engine_median * 1000
    trivial = by_case["10 trivial sync"]
    assert trivial.inline_median is not None
    overhead = (trivial.engine_median - trivial.inline_median) * 1000
    async_trivial = by_case["10 trivial async"].engine_median
    hop_ms = statistics.median(hop) * 1000
    print()
    print(f"engine overhead per heartbeat, 10 trivial sync checks: {overhead:.3f} ms")
    print(f"  run_sync with no checks (cache lookup, aggregate): {hop_ms:.3f} ms")
    print(
        "  10 trivial async checks instead (a task each on the loop thread, its cancel scope, "
        f"step tracking): {async_trivial * 1000:.3f} ms"
    )
    blocked = by_case["blocked loop, 0.5 s timeout"]
    blocked_max = max(blocked.engine) * 1000
    print(
        f"  blocked loop: {len(blocked.engine)} heartbeats, median "
        f"{blocked.engine_median * 1000:.1f} ms, max {blocked_max:.1f} ms"
    )
    print()
    print(f"target 50 sync x 100 ms <= {TARGET_SYNC_50X100_MS:g} ms: {sync_50:.1f} ms", end=" ")
    print(verdict(sync_50, TARGET_SYNC_50X100_MS))
    print(f"target hung, 0.5 s timeout <= {TARGET_HUNG_MS:g} ms: {hung:.1f} ms", end=" ")
    print(verdict(hung, TARGET_HUNG_MS))
    print(
        f"target overhead, 10 trivial sync <= {TARGET_OVERHEAD_MS:g} ms: {overhead:.3f} ms", end=" "
    )
    print(verdict(overhead, TARGET_OVERHEAD_MS))
    print(
        f"target blocked loop, every heartbeat <= {TARGET_BLOCKED_LOOP_MS:g} ms: "
        f"{blocked_max:.1f} ms",
        end=" ",
    )
    print(verdict(blocked_max, TARGET_BLOCKED_LOOP_MS))


if __name__ == "__main__":
    main()
