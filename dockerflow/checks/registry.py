"""python-dockerflow's module-level check registry, kept as a thin compatibility layer.

This is the one place in dockerflow with module-level mutable state: checks registered here with
:func:`register` are run by every :class:`~dockerflow.flask.Dockerflow` extension in the process,
as they were in python-dockerflow. New code should register checks on the extension instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from ..engine import Check, Engine, callable_name

F = TypeVar("F", bound=Callable[..., Any])

# The compatibility registry: name -> Check. Mutated by register() and clear_checks() only. The
# same Check object serves every heartbeat, as the engine keys stuck threads by check identity.
_REGISTERED: dict[str, Check] = {}


@overload
def register(func: F, name: str | None = None, *, timeout: float | None = None) -> F: ...
@overload
def register(
    func: None = None, name: str | None = None, *, timeout: float | None = None
) -> Callable[[F], F]: ...
def register(
    func: F | None = None, name: str | None = None, *, timeout: float | None = None
) -> F | Callable[[F], F]:
    """Register a check that every Dockerflow extension in the process runs.

    Works as ``@register``, ``@register(name="db")`` or ``register(func)``; returns ``func``
    itself. A later registration under the same name replaces the earlier one.

    :param func: a ``def`` or ``async def`` taking no arguments, returning check messages.
    :param name: the check's name in the report; defaults to the function's ``__name__``.
    :param timeout: seconds the check may run; defaults to the extension's check timeout.
    :raises CheckRegistrationError: if ``func`` is not callable or ``timeout`` is not positive.
    """
    if func is None:
        return functools.partial(register, name=name, timeout=timeout)
    # Made now, so a bad registration fails where it is made rather than at heartbeat time.
    check = Check(name or callable_name(func), func, timeout)
    _REGISTERED[check.name] = check
    return func


def register_partial(
    func: Callable[..., Any], *args: Any, name: str | None = None, timeout: float | None = None
) -> Callable[[], Any]:
    """Register ``func(*args)`` as a check, as python-dockerflow's ``register_partial`` does.

    :returns: the partial that was registered.
    """
    partial = functools.partial(func, *args)
    functools.update_wrapper(partial, func)
    register(partial, name=name, timeout=timeout)
    return partial


def get_checks() -> dict[str, Callable[..., Any]]:
    """Return a copy of the module-level checks: name → function."""
    return {name: check.func for name, check in _REGISTERED.items()}


def clear_checks() -> None:
    """Remove every check registered at module level."""
    _REGISTERED.clear()


def registered_checks() -> list[Check]:
    """Return the module-level checks, in registration order."""
    return list(_REGISTERED.values())


@dataclass
class ChecksResults:
    """python-dockerflow's result of :func:`run_checks`.

    :param details: check name → ``{"status", "level", "messages"}`` for checks above level 0.
    :param statuses: check name → status text.
    :param level: the overall (highest) level.
    """

    details: dict[str, dict[str, Any]]
    statuses: dict[str, str]
    level: int


async def run_checks_async(
    checks: Iterable[tuple[str, Callable[..., Any]]],
    silenced_check_ids: Iterable[str] | None = None,
) -> ChecksResults:
    """Run ``(name, function)`` pairs concurrently on the running loop, each under the default
    timeout (or its registered one), and return python-dockerflow's :class:`ChecksResults`."""
    engine, pairs = _engine_and_checks(checks, silenced_check_ids)
    report = await engine.run_uncached(pairs)
    return ChecksResults(details=report.details, statuses=report.checks, level=report.level)


def run_checks(
    checks: Iterable[tuple[str, Callable[..., Any]]],
    silenced_check_ids: Iterable[str] | None = None,
) -> ChecksResults:
    """Blocking form of :func:`run_checks_async`."""
    engine, pairs = _engine_and_checks(checks, silenced_check_ids)
    report = engine.run_sync(pairs)
    return ChecksResults(details=report.details, statuses=report.checks, level=report.level)


# One engine per silenced-ID set, reused by every call.
_ENGINES: dict[frozenset[str], Engine] = {}


def _engine_and_checks(
    checks: Iterable[tuple[str, Callable[..., Any]]], silenced: Iterable[str] | None
) -> tuple[Engine, list[Check]]:
    key = frozenset(silenced or ())
    engine = _ENGINES.get(key)
    if engine is None:
        engine = _ENGINES[key] = Engine(silenced_ids=key)
    pairs = []
    for name, func in checks:
        registered = _REGISTERED.get(name)
        # A registered check keeps its identity (and timeout); another pair is a new check.
        pairs.append(registered if registered and registered.func is func else Check(name, func))
    return engine, pairs
