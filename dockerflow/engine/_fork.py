"""Forgetting, in a forked child, what belonged to the parent's threads.

One hook per process, registered with :func:`os.register_at_fork` once, calls the resets of the
owners still alive: ``os.register_at_fork`` never lets a hook go, so a hook per owner (per app,
per engine) would pile up for the life of the process. Owners are held weakly, and an owner's
entry goes with it. This table is process-wide by nature: it mirrors the interpreter's own list
of at-fork hooks.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# id(owner) -> (a weak reference to the owner, its resets in registration order). Keyed by id:
# owners need not be hashable (a dataclass that compares by value is not).
_RESETS: dict[int, tuple[weakref.ref[Any], list[Callable[[Any], object]]]] = {}
# Taken only to register; the child replaces it (a parent thread may have held it at fork).
_lock = threading.Lock()


def after_fork_in_child(owner: T, reset: Callable[[T], object]) -> None:
    """Call ``reset(owner)`` in every child this process forks from now on, while ``owner`` lives.

    A forked child has none of its parent's threads: a loop thread, worker threads, a watchdog,
    the runs they were doing, pooled connections whose sockets the parent uses. The owner of such
    things registers here and starts over in the child. ``owner`` is held weakly: once it is
    gone, so is its reset.

    :param owner: the object that holds per-process state; it must support weak references.
    :param reset: called with ``owner`` in the child, right after the fork.
    """
    key = id(owner)
    with _lock:
        entry = _RESETS.get(key)
        if entry is None or entry[0]() is not owner:
            entry = _RESETS[key] = (weakref.ref(owner, lambda _: _forget(key)), [])
        entry[1].append(reset)


def _forget(key: int) -> None:
    # The owner was collected; a new owner may have taken its id meanwhile (its entry is new).
    entry = _RESETS.get(key)
    if entry is not None and entry[0]() is None:
        del _RESETS[key]


def registered() -> int:
    """Return how many owners have resets registered (for tests and monitoring)."""
    return len(_RESETS)


def _after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    for ref, resets in list(_RESETS.values()):
        owner = ref()
        if owner is not None:
            for reset in list(resets):
                reset(owner)


os.register_at_fork(after_in_child=_after_fork)
