"""A pool of daemon worker threads for sync checks."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

# A worker thread that found no work for this long exits.
_IDLE_EXIT = 10.0


class WorkerPool:
    """Daemon worker threads fed from one queue; grows when every thread is busy.

    Daemon threads, because a sync check stuck forever must not keep the process from exiting.
    Idle threads exit after a while, so a burst does not leave threads behind.
    """

    def __init__(self, name: str = "dockerflow-worker") -> None:
        self._name = name
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0

    def submit(self, func: Callable[[], None]) -> None:
        """Run ``func()`` in a worker thread soon; ``func`` must not raise.

        :raises RuntimeError: if a new thread was needed and could not be started (``can't
            start new thread``); ``func`` is then not run, and the pool is as it was.
        """
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
            else:
                thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                thread.start()
                self._threads += 1
        self._queue.put(func)

    @property
    def size(self) -> int:
        """Number of live worker threads."""
        return self._threads

    def _work(self) -> None:
        while True:
            try:
                func = self._queue.get(timeout=_IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    # Leave only if no submit counted on this thread being idle meanwhile.
                    if self._idle > 0 and self._queue.empty():
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue
            func()
            with self._lock:
                self._idle += 1
