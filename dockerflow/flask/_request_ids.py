"""Request ids for requests that come without one: random UUID strings, without a system call.

``uuid.uuid4()`` reads ``os.urandom`` for every id, a system call on each request. Request ids
need to be unique, not secret: a generator seeded once from ``os.urandom`` is enough. A forked
child (a gunicorn worker) seeds its own again, so that parent, children and siblings never
make the same sequence.
"""

from __future__ import annotations

import random

from ..engine import after_fork_in_child

# Version 4 and the RFC 4122 variant, placed as uuid.UUID(version=4) places them.
_KEEP = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_4 = (0x4000 << 64) | (0x8000 << 48)


class RequestIds:
    """A maker of request ids: random version 4 UUID strings, as ``str(uuid.uuid4())`` gives.

    Each instance has a generator of its own, seeded from ``os.urandom`` when it is made and
    again in every child the process forks.
    """

    def __init__(self) -> None:
        self._random = random.Random()
        after_fork_in_child(self, RequestIds._reseed)

    def _reseed(self) -> None:
        self._random.seed()

    def new(self) -> str:
        """Return a new request id, such as ``"1b4e28ba-2fa1-41d2-883f-0016d3cca427"``.

        Safe to call from any thread: ``random.Random`` methods are thread-safe.
        """
        text = "%032x" % (self._random.getrandbits(128) & _KEEP | _VERSION_4)
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
