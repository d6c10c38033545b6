"""What the built-in checks share: importing a driver, the driver's time bound, error messages."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Generic, TypeVar

import anyio

from .._errors import MissingDependencyError
from ..engine import DEFAULT_TIMEOUT, after_fork_in_child, validate_timeout
from ..health import CheckMessage, Error
from ..masking import mask_secrets, short_error

logger = logging.getLogger("dockerflow.integrations")


def driver_timeout(check_timeout: float) -> float:
    """Return the seconds a driver may take within a check of ``check_timeout`` seconds.

    A little under the check's timeout (a fifth of it, at most half a second less), so that a
    server that does not answer is reported with the driver's own error and a specific message ID
    before the engine gives up on the check and reports its generic timeout (``E011``).

    :param check_timeout: the check's timeout in seconds.
    :returns: the driver's bound in seconds: 2.5 for 3, 0.8 for 1.
    """
    return max(check_timeout * 0.8, check_timeout - 0.5)


#: The driver's bound within a check of the default timeout (:data:`DEFAULT_TIMEOUT`).
DRIVER_TIMEOUT = driver_timeout(DEFAULT_TIMEOUT)


class Bounded:
    """Something that holds a built-in check's connections and bounds its driver calls.

    :param timeout: the check's timeout in seconds (default: the engine's default, 3 s); the
        driver calls are bounded by :attr:`driver_timeout`, a little under it.
    :raises CheckRegistrationError: if ``timeout`` is not a positive number of seconds.
    """

    def __init__(self, timeout: float | None = None) -> None:
        self._timeout = DEFAULT_TIMEOUT
        self._explicit = timeout is not None
        self._followed = False
        if timeout is not None:
            self.timeout = timeout

    @property
    def timeout(self) -> float:
        """The check's timeout, in seconds; set it to the timeout the check runs under."""
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._timeout = validate_timeout(seconds)

    @property
    def driver_timeout(self) -> float:
        """Seconds the driver may take to connect and answer: :func:`driver_timeout`."""
        return driver_timeout(self._timeout)

    def follow(self, seconds: float) -> None:
        """Take ``seconds`` as the check's timeout unless one was given when this was made.

        The Flask extension calls it with ``DOCKERFLOW_CHECK_TIMEOUT`` (the smallest one, for an
        extension serving several applications).
        """
        if self._explicit:
            return
        seconds = validate_timeout(seconds)
        self._timeout = min(seconds, self._timeout) if self._followed else seconds
        self._followed = True


def bounded_parts(func: object) -> list[Bounded]:
    """Return the :class:`Bounded` objects a built-in check is made of.

    A built-in check is a check object, or a partial whose arguments hold one.

    :param func: a check function.
    """
    parts = [func, *func.args] if isinstance(func, functools.partial) else [func]
    return [part for part in parts if isinstance(part, Bounded)]


@contextlib.contextmanager
def requires(package: str, extra: str) -> Iterator[None]:
    """Turn an :class:`ImportError` raised in the block into :class:`MissingDependencyError`.

    Wrap the lazy ``import`` of a driver in it::

        with requires("redis", extra="redis"):
            import redis

    :param package: the import name of the driver, shown in the message unless the module that
        was missing is another one (``ModuleNotFoundError.name``: a dependency of the driver).
    :param extra: the ``dockerflow-async`` extra that installs it.
    :raises MissingDependencyError: if the block raises :class:`ImportError`.
    """
    try:
        yield
    except ImportError as exc:
        raise MissingDependencyError.from_import_error(exc, package, extra) from exc


def failure(
    prefix: str, exc: BaseException, msg_id: str, cls: type[CheckMessage] = Error
) -> CheckMessage:
    """Return a check message with the first line of a driver's error.

    The message is not logged here: the engine logs every check message once, masked. The
    driver's full error is logged at DEBUG on ``dockerflow.integrations``, masked too (a driver
    may echo a DSN); the traceback is left out, since its last line would repeat the unmasked
    error text.

    :param prefix: what went wrong, such as ``"Could not connect to redis"``.
    :param exc: the driver's exception.
    :param msg_id: the message ID, from :mod:`dockerflow.health`.
    :param cls: the message class, :class:`~dockerflow.checks.Error` unless told.
    :returns: a message ``"<prefix>: <Type>: <first line>"``.
    """
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s (%s): %s", prefix, msg_id, mask_secrets(f"{type(exc).__name__}: {exc}"))
    return cls(f"{prefix}: {short_error(exc)}", id=msg_id)


