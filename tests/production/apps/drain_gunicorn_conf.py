"""gunicorn hooks for the drain tests.

Each worker writes ``WORKER_READY`` on stderr once it has loaded the app and set up its signals,
so that the test sends SIGTERM only when every worker can drain (a worker still loading the app
when SIGTERM comes stops at once). With ``DRAIN_TEST_HOOK=1`` the hook also makes SIGTERM drain,
as a service served with ``--preload`` must (see the probes guide, "Draining on shutdown"): the
app is then built in the arbiter, before the worker installs its SIGTERM handler.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def post_worker_init(worker: Any) -> None:
    """Runs in the worker's main thread, after its signals are set up and the app is loaded."""
    if os.environ.get("DRAIN_TEST_HOOK") == "1":
        worker.wsgi.extensions["dockerflow"].drain_on_sigterm()
    print(f"WORKER_READY pid={os.getpid()}", file=sys.stderr, flush=True)
