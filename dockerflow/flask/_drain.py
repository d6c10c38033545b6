"""The drain: on SIGTERM, /__heartbeat__ fails while the process keeps serving, then it stops.

A server stops taking connections as soon as its SIGTERM handler runs: gunicorn's workers stop
accepting, and new connections wait in the listen backlog until the last worker exits and they
are refused. A probe then sees a timeout, never a failing heartbeat. So the handler the server
installed is wrapped by a :class:`SigtermDelay`: SIGTERM starts the drain at once (the heartbeat
fails from then on), and reaches the server's own handler only when the drain's seconds are
over. A worker's listening sockets stay open until then, so it keeps serving, new connections
included (unless the arbiter removes a Unix socket's path: see :func:`unix_socket_paths`).

The handler itself only writes a byte to a pipe, whatever the main thread was doing when the
signal came; a watcher started with the handler does the rest. The watcher is a thread, or a
greenlet where gevent has patched ``threading`` (a thread there would share gevent's locks
across native threads). A repeated SIGTERM, as a whole process group gets it from dumb-init or
``tini -g`` (the worker's own, then the arbiter's), is logged and changes nothing. The signal is
handed on by sending SIGTERM to the process again: CPython runs every handler in the main
thread, where the server's handler expects to run.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

from .._errors import DrainError
from ..engine import MAX_SECONDS, ConfigurationError, after_fork_in_child

#: What ``signal.getsignal`` returns: a Python callable, ``SIG_DFL``, ``SIG_IGN``, or ``None``
#: for a handler installed by C code (uWSGI's, for one).
Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
#: Waits until a file descriptor is readable or ``timeout`` seconds (``None``: no limit) have
#: passed; returns whether it is readable.
Wait = Callable[[int, float | None], bool]
#: Starts a function in a thread or a greenlet.
Spawn = Callable[[Callable[[], None]], object]

logger = logging.getLogger("dockerflow.flask")

#: The reason a SIGTERM drain gives, shown in the heartbeat's message.
SIGTERM_REASON = "SIGTERM"


class _NoServerHandler(DrainError):
    """SIGTERM has no handler in Python yet; a server may install one later (gunicorn
    ``--preload`` builds the app before its workers set up their signals)."""


class Drain:
    """The drain of one extension's apps: whether it started, when and why, and whether SIGTERM
    starts it in this process.

    A drain cannot be undone. Its state is read by any thread; :meth:`start` is safe to call
    from any thread or greenlet, never from a signal handler.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None
        self._reason = ""
        #: The largest ``DOCKERFLOW_DRAIN_SECONDS`` of the apps (0: SIGTERM is left alone).
        self.seconds = 0.0
        # The process where SIGTERM was found to start the drain, or said not to.
        self._checked_pid: int | None = None
        # Why SIGTERM could not be made to drain at init_app, and in which process.
        self._obstacle: tuple[int, str] | None = None
        # A lock held by another thread of the parent at fork time would block the child.
        after_fork_in_child(self, Drain._new_lock)

    def _new_lock(self) -> None:
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether the drain has started."""
        return self._since is not None

    def start(self, reason: str, *, log: bool = True) -> None:
        """Start the drain, unless it has started already.

        :param reason: why, as shown in the heartbeat's message.
        :param log: whether to log that it started (the SIGTERM watcher logs once for all).
        """
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
            self._reason = reason
        if log:
            logger.warning("Draining (%s): /__heartbeat__ answers 503 from now on", reason)

    def message(self) -> str:
        """Return the heartbeat's message while draining."""
        since = time.monotonic() - (self._since or 0.0)
        return (
            f"Draining for {since:.1f}s ({self._reason}): this process is shutting down; it "
            "finishes the requests it has, new ones should go elsewhere"
        )

    def configure(self, seconds: float) -> None:
        """Make SIGTERM start the drain if a server's handler written in Python is in place
        (init_app with ``DOCKERFLOW_DRAIN_SECONDS``); a handler installed later is found
        missing at the first heartbeat (see :meth:`check`).

        :param seconds: the app's ``DOCKERFLOW_DRAIN_SECONDS``, above 0.
        """
        self.seconds = max(self.seconds, seconds)
        self._checked_pid = None
        try:
            install(self, self.seconds, chain_default=False)
        except _NoServerHandler as exc:
            logger.debug("SIGTERM not chained to at init_app: %s", exc)
        except DrainError as exc:
            # Nothing that happens later in this process can change it: said now.
            self._obstacle = (os.getpid(), str(exc))
            self.check()
        else:
            self._checked_pid = os.getpid()

    def on_sigterm(self, seconds: float | None) -> None:
        """Make SIGTERM start the drain, and reach the handler it had ``seconds`` later
        (:meth:`Dockerflow.drain_on_sigterm <dockerflow.flask.Dockerflow.drain_on_sigterm>`).

        :param seconds: how long the drain lasts; ``None`` for :attr:`seconds`.
        :raises ConfigurationError: if ``seconds`` is not a number of seconds above 0, or is
            ``None`` while :attr:`seconds` is 0.
        :raises DrainError: if SIGTERM cannot be made to drain here.
        """
        if seconds is None:
            seconds = self.seconds
            if seconds <= 0:
                raise ConfigurationError(
                    "drain_on_sigterm() needs the drain's seconds: set DOCKERFLOW_DRAIN_SECONDS "
                    "or pass seconds="
                )
        elif (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not 0 < seconds <= MAX_SECONDS
        ):
            raise ConfigurationError(
                f"seconds must be a number from 0 (excluded) to {MAX_SECONDS:g}, got {seconds!r}"
            )
        install(self, float(seconds), chain_default=True)
        self._checked_pid = os.getpid()

    def check(self) -> None:
        """Say once per process, at WARNING, that ``DOCKERFLOW_DRAIN_SECONDS`` has no effect
        when SIGTERM does not start the drain here. Called by every heartbeat: cheap once
        checked."""
        if not self.seconds:
            return  # no drain configured: nothing to say, and no system call per heartbeat
        pid = os.getpid()
        if self._checked_pid == pid:
            return
        self._checked_pid = pid
        current = signal.getsignal(signal.SIGTERM)
        if isinstance(current, SigtermDelay) and current.starts(self):
            return
        if self._obstacle is not None and self._obstacle[0] == pid:
            reason = self._obstacle[1]
        elif callable(current):
            reason = f"SIGTERM leads to {describe(current)}, installed after the app was set up"
        else:
            reason = f"SIGTERM leads to {describe(current)}, and no server handles it"
        logger.warning(
            "DOCKERFLOW_DRAIN_SECONDS=%g has no effect in this process: %s. Call "
            "drain_on_sigterm() where the server has set up its signals (gunicorn --preload: "
            "the post_worker_init hook), or start_draining() from the server's shutdown hook; "
            "see the probes guide.",
            self.seconds,
            reason,
        )


