"""The sync bridge: one long-lived event loop in a daemon thread, for sync callers."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.from_thread import BlockingPortal

T = TypeVar("T")

logger = logging.getLogger("dockerflow.engine")


class LoopThread:
    """An event loop running in its own daemon thread, started on first use.

    WSGI request threads call coroutines on it through :meth:`call`; because every check runs on
    this one loop, async clients (asyncpg pools, ``redis.asyncio``, ``AsyncEngine``) keep their
    connections from one heartbeat to the next. After ``os.fork()`` the child forgets the parent's
    loop (its thread does not exist there) and starts its own on first use. At interpreter exit a
    running loop is stopped.

    :param backend: the anyio backend to run, ``"asyncio"`` (default) or ``"trio"``.
    """

    def __init__(self, backend: str = "asyncio") -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._portal: BlockingPortal | None = None
        self._thread: threading.Thread | None = None
        self._task_group: TaskGroup | None = None
        self._pid = os.getpid()

    @property
    def running(self) -> bool:
        """Whether the loop thread of this process is running."""
        return self._portal is not None

    @property
    def thread(self) -> threading.Thread | None:
        """The loop thread of this process, or ``None`` before first use."""
        return self._thread

    def portal(self) -> BlockingPortal:
        """Return the portal into the loop, starting the loop thread if needed."""
        if self._pid != os.getpid():
            self._forget()
        portal = self._portal
        if portal is not None:
            return portal
        with self._lock:
            if self._portal is None:
                self._start()
            assert self._portal is not None
            return self._portal

    def call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await func(*args)`` on the loop and return its result; blocks the caller.

        :raises RuntimeError: if called from the loop thread itself.
        """
        return self.portal().call(func, *args)

    def spawn(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start ``func(*args)`` as a background task on the loop; it runs until it returns or
        the loop stops. Callable from any thread, the loop thread included."""
        portal = self.portal()
        thread = self._thread
        if thread is not None and thread.ident == threading.get_ident():
            assert self._task_group is not None
            self._task_group.start_soon(_logged, func, *args)
        else:
            portal.start_task_soon(_logged, func, *args)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop, cancelling what still runs on it, and wait for its thread to end.

        Waits at most ``timeout`` seconds: a loop blocked by a check that never yields is left
        behind (its thread is a daemon) rather than holding up the caller or interpreter exit.
        """
        if self._pid != os.getpid():
            self._forget()
        with self._lock:
            portal, thread = self._portal, self._thread
            self._portal = self._thread = self._task_group = None
        if portal is None or thread is None:
            return
        atexit.unregister(self._stop_at_exit)
        deadline = time.monotonic() + timeout

        def ask_to_stop() -> None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                portal.call(portal.stop, True)

        # From a helper thread: portal.call waits for the loop, which may be blocked.
        stopper = threading.Thread(target=ask_to_stop, name="dockerflow-loop-stop", daemon=True)
        stopper.start()
        stopper.join(timeout)
        thread.join(max(0.0, deadline - time.monotonic()))

    def _stop_at_exit(self) -> None:
        self.stop(timeout=1.0)

    def _start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            async with anyio.create_task_group() as task_group, BlockingPortal() as portal:
                self._task_group = task_group
                self._portal = portal
                ready.set()
                await portal.sleep_until_stopped()
                task_group.cancel_scope.cancel()

        def main() -> None:
            try:
                anyio.run(serve, backend=self.backend)
            except BaseException as exc:
                if ready.is_set():  # the loop ran, then died
                    logger.error("the dockerflow event loop stopped", exc_info=exc)
                failure.append(exc)  # reported to the thread that asked for the loop
            finally:
                # A loop that ended on its own must not leave a dead portal behind: the next
                # call starts a new loop. (No lock: _start holds it while waiting for ready.)
                if self._thread is threading.current_thread():
                    self._portal = self._task_group = None
                    self._thread = None
                ready.set()

        # A daemon thread: a check stuck in a worker thread (those inherit daemon status from
        # this thread) must never keep the process from exiting.
        thread = threading.Thread(target=main, name="dockerflow-loop", daemon=True)
        self._thread = thread
        thread.start()
        ready.wait()
        if failure or self._portal is None:
            self._thread = self._portal = self._task_group = None
            cause = failure[0] if failure else None
            raise RuntimeError("the dockerflow event loop failed to start") from cause
        # Registered while the loop runs only, so short-lived bridges leave no hook behind.
        atexit.register(self._stop_at_exit)

    def _forget(self) -> None:
        # In a forked child: the parent's loop thread was not copied, so drop it. The lock may
        # have been held by another parent thread at fork time, so it is replaced too.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._portal = None
        self._thread = None
        self._task_group = None


async def _logged(func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
    # A background task's error must not reach the task group: it would end the loop that every
    # heartbeat of the process relies on.
    try:
        await func(*args)
    except Exception:
        logger.exception("a dockerflow background task failed")
