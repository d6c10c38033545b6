"""gunicorn hooks for the fork tests: the arbiter tells which threads it has as it forks."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any


def pre_fork(server: Any, worker: Any) -> None:
    """Print the arbiter's thread names just before each fork (on the arbiter's stderr)."""
    names = sorted(thread.name for thread in threading.enumerate())
    print(f"ARBITER_THREADS pid={os.getpid()} names={','.join(names)}", file=sys.stderr, flush=True)