class SigtermDelay:
    """The SIGTERM handler that starts the drain, and hands the signal on to the handler it
    replaced once ``seconds`` have passed.

    A repeated SIGTERM during the drain changes nothing. Once handed on, and in a process
    forked after it was installed (which has no watcher), SIGTERM goes straight to the
    replaced handler.

    :param previous: the handler it replaces: a callable is called, ``SIG_DFL`` is restored and
        the signal raised again (the process ends as it would have), ``SIG_IGN`` does nothing.
    :param seconds: how long the drain lasts.
    """

    def __init__(self, previous: Handler, seconds: float) -> None:
        self.previous = previous
        self.seconds = seconds
        self._pid = os.getpid()
        self._drains: list[weakref.ref[Drain]] = []
        # Set by the watcher once the drain is over; read by the handler.
        self._handing_on = False
        self._started: float | None = None
        self._wait: Wait | None = None
        self._read, self._write = os.pipe()
        # The handler must never block on a full pipe; the watcher reads without blocking too.
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def add(self, drain: Drain, seconds: float) -> None:
        """Start ``drain`` (held weakly) on SIGTERM; the drain lasts the longest of the
        ``seconds`` given."""
        if not self.starts(drain):
            self._drains.append(weakref.ref(drain))
        self.seconds = max(self.seconds, seconds)

    def starts(self, drain: Drain) -> bool:
        """Return whether SIGTERM starts ``drain`` in this process."""
        return self.ours and any(ref() is drain for ref in self._drains)

    @property
    def ours(self) -> bool:
        """Whether it was installed in this process (a forked child has no watcher)."""
        return self._pid == os.getpid()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread, between any two bytecodes of whatever it was doing: no
        # lock, no logging, no thread start here.
        if self._handing_on or not self.ours:
            self._hand_on(signum, frame)
            return
        try:
            os.write(self._write, b"T")
        except BlockingIOError:
            pass  # the pipe is full of SIGTERMs the watcher has not read yet
        except OSError:
            self._hand_on(signum, frame)

    def _hand_on(self, signum: int, frame: FrameType | None) -> None:
        previous = self.previous
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def start_watcher(self, spawn: Spawn, wait: Wait) -> None:
        """Start the watcher, with the means of the process's concurrency: a thread and
        ``poll()``, or a greenlet and gevent's wait."""
        self._wait = wait
        spawn(self._watch)
        atexit.register(self._at_exit)

    def _pending(self, timeout: float | None) -> int:
        # How many SIGTERMs came, waiting up to timeout seconds (None: until one comes).
        assert self._wait is not None  # set before the watcher starts
        if not self._wait(self._read, timeout):
            return 0
        try:
            return len(os.read(self._read, 4096))
        except BlockingIOError:
            return 0

    def _watch(self) -> None:
        count = 0
        while not count:
            count = self._pending(None)
        self._started = started = time.monotonic()
        for ref in list(self._drains):
            drain = ref()
            if drain is not None:
                drain.start(SIGTERM_REASON, log=False)
        seconds = self.seconds
        logger.warning(
            "Draining (%s) for %gs: /__heartbeat__ answers 503 from now on, requests are still "
            "served; then SIGTERM goes on to %s",
            SIGTERM_REASON,
            seconds,
            describe(self.previous),
        )
        repeated = count - 1
        while True:
            left = started + seconds - time.monotonic()
            if repeated:
                logger.info(
                    "SIGTERM again during the drain: ignored, %.1fs of it left (SIGINT or "
                    "SIGQUIT stop at once)",
                    max(0.0, left),
                )
            if left <= 0:
                break
            repeated = self._pending(left)
        self._handing_on = True
        logger.info(
            "Drain over after %.2fs: SIGTERM goes on to %s",
            time.monotonic() - started,
            describe(self.previous),
        )
        # Process-directed: the kernel hands it to a thread that does not block it, and
        # CPython runs the handler in the main thread.
        os.kill(os.getpid(), signal.SIGTERM)

    def _at_exit(self) -> None:
        started = self._started
        if started is not None and not self._handing_on and self.ours:
            logger.warning(
                "The drain ended early, after %.1fs of %gs: the process exits before SIGTERM "
                "went on to %s (SIGINT or SIGQUIT, or the server stopped by itself)",
                time.monotonic() - started,
                self.seconds,
                describe(self.previous),
            )


