from __future__ import annotations

from dockerflow import checks
from dockerflow.checks import (
    CRITICAL,
    ERROR,
    STATUSES,
    CheckMessage,
    Critical,
    Debug,
    Error,
    Info,
    Warning,
    level_to_text,
)


def test_levels_and_statuses() -> None:
    assert [Debug("").level, Info("").level, Warning("").level, Error("").level] == [10, 20, 30, 40]
    assert Critical("").level == CRITICAL
    assert level_to_text(0) == "ok"
    assert level_to_text(ERROR) == "error"
    assert level_to_text(35) == "unknown"
    assert STATUSES[CRITICAL] == "critical"


def test_equality_uses_class_and_every_field() -> None:
    assert Error("boom", id="x.E1") == Error("boom", id="x.E1")
    assert Error("boom", id="x.E1") != Error("boom", id="x.E2")
    assert Error("boom", id="x.E1") != Critical("boom", id="x.E1")
    assert Error("boom", hint="h") != Error("boom")


def test_str_and_repr() -> None:
    assert (
        str(Error("boom", id="x.E1", hint="fix it", obj="db")) == "db: (x.E1) boom\n\tHINT: fix it"
    )
    assert str(Info("hello")) == "?: hello"
    assert repr(Warning("w", id="x.W1")).startswith("<Warning: level=30, msg='w'")


def test_is_serious_and_level_override() -> None:
    assert Error("e").is_serious()
    assert not Warning("w").is_serious()
    assert Warning("w").is_serious(level=30)
    assert CheckMessage("custom", level=45).level == 45


def test_messages_module_path_kept() -> None:
    from dockerflow.checks import messages

    assert messages.Error is checks.Error
