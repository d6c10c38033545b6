"""A cProfile over every thread of the process, for the benchmarks' ``--profile`` options.

Each thread's profiler counts that thread's CPU time (``time.thread_time``): the wall time a
thread spends waiting for the GIL or for a lock is not charged to the function it waits in.

Not a benchmark: imported by ``engine_cpu_bench.py`` and ``heartbeat_view_bench.py``.
"""

from __future__ import annotations

import cProfile
import pstats
import threading
import time
from collections.abc import Callable


def print_profile(
    title: str, warm_up: Callable[[], object], work: Callable[[], object], top: int
) -> None:
    """Run ``warm_up()``, then print the ``top`` entries by own time of a cProfile of
    ``work()``, every thread's calls merged: the caller's, the engine's worker threads' and its
    loop thread's (a profiler is installed in each thread started meanwhile, and those running
    already are cleared when ``work`` starts)."""
    profilers: list[cProfile.Profile] = []

    def start_profiler(*_: object) -> None:
        # Installed in each new thread; the first event there swaps in a profiler of its own.
        profiler = cProfile.Profile(time.thread_time)
        profilers.append(profiler)
        profiler.enable()

    threading.setprofile(start_profiler)
    try:
        warm_up()
        for profiler in profilers:
            profiler.clear()
        main_profiler = cProfile.Profile(time.thread_time)
        profilers.append(main_profiler)
        main_profiler.enable()
        work()
        main_profiler.disable()
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
    stats = pstats.Stats(profilers[0])
    for profiler in profilers[1:]:
        stats.add(profiler)
    print(f"{title}, all threads, by own time:")
    stats.sort_stats("tottime").print_stats(top)