def describe(handler: Handler) -> str:
    """Return a short description of a signal handler for log messages."""
    if handler is None:
        return "a handler installed outside Python"
    if handler == signal.SIG_DFL:
        return "the default action (the process ends)"
    if handler == signal.SIG_IGN:
        return "nothing (SIGTERM is ignored)"
    owner = getattr(handler, "__self__", None)
    if owner is not None:
        cls = type(owner)
        return f"{cls.__module__}.{cls.__qualname__}.{getattr(handler, '__name__', '?')}"
    name = getattr(handler, "__qualname__", None) or type(handler).__qualname__
    return f"{getattr(handler, '__module__', '?')}.{name}"


def gunicorn_worker(handler: Handler) -> Any:
    """Return the gunicorn worker whose method ``handler`` is, else ``None``."""
    owner = getattr(handler, "__self__", None)
    return owner if hasattr(getattr(owner, "cfg", None), "graceful_timeout") else None


def unix_socket_paths(worker: Any) -> list[str]:
    """Return the paths of the Unix sockets a gunicorn worker listens on that its arbiter
    removes when it gets SIGTERM: those it bound from ``bind`` itself (not under systemd
    socket activation, whose sockets are not in ``bind``, nor with ``reuse_port``)."""
    if getattr(worker.cfg, "reuse_port", False):
        return []
    bound = {address for address in getattr(worker.cfg, "address", ()) if isinstance(address, str)}
    paths = []
    for listener in getattr(worker, "sockets", ()):
        with contextlib.suppress(OSError, AttributeError):
            if listener.family != socket.AF_UNIX:
                continue
            name = listener.getsockname()
            if isinstance(name, str) and name and not name.startswith("\0") and name in bound:
                paths.append(name)
    return paths


def _check_gunicorn(previous: Handler, seconds: float) -> None:
    # What gunicorn does at SIGTERM that a drain cannot undo, said once at start-up.
    worker = gunicorn_worker(previous)
    if worker is None:
        return
    graceful_timeout = getattr(worker.cfg, "graceful_timeout", None)
    if isinstance(graceful_timeout, (int, float)) and seconds >= graceful_timeout:
        logger.warning(
            "DOCKERFLOW_DRAIN_SECONDS=%g is not below gunicorn's graceful_timeout (%gs): the "
            "arbiter kills the worker before the drain is over. Set graceful_timeout to the "
            "drain plus the longest request.",
            seconds,
            graceful_timeout,
        )
    for path in unix_socket_paths(worker):
        logger.warning(
            "gunicorn listens on the Unix socket %s: its arbiter removes that path as soon as "
            "it gets SIGTERM, so no new connection reaches the workers while they drain (a "
            "proxy in front answers 502). Bind a TCP address (--bind 127.0.0.1:8000) for the "
            "proxy, or hand gunicorn the socket by systemd socket activation, which it leaves "
            "in place.",
            path,
        )


