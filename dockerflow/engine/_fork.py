"""Forgetting, in a forked child, what belonged to the parent's threads."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def after_fork_in_child(owner: T, reset: Callable[[T], object]) -> None:
    """Call ``reset(owner)`` in every child this process forks from now on, while ``owner`` lives.

    A forked child has none of its parent's threads: a loop thread, worker threads, a watchdog,
    the runs they were doing, pooled connections whose sockets the parent uses. The owner of such
    things registers here once and starts over in the child. ``owner`` is held weakly: the hook
    (which ``os.register_at_fork`` never lets go of) does not keep it alive.

    :param owner: the object that holds per-process state.
    :param reset: called with ``owner`` in the child, right after the fork.
    """
    ref = weakref.ref(owner)

    def after_fork() -> None:
        alive = ref()
        if alive is not None:
            reset(alive)

    os.register_at_fork(after_in_child=after_fork)
