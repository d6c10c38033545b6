"""The watchdog that wakes blocking driver calls at their deadline: bounded bookkeeping."""

from __future__ import annotations

import threading

from dockerflow.integrations._support import Watchdog


def bookkeeping(watchdog: Watchdog) -> int:
    """How many entries the watchdog's containers hold, whatever their names."""
    containers = (list, set, dict)
    return sum(len(value) for value in vars(watchdog).values() if isinstance(value, containers))


def test_fired_then_cancelled_deadlines_leave_nothing_behind() -> None:
    """The database check cancels every deadline when its call ends, including fired ones."""
    watchdog = Watchdog()
    for _ in range(300):
        fired = threading.Event()
        number = watchdog.call_after(0, fired.set)
        assert fired.wait(10)
        watchdog.cancel(number)  # as _socket_deadline does in its finally
    assert bookkeeping(watchdog) < 50


def test_deadlines_cancelled_long_before_they_are_due_are_dropped() -> None:
    """A check with a long timeout arms a far deadline per run and cancels it at once."""
    watchdog = Watchdog()
    for _ in range(10_000):
        watchdog.cancel(watchdog.call_after(3600, lambda: None))
    assert bookkeeping(watchdog) < 200


def test_a_live_deadline_still_fires_among_many_cancelled_ones() -> None:
    watchdog = Watchdog()
    fired = threading.Event()
    dropped = threading.Event()
    for _ in range(1000):
        watchdog.cancel(watchdog.call_after(3600, dropped.set))
    watchdog.call_after(1.5, fired.set)
    # Due before the live one, each cancelled at once: a second is far more than the time
    # between the two calls, however loaded the machine (a deadline already taken by the
    # watchdog's thread when cancel() comes may still fire; that is allowed, and not tested).
    for _ in range(1000):
        watchdog.cancel(watchdog.call_after(1.0, dropped.set))
    assert fired.wait(10)
    assert not dropped.is_set()
    assert bookkeeping(watchdog) < 200


def test_cancelling_an_unknown_or_repeated_number_is_harmless() -> None:
    watchdog = Watchdog()
    fired = threading.Event()
    number = watchdog.call_after(0.01, fired.set)
    watchdog.cancel(number + 1000)
    assert fired.wait(10)
    watchdog.cancel(number)
    watchdog.cancel(number)
    assert bookkeeping(watchdog) < 10
