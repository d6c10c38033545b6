from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from dockerflow.engine import Engine


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def engine() -> Iterator[Engine]:
    """An engine with the default settings, closed at teardown."""
    engine = Engine()
    yield engine
    engine.close()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """What checks stuck "for ever" wait on; set at teardown, so that their threads end."""
    event = threading.Event()
    yield event
    event.set()
