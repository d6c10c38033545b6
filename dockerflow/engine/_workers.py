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

    Under gevent the threads are greenlets, as the application's own requests are: the queue is
    made on first use, from the :mod:`queue` and :mod:`threading` of that moment. gevent's
    gunicorn worker patches the standard library after the fork, after the application (and
    this pool, or its at-fork reset) was made with ``--preload``: a greenlet waiting on a queue
    made before the patch blocks the whole process.
    """

    def __init__(self, name: str = "dockerflow-worker") -> None:
        self._name = name
        self._queue: queue.SimpleQueue[Callable[[], None]] | None = None
        # Held for a few statements that never wait: it may be a real lock in a gevent worker
        # (made before the patch), where a greenlet waiting on it would block the process.
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0

    def submit(self, func: Callable[[], None]) -> None:
        """Run ``func()`` in a worker thread soon; ``func`` must not raise.

        :raises RuntimeError: if a new thread was needed and could not be started (``can't
            start new thread``); ``func`` is then not run, and the pool is as it was.
        """
        with self._lock:
            if self._queue is None:
                self._queue = queue.SimpleQueue()
            work = self._queue
            new_thread = self._idle == 0
            if new_thread:
                self._threads += 1
            else:
                self._idle -= 1
        if new_thread:
            # Started outside the lock: under gevent, start() waits for the new greenlet.
            try:
                threading.Thread(
                    target=self._work, args=(work,), name=self._name, daemon=True
                ).start()
            except BaseException:
                with self._lock:
                    self._threads -= 1
                raise
        work.put(func)

    @property
    def size(self) -> int:
        """Number of live worker threads."""
        return self._threads

    def _work(self, work: queue.SimpleQueue[Callable[[], None]]) -> None:
        while True:
            try:
                func = work.get(timeout=_IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    # Leave only if no submit counted on this thread being idle meanwhile.
                    if self._idle > 0 and work.empty():
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue
            func()
            with self._lock:
                self._idle += 1