def is_driver_failure(exc: BaseException) -> bool:
    """Whether ``exc``, raised out of a driver call, is the check's failure rather than
    something that must go on.

    An ``Exception`` is a failure. Of the other ``BaseException`` classes, ``KeyboardInterrupt``,
    ``SystemExit`` and ``GeneratorExit`` go on, as does a cancellation of the running task (the
    engine's timeout, the check's own bound, the loop shutting down). A ``CancelledError``
    that a driver raised of itself, while nothing cancels the task, is a failure: letting it
    escape would make the check look cancelled.

    :param exc: what a driver call raised.
    :returns: ``True`` to report it as the check's failure, ``False`` to raise it again.
    """
    if isinstance(exc, Exception):
        return True
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        return False
    if isinstance(exc, asyncio.CancelledError):
        return not _being_cancelled()
    try:
        cancelled = anyio.get_cancelled_exc_class()
    except Exception:  # no event loop in this thread: nothing cancels a sync check
        return True
    return not isinstance(exc, cancelled)


def _being_cancelled() -> bool:
    """Whether the running task is being cancelled (``False`` outside of a task)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop in this thread
        return False
    if task is None:
        return False
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+
    if cancelling is not None and cancelling() > 0:
        return True
    try:
        # A cancelled anyio scope around the task (Python 3.10 has no cancelling()):
        # -inf when cancelled, else its deadline, which has passed if it is a timeout.
        return anyio.current_effective_deadline() <= anyio.current_time()
    except Exception:
        return False


T = TypeVar("T")


class PerLoop(Generic[T]):
    """One value per asyncio event loop (a pool, a client, an engine), closed when its loop ends.

    Connections of async drivers belong to the loop that opened them, so a built-in async check
    keeps its pool per loop. Each is closed on its own loop when that loop shuts down:
    ``asyncio.run()`` and anyio close a loop's async generators before they close the loop, and
    one of ours, parked on each loop that has a value, closes the value then. Five
    ``asyncio.run()`` calls therefore leave no pool and no server connection behind. A loop
    closed without that shutdown (``run_until_complete()`` then ``close()``) cannot close its
    values any more: they are let go the next time any loop asks for its value, after
    ``abandon(value)`` (which should at least end the server's side of its connections); their
    sockets are closed when they are collected. A value of another loop (a forked child's
    parent's) is never touched.

    :param close: ``await close(value)`` releases a value; run on the value's own loop.
    :param abandon: ``abandon(value)`` releases what it can of a value whose loop was closed,
        without that loop; its errors are ignored.
    """

    def __init__(
        self,
        close: Callable[[T], Awaitable[object]],
        abandon: Callable[[T], object] | None = None,
    ) -> None:
        self._close = close
        self._abandon = abandon
        self._values: dict[asyncio.AbstractEventLoop, T] = {}
        self._watchers: dict[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = {}
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._starting: asyncio.Task[None] | None = None  # kept so it is not collected early

    def current(self) -> T | None:
        """Return the running loop's value, or ``None`` when it has none yet."""
        return self._values.get(asyncio.get_running_loop())

    async def get(self, make: Callable[[], Awaitable[T]]) -> T:
        """Return the running loop's value, made with ``await make()`` on first use."""
        loop = asyncio.get_running_loop()
        value = self._values.get(loop)
        if value is not None:
            return value
        self._forget_closed_loops()
        # Heartbeats that arrive together on a new loop must make one value, not one each.
        async with self._locks.setdefault(loop, asyncio.Lock()):
            value = self._values.get(loop)
            if value is None:
                value = await make()
                watcher = self._watch(loop)
                # Its first step registers it with the loop (the loop's async generator hooks).
                await watcher.asend(None)
                self._values[loop], self._watchers[loop] = value, watcher
        return value

    def setdefault(self, make: Callable[[], T]) -> T:
        """Return the running loop's value, made with ``make()`` on first use (from sync code
        running on the loop; the value is watched from the loop's next turn on)."""
        loop = asyncio.get_running_loop()
        value = self._values.get(loop)
        if value is None:
            self._forget_closed_loops()
            value = self._values[loop] = make()
            watcher = self._watchers[loop] = self._watch(loop)
            # Its first step, which registers it with the loop, must be awaited: in a task.
            self._starting = loop.create_task(_first_step(watcher))
        return value

    def _forget_closed_loops(self) -> None:
        # Values of loops closed without shutting their async generators down: nothing will
        # ever close them on their loop, and holding them would hold the loop and its sockets.
        for loop in [loop for loop in (*self._values, *self._locks) if loop.is_closed()]:
            value = self._values.pop(loop, None)
            self._watchers.pop(loop, None)
            self._locks.pop(loop, None)
            if value is not None and self._abandon is not None:
                with contextlib.suppress(Exception):
                    self._abandon(value)

    async def discard(self) -> None:
        """Close the running loop's value and forget it; a later :meth:`get` makes a new one."""
        loop = asyncio.get_running_loop()
        watcher = self._watchers.pop(loop, None)
        self._locks.pop(loop, None)
        value = self._values.pop(loop, None)
        if watcher is not None:
            await watcher.aclose()
        if value is not None:
            await self._close(value)

    async def _watch(self, loop: asyncio.AbstractEventLoop) -> AsyncGenerator[None, None]:
        try:
            yield  # parked here until the loop shuts its async generators down
        finally:
            # At loop shutdown the generator is closed on its loop, which still runs.
            if self._watchers.get(loop) is not None:
                self._watchers.pop(loop, None)
                self._locks.pop(loop, None)
                value = self._values.pop(loop, None)
                if value is not None:
                    with contextlib.suppress(Exception):
                        await self._close(value)


async def _first_step(watcher: AsyncGenerator[None, None]) -> None:
    # discard() may have closed the watcher before this task's first turn: nothing to watch.
    with contextlib.suppress(StopAsyncIteration):
        await watcher.asend(None)


class Watchdog:
    """Calls functions at their deadlines from one daemon thread, started on first use.

    A blocking driver call cannot be cancelled, but it can be woken up from another thread (its
    socket shut down). Arming a deadline costs a heap push, not a thread: a ``threading.Timer``
    per check run would start a thread on every heartbeat. Deadlines almost always end
    cancelled: a cancelled deadline is forgotten at once, and its heap entry is dropped when it
    comes up, or sooner when cancelled entries outnumber the live ones, so that what the
    watchdog holds stays proportional to the deadlines still armed, however long they are.
    Cancelling a deadline that fired already, or twice, is harmless. Fork-safe: a forked child
    starts over with no deadline and no thread.
    """

    #: Cancelled entries the heap may hold beyond the live ones before it is rebuilt.
    _SLACK = 64

    def __init__(self) -> None:
        self._reset()
        after_fork_in_child(self, Watchdog._reset)

    def _reset(self) -> None:
        # Held for a few statements that never wait: made here, at the fork, it is a real lock
        # even in a gevent worker, which patches the standard library after the fork.
        self._lock = threading.Lock()
        # Made on first use in the process, from the threading of that moment: a real one,
        # waited on by a greenlet, would block the whole gevent worker.
        self._condition: threading.Condition | None = None
        # (deadline, number): the entry of a number no longer in _armed was cancelled.
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, Callable[[], object]] = {}
        self._numbers = itertools.count()
        self._thread: threading.Thread | None = None

    def call_after(self, seconds: float, func: Callable[[], object]) -> int:
        """Call ``func()`` in the watchdog's thread in ``seconds``, unless cancelled first.

        :returns: a number to give :meth:`cancel`.
        """
        with self._lock:
            if self._condition is None:
                self._condition = threading.Condition()
            condition = self._condition
        with condition:
            number = next(self._numbers)
            self._armed[number] = func
            heapq.heappush(self._heap, (time.monotonic() + seconds, number))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, args=(condition,), name="dockerflow-watchdog", daemon=True
                )
                self._thread.start()
            elif self._heap[0][1] == number:
                condition.notify()  # earlier than what the thread waits for
        return number

    def cancel(self, number: int) -> None:
        """Do not call the function armed as ``number`` (if it has not been called yet)."""
        condition = self._condition
        if condition is None:
            return  # nothing was armed in this process
        with condition:
            if self._armed.pop(number, None) is None:
                return  # fired already, cancelled already, or never armed
            if len(self._heap) > 2 * len(self._armed) + self._SLACK:
                self._heap = [entry for entry in self._heap if entry[1] in self._armed]
                heapq.heapify(self._heap)

    def _run(self, condition: threading.Condition) -> None:
        while True:
            with condition:
                while True:
                    while self._heap and self._heap[0][1] not in self._armed:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        condition.wait()
                        continue
                    when, number = self._heap[0]
                    now = time.monotonic()
                    if when <= now:
                        heapq.heappop(self._heap)
                        func = self._armed.pop(number)
                        break
                    condition.wait(when - now)
            try:
                func()
            except Exception:
                logger.exception("a dockerflow watchdog callback failed")
