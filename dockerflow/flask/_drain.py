"""Draining on SIGTERM: the heartbeat fails while the process keeps serving, then it stops.

A server stops taking connections as soon as its SIGTERM handler runs: gunicorn's workers stop
accepting, and new connections wait in the listen backlog until the last worker exits and they
are refused. A probe then sees a timeout, never a failing heartbeat. So the handler the server
installed is wrapped: SIGTERM starts the drain at once (the heartbeat fails from then on), and the
signal is handed on to the server's own handler only when the drain's seconds are over, so that
the server keeps serving, new connections included, until then.

The handler itself only writes a byte to a pipe, which is safe whatever the main thread was
doing when the signal came; a thread of its own, started when the handler is installed, does
the rest. The signal is handed on by sending SIGTERM to the main thread again, so that the
server's handler runs where Python runs every handler.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

from .._errors import DrainError

#: What ``signal.getsignal`` returns: a Python callable, ``SIG_DFL``, ``SIG_IGN``, or ``None``
#: for a handler installed by C code (uWSGI's, for one).
Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
#: Told the reason when the drain starts.
Listener = Callable[[str], None]

logger = logging.getLogger("dockerflow.flask")


class SigtermDrain:
    """A SIGTERM handler that starts the drain, and hands the signal on to the handler it
    replaced once ``seconds`` have passed.

    A second SIGTERM during the drain ends it at once. In a process forked after it was
    installed (which has no drain thread), it hands SIGTERM on at once.

    :param previous: the handler it replaces: a callable is called, ``SIG_DFL`` is restored and
        the signal raised again (the process ends as it would have), ``SIG_IGN`` does nothing.
    :param seconds: how long the drain lasts.
    """

    def __init__(self, previous: Handler, seconds: float) -> None:
        self.previous = previous
        self.seconds = seconds
        self._pid = os.getpid()
        self._listeners: list[weakref.WeakMethod[Listener]] = []
        self._handed_over = False
        self._read, self._write = os.pipe()
        # Started here, in the main thread: starting a thread in a signal handler could wait
        # forever on a lock the interrupted main thread holds.
        self._thread = threading.Thread(target=self._drain, name="dockerflow-drain", daemon=True)
        self._thread.start()

    def add(self, listener: Listener, seconds: float) -> None:
        """Tell ``listener`` (a bound method, held weakly) when the drain starts; the drain
        lasts the longest of the ``seconds`` given."""
        self._listeners.append(weakref.WeakMethod(listener))
        self.seconds = max(self.seconds, seconds)

    def listens(self, owner: object) -> bool:
        """Return whether a method of ``owner`` is one of the listeners."""
        return any(getattr(ref(), "__self__", None) is owner for ref in self._listeners)

    @property
    def ours(self) -> bool:
        """Whether it was installed in this process (a forked child has no drain thread)."""
        return self._pid == os.getpid()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread, between any two bytecodes of whatever it was doing: no
        # lock, no logging, no thread start here.
        if self._handed_over or not self.ours:
            self._hand_over(signum, frame)
            return
        try:
            os.write(self._write, b"T")
        except OSError:
            self._hand_over(signum, frame)

    def _hand_over(self, signum: int, frame: FrameType | None) -> None:
        previous = self.previous
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def _drain(self) -> None:
        # The drain thread: waits for the first SIGTERM, starts the drain, waits out its
        # seconds (or a second SIGTERM), then sends SIGTERM to the main thread again.
        try:
            os.read(self._read, 1)
        except OSError:  # the pipe was closed: never draining
            return
        for ref in list(self._listeners):
            listener = ref()
            if listener is not None:
                try:
                    listener("SIGTERM")
                except Exception:
                    logger.exception("Starting the drain failed in %r", listener)
        seconds = self.seconds
        logger.warning(
            "SIGTERM received: draining for %gs (/__heartbeat__ answers 503), then stopping",
            seconds,
        )
        ended_early = bool(select.select([self._read], [], [], seconds)[0])
        self._handed_over = True
        logger.info(
            "Drain over%s: handing SIGTERM on to %s",
            " early (a second SIGTERM)" if ended_early else "",
            describe(self.previous),
        )
        main = threading.main_thread()
        if main.is_alive() and main.ident is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pthread_kill(main.ident, signal.SIGTERM)


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


def server_graceful_timeout(handler: Handler) -> float | None:
    """Return gunicorn's ``graceful_timeout`` when ``handler`` is a gunicorn worker's, else
    ``None``. Its arbiter kills workers that have not exited that many seconds after SIGTERM."""
    owner = getattr(handler, "__self__", None)
    value = getattr(getattr(owner, "cfg", None), "graceful_timeout", None)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def install(listener: Listener, seconds: float, *, chain_default: bool) -> SigtermDrain:
    """Make SIGTERM start the drain, then reach the current handler after ``seconds``.

    When the current handler is already a :class:`SigtermDrain` of this process, ``listener``
    is added to it instead.

    :param listener: a bound method, called with the reason when the drain starts.
    :param seconds: how long the drain lasts before the signal is handed on.
    :param chain_default: whether to chain to ``SIG_DFL`` and ``SIG_IGN`` too; when false,
        only a handler in Python (a server's) is chained to.
    :returns: the handler now installed.
    :raises DrainError: if this is not the main thread, or SIGTERM's handler is not one that
        can be chained to.
    """
    if "uwsgi" in sys.modules:
        # uWSGI installs its C handlers after Python starts, so Python's record of them is
        # stale (it says SIG_IGN): a handler installed here would silently replace uWSGI's.
        raise DrainError(
            "under uWSGI, SIGTERM is handled by uWSGI's C code, which Python cannot see or "
            "chain to; see the probes guide for uWSGI"
        )
    if threading.current_thread() is not threading.main_thread():
        raise DrainError("signal handlers can only be installed from the main thread")
    current = signal.getsignal(signal.SIGTERM)
    if isinstance(current, SigtermDrain) and current.ours:
        if not current.listens(getattr(listener, "__self__", None)):
            current.add(listener, seconds)
        return current
    if current is None:
        raise DrainError("SIGTERM is handled by C code outside Python, which cannot be chained to")
    if not callable(current) and not chain_default:
        raise DrainError(f"SIGTERM leads to {describe(current)}, and no server handles it")
    drain = SigtermDrain(current, seconds)
    drain.add(listener, seconds)
    signal.signal(signal.SIGTERM, drain)
    grace = server_graceful_timeout(current)
    if grace is not None and seconds >= grace:
        logger.warning(
            "DOCKERFLOW_DRAIN_SECONDS=%g is not below gunicorn's graceful_timeout (%gs): the "
            "arbiter kills the worker before the drain is over. Set graceful_timeout to the "
            "drain plus the longest request.",
            seconds,
            grace,
        )
    return drain