def _module_patched(package: str, test: str, module: str) -> bool:
    # Whether gevent or eventlet, if imported, has monkey-patched ``module``.
    patcher = sys.modules.get(package)
    return patcher is not None and bool(getattr(patcher, test)(module))


def _concurrency(previous: Handler) -> tuple[Spawn, Wait]:
    """Return how to start the watcher and how it waits, for this process's concurrency."""
    if _module_patched("gevent.monkey", "is_module_patched", "threading"):
        gevent = importlib.import_module("gevent")
        gevent_select = importlib.import_module("gevent.select")

        def wait_greenlet(fd: int, timeout: float | None) -> bool:
            return bool(gevent_select.select([fd], [], [], timeout)[0])

        return gevent.spawn, wait_greenlet
    if _module_patched("eventlet.patcher", "is_monkey_patched", "thread"):
        raise DrainError(
            f"eventlet has monkey-patched threading (SIGTERM leads to {describe(previous)}); "
            "the drain runs with threads or gevent only. eventlet is deprecated and gunicorn "
            "26 removed its eventlet worker: serve with gunicorn -k gevent or -k gthread, or "
            "call start_draining() from the server's shutdown hook"
        )
    poll: Callable[[], select.poll] = select.poll
    if _module_patched("gevent.monkey", "is_module_patched", "select"):
        # gevent's select module is for greenlets: a real thread waits with the original.
        poll = sys.modules["gevent.monkey"].get_original("select", "poll")

    def wait_thread(fd: int, timeout: float | None) -> bool:
        # poll(), not select(): the pipe's descriptor may be above select's 1024.
        poller = poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(None if timeout is None else timeout * 1000))

    def spawn(target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=target, name="dockerflow-sigterm", daemon=True)
        thread.start()
        return thread

    return spawn, wait_thread


def install(drain: Drain, seconds: float, *, chain_default: bool) -> SigtermDelay:
    """Make SIGTERM start ``drain``, then reach the current handler after ``seconds``.

    When the current handler is already a :class:`SigtermDelay` of this process, ``drain`` is
    added to it instead. SIGTERM then leaves system calls in progress alone (it restarts them,
    as gunicorn's ``siginterrupt(SIGTERM, False)`` does), whatever the handler it replaces did.

    :param drain: the drain SIGTERM starts.
    :param seconds: how long the drain lasts before the signal is handed on.
    :param chain_default: whether to chain to ``SIG_DFL`` and ``SIG_IGN`` too; when false,
        only a handler in Python (a server's) is chained to.
    :returns: the handler now installed.
    :raises DrainError: if this is not the main thread, SIGTERM's handler is not one that can
        be chained to, or the process runs on eventlet.
    """
    if "uwsgi" in sys.modules:
        # uWSGI installs its C handlers after Python starts, so Python's record of them is
        # stale (it says SIG_IGN): a handler installed here would silently replace uWSGI's.
        raise DrainError(
            "under uWSGI, SIGTERM is handled by uWSGI's C code, which Python cannot see or "
            "chain to; see the probes guide for uWSGI"
        )
    current = signal.getsignal(signal.SIGTERM)
    if isinstance(current, SigtermDelay) and current.ours:
        current.add(drain, seconds)
        return current
    if current is None:
        raise DrainError("SIGTERM is handled by C code outside Python, which cannot be chained to")
    if not callable(current) and not chain_default:
        raise _NoServerHandler(f"SIGTERM leads to {describe(current)}, and no server handles it")
    spawn, wait = _concurrency(current)
    delay = SigtermDelay(current, seconds)
    delay.add(drain, seconds)
    try:
        signal.signal(signal.SIGTERM, delay)
    except ValueError as exc:  # not the main thread
        os.close(delay._read)
        os.close(delay._write)
        raise DrainError("signal handlers can only be installed from the main thread") from exc
    # signal.signal installs without SA_RESTART: a blocking C call of a request would fail
    # with EINTR at SIGTERM, and at the watcher's own.
    if hasattr(signal, "siginterrupt"):  # not on Windows
        signal.siginterrupt(signal.SIGTERM, False)
    delay.start_watcher(spawn, wait)
    _check_gunicorn(current, seconds)
    return delay
