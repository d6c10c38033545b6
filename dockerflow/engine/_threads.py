"""Worker threads for sync checks: one call object per run, and a pool of daemon threads."""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ._check import Check

# A worker thread that found no work for this long exits.
_IDLE_EXIT = 10.0


class ThreadCall:
    """One run of a sync check in a worker thread.

    It stays in ``busy`` (keyed by its check) from creation until the function returns, so no
    second thread starts the same check meanwhile; heartbeats that overlap it share its result.
    """

    __slots__ = (
        "_busy",
        "_context",
        "_lock",
        "_state",
        "check",
        "done",
        "error",
        "finished",
        "resolve",
        "started",
        "value",
    )

    def __init__(self, check: Check, busy: dict[Check, ThreadCall]) -> None:
        self.check = check
        self._busy = busy
        # The creating caller's context variables (Flask's app context among them) go with the
        # check into its worker thread, as they would if the check ran in the caller's thread.
        self._context = contextvars.copy_context()
        self._lock = threading.Lock()
        self._state = "pending"  # -> "running" -> "done", or "pending" -> "abandoned"
        self.started = time.monotonic()
        self.finished = 0.0
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        #: Called in the worker thread with an awaitable the function returned (a ``def`` that
        #: returns a coroutine); gives the awaited value. ``None`` leaves the awaitable as is.
        self.resolve: Callable[[Any], Any] | None = None

    def execute(self) -> None:
        """Run the check; called in a worker thread. Never raises."""
        with self._lock:
            if self._state == "abandoned":
                return
            self._state = "running"
        try:
            value = self._context.run(self.check.func)
            if self.resolve is not None and hasattr(value, "__await__"):
                value = self.resolve(value)
            self.value = value
        except BaseException as exc:  # a check's SystemExit must not end the worker thread
            self.error = exc
        finally:
            self._finish("done")

    def abandon_if_pending(self) -> None:
        """Give up a call no thread has picked up yet, so it never starts."""
        with self._lock:
            if self._state != "pending":
                return
            # Marked inside the lock: a worker entering execute() now finds it abandoned.
            self._state = "abandoned"
        self.error = TimeoutError("the check timed out before a worker thread could start it")
        self._finish("abandoned")

    def _finish(self, state: str) -> None:
        with self._lock:
            self._state = state
        self.finished = time.monotonic()
        # Only this call's own entry: a later call of the same check may own it by now.
        if self._busy.get(self.check) is self:
            self._busy.pop(self.check, None)
        self.done.set()


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
        """Run ``func()`` in a worker thread soon; ``func`` must not raise."""
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
            else:
                self._threads += 1
                threading.Thread(target=self._work, name=self._name, daemon=True).start()
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
