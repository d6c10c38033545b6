"""The sync bridge: one long-lived event loop in a daemon thread, for sync callers."""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import contextvars
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import TaskGroup

from ._fork import after_fork_in_child

T = TypeVar("T")

logger = logging.getLogger("dockerflow.engine")


@dataclass
class _Running:
    """A started loop: its thread, the token to reach it from other threads, its task group."""

    thread: threading.Thread
    token: anyio.lowlevel.EventLoopToken
    task_group: TaskGroup


class LoopStoppingError(RuntimeError):
    """Work was handed to the loop from its own thread while :meth:`LoopThread.stop` stops it:
    the loop is not started again for it (``stop()`` would return with a new loop running)."""


class LoopThread:
    """An event loop running in its own daemon thread, started on first use.

    WSGI request threads call coroutines on it through :meth:`call` and start tasks on it with
    :meth:`submit`; because every async check of a sync caller runs on this one loop, async
    clients (asyncpg pools, ``redis.asyncio``, ``AsyncEngine``) keep their connections from one
    heartbeat to the next. After ``os.fork()`` the child forgets the parent's loop (its thread
    does not exist there) and starts its own on first use. At interpreter exit a running loop is
    stopped.

    :param backend: the anyio backend to run, ``"asyncio"`` (default) or ``"trio"``.
    """

    def __init__(self, backend: str = "asyncio") -> None:
        self.backend = backend
        # Held for a few statements that never wait: it may be a real lock in a gevent worker
        # (made before gevent's patch, as with --preload), where a greenlet waiting on it would
        # block the whole process. Callers wait for a start in progress on ``_starting``.
        self._lock = threading.Lock()
        self._running: _Running | None = None
        #: The start in progress, made by the caller that starts the loop.
        self._starting: concurrent.futures.Future[_Running] | None = None
        #: The thread of the loop that stop() is stopping, until it has ended.
        self._stopping: threading.Thread | None = None
        after_fork_in_child(self, LoopThread._forget)

    @property
    def running(self) -> bool:
        """Whether the loop thread of this process is running."""
        return self._running is not None

    @property
    def thread(self) -> threading.Thread | None:
        """The loop thread of this process, or ``None`` before first use."""
        running = self._running
        return running.thread if running is not None else None

    def _get(self) -> _Running:
        running = self._running
        if running is not None:
            return running
        if self._stopping is threading.current_thread():
            # A task of the loop being stopped (a background refresh between two runs) hands
            # it more work: it ends with that loop instead of starting a new one.
            raise LoopStoppingError("the dockerflow event loop is stopping")
        with self._lock:
            running, starting = self._running, self._starting
            starter = running is None and starting is None
            if starter:
                # Made now, from the threading of this moment (gevent's, once patched).
                starting = self._starting = concurrent.futures.Future()
        if running is not None:
            return running
        assert starting is not None
        if not starter:
            return starting.result()
        try:
            running = self._start()
        except BaseException as exc:
            with self._lock:
                self._starting = None
            starting.set_exception(exc)
            raise
        with self._lock:
            self._running, self._starting = running, None
        starting.set_result(running)
        return running

    def call(
        self, func: Callable[..., Awaitable[T]], *args: Any, timeout: float | None = None
    ) -> T:
        """Run ``await func(*args)`` on the loop and return its result; blocks the caller.

        :param timeout: seconds to wait at most; ``None`` waits as long as it takes. The
            coroutine is cancelled when the time is up, and the wait ends then even if the loop
            is blocked and the cancellation cannot be delivered.
        :raises RuntimeError: if called from the loop thread itself.
        :raises TimeoutError: if ``timeout`` passed first.
        """
        running = self._get()
        if running.thread is threading.current_thread():
            raise RuntimeError("LoopThread.call() cannot be used from the loop's own thread")
        if timeout is None:
            return anyio.from_thread.run(func, *args, token=running.token)  # type: ignore[arg-type]
        outcome: concurrent.futures.Future[T] = concurrent.futures.Future()

        async def bounded() -> None:
            with anyio.move_on_after(timeout):
                try:
                    outcome.set_result(await func(*args))
                except Exception as exc:
                    outcome.set_exception(exc)

        self.submit(bounded)
        try:
            return outcome.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"{func!r} did not finish within {timeout:g}s") from None

    def submit(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start ``func(*args)`` as a task on the loop, without waiting for the loop.

        Callable from any thread, the loop thread included; it returns at once even while the
        loop is blocked (the task starts when the loop runs again). The task runs until it
        returns or the loop stops; an exception it raises is logged, never propagated.
        """
        running = self._get()
        # From an empty context: the task copies the context it is started from, and the
        # caller's (a Flask request's, say) must not travel to the loop thread.
        contextvars.Context().run(
            call_soon, running.token, running.task_group.start_soon, _logged, func, *args
        )

    def call_soon(self, func: Callable[..., object], *args: Any) -> None:
        """Call ``func(*args)`` on the loop's thread soon (a plain callback, not a task),
        without waiting for the loop; callable from any thread, like :meth:`submit`.
        ``func`` runs in an empty context and must not raise."""
        running = self._get()
        contextvars.Context().run(call_soon, running.token, func, *args)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop, cancelling what still runs on it, and wait for its thread to end.

        Waits at most ``timeout`` seconds: a loop blocked by a check that never yields is left
        behind (its thread is a daemon) rather than holding up the caller or interpreter exit.
        Starts no thread, so it is safe in an ``atexit`` hook.
        """
        with self._lock:
            running, self._running = self._running, None
            starting = self._starting
        if running is None and starting is not None:
            # A start in progress: wait for it (bounded), then stop what it started.
            with contextlib.suppress(Exception):
                starting.result(timeout)
            with self._lock:
                running, self._running = self._running, None
        if running is None:
            return
        atexit.unregister(self._stop_at_exit)
        with self._lock:
            self._stopping = running.thread
        try:
            call_soon(running.token, running.task_group.cancel_scope.cancel)
        except anyio.RunFinishedError:
            return  # the loop already ended
        if running.thread is not threading.current_thread():
            running.thread.join(timeout)
            with self._lock:
                # Left set if the thread outlived the wait (a check blocks the loop): its
                # tasks still must not start a new loop.
                if self._stopping is running.thread and not running.thread.is_alive():
                    self._stopping = None

    def _stop_at_exit(self) -> None:
        self.stop(timeout=1.0)

    def _start(self) -> _Running:
        ready = threading.Event()
        started: list[_Running] = []
        failure: list[BaseException] = []

        async def serve() -> None:
            async with anyio.create_task_group() as task_group:
                token = anyio.lowlevel.current_token()
                started.append(_Running(threading.current_thread(), token, task_group))
                ready.set()
                await anyio.sleep_forever()

        def main() -> None:
            try:
                anyio.run(serve, backend=self.backend)
            except BaseException as exc:
                if started:  # the loop ran, then died
                    logger.error("the dockerflow event loop stopped", exc_info=exc)
                failure.append(exc)
            finally:
                # A loop that ended on its own must not leave a dead token behind: the next
                # call starts a new loop.
                if started and self._running is started[0]:
                    self._running = None
                ready.set()

        # A daemon thread: a check stuck in a worker thread must never keep the process from
        # exiting, nor may a loop blocked by an async check that never yields.
        thread = threading.Thread(target=main, name="dockerflow-loop", daemon=True)
        thread.start()
        ready.wait()
        if not started or failure:
            cause = failure[0] if failure else None
            raise RuntimeError("the dockerflow event loop failed to start") from cause
        # Registered while the loop runs only, so short-lived bridges leave no hook behind.
        atexit.register(self._stop_at_exit)
        return started[0]

    def _forget(self) -> None:
        # In a forked child: the parent's loop thread was not copied, so drop it. The lock may
        # have been held by another parent thread at fork time, so it is replaced too.
        self._lock = threading.Lock()
        if self._running is not None:
            atexit.unregister(self._stop_at_exit)
        self._running = None
        self._starting = None
        self._stopping = None


def call_soon(
    token: anyio.lowlevel.EventLoopToken, func: Callable[..., object], *args: Any
) -> None:
    """Schedule ``func(*args)`` on the loop of ``token`` without waiting; callable from any
    thread, the loop's own included, and returns at once even while the loop is blocked.

    :raises RuntimeError: if that loop has closed.
    """
    token.backend_class.run_sync_soon(func, args, token.native_token)


async def _logged(func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
    # A background task's error must not reach the task group: it would end the loop that every
    # heartbeat of the process relies on.
    try:
        await func(*args)
    except Exception:
        logger.exception("a dockerflow background task failed")
