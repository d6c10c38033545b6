"""The engine's threads under gevent when gevent patches after the engine was made.

gevent's gunicorn worker patches the standard library after the fork, when ``--preload`` has
made the app, its engine and its checks in the arbiter, and the engine's at-fork resets ran in
the child before the patch. Greenlets then use what was made before the patch: the sync checks'
worker pool, the loop thread of async checks, background refresh and the database check's
watchdog must still serve greenlets that use them together, never blocking the process. In a
fresh interpreter: the patch cannot be undone. ``tests/production/test_gevent_gunicorn.py``
does the same under gunicorn.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("gevent")

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent(
    """
    import faulthandler, json, sys, time
    # A greenlet blocking the process on something made before the patch hangs it for good:
    # dump the stacks and exit instead.
    faulthandler.dump_traceback_later(20, exit=True)

    from dockerflow.engine import Check, Engine, LoopThread
    from dockerflow.engine._workers import WorkerPool
    from dockerflow.integrations._support import Watchdog

    made_before = (LoopThread(), WorkerPool(), Watchdog())
    # Background refresh: each check's first heartbeat starts its task on the engine's loop
    # (the same one: under gevent, asyncio allows one running loop per OS thread).
    engine = Engine(timeout=1.0, bridge=made_before[0])
    refreshed = [Check(name, lambda: [], interval=60.0) for name in "ab"]
    from gevent import monkey

    monkey.patch_all()
    import anyio
    import gevent

    bridge, pool, watchdog = made_before
    ran, answers, fired = [], [], []

    async def answer(i):
        await anyio.sleep(0.01)
        return i

    def use(i):
        # Each of these starts a thread (a greenlet) the first time, while the others wait.
        pool.submit(lambda: ran.append(i))
        answers.append(bridge.call(answer, i))
        watchdog.cancel(watchdog.call_after(60, lambda: None))
        watchdog.call_after(0.01, lambda: fired.append(i))

    greenlets = [gevent.spawn(use, i) for i in range(4)]
    greenlets += [gevent.spawn(engine.run_sync, [refreshed[i % 2]]) for i in range(4)]
    gevent.joinall(greenlets, timeout=10)
    deadline = time.monotonic() + 10
    while len(fired) < 4 and time.monotonic() < deadline:
        gevent.sleep(0.01)
    errors = [repr(g.exception) for g in greenlets if g.exception is not None]
    statuses = [g.value.status for g in greenlets[4:] if g.value is not None]
    print(json.dumps([sorted(ran), sorted(answers), sorted(fired), errors, statuses]))
    bridge.stop()
    """
)


def test_engine_threads_made_before_gevent_patches_serve_greenlets_together() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [[0, 1, 2, 3]] * 3 + [[], ["ok"] * 4], result.stderr
