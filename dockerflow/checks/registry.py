"""python-dockerflow's module-level check registry, kept as a thin compatibility layer.

This is the one place in dockerflow with module-level mutable state. As in python-dockerflow,
:func:`get_checks` returns the registry itself, a ``dict`` of name → function that code may
read and edit (``del get_checks()["check_redis_connected"]`` stops that check).

Checks registered here with :func:`register` are run by every
:class:`~dockerflow.flask.Dockerflow` extension in the process. The built-in checks an
extension is given (``Dockerflow(app, db=db)``) are entered here too, under python-dockerflow's
names, so that they can be found and edited the same way; each is run only by the extension it
was given to (see :func:`register_owned`), so two apps in one process do not run each other's
database checks. New code should register checks on the extension instead.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from ..engine import Check, Engine, callable_name, validate_groups

F = TypeVar("F", bound=Callable[..., Any])

# The live registry: name -> function, edited by register(), clear_checks() and user code.
_REGISTERED: dict[str, Callable[..., Any]] = {}
# The Check made for the function under each name. The same Check serves every heartbeat while
# the function stays (the engine keys stuck threads by check identity); a Check also keeps the
# timeout given to register().
_CHECKS: dict[str, Check] = {}
# Built-in checks of an extension: owner -> its checks, and function -> weak ref to its owner.
# Weak both ways, so the registry keeps no extension (nor its app) alive.
_OWNED: weakref.WeakKeyDictionary[object, list[Check]] = weakref.WeakKeyDictionary()
_OWNER_OF: weakref.WeakKeyDictionary[Callable[..., Any], weakref.ref[object]] = (
    weakref.WeakKeyDictionary()
)


@overload
def register(
    func: F,
    name: str | None = None,
    *,
    timeout: float | None = None,
    critical: bool = True,
    groups: Iterable[str] = (),
) -> F: ...
@overload
def register(
    func: None = None,
    name: str | None = None,
    *,
    timeout: float | None = None,
    critical: bool = True,
    groups: Iterable[str] = (),
) -> Callable[[F], F]: ...
def register(
    func: F | None = None,
    name: str | None = None,
    *,
    timeout: float | None = None,
    critical: bool = True,
    groups: Iterable[str] = (),
) -> F | Callable[[F], F]:
    """Register a check that every Dockerflow extension in the process runs.

    Works as ``@register``, ``@register(name="db")`` or ``register(func)``; returns ``func``
    itself. A later registration under the same name replaces the earlier one.

    :param func: a ``def`` or ``async def`` taking no arguments, returning check messages.
    :param name: the check's name in the report; defaults to the function's ``__name__``.
    :param timeout: seconds the check may run; defaults to the extension's check timeout.
    :param critical: ``False`` makes a failure of the check count as a warning (see
        :class:`~dockerflow.engine.Check`).
    :param groups: the named heartbeat groups the check belongs to (see
        :class:`~dockerflow.engine.Check`).
    :returns: ``func`` itself, or a decorator when ``func`` is not given.
    :raises CheckRegistrationError: if ``func`` is not callable or ``timeout`` is not positive.
    """
    if func is None:
        return functools.partial(
            register, name=name, timeout=timeout, critical=critical, groups=groups
        )
    # Made now, so a bad registration fails where it is made rather than at heartbeat time.
    name = name or callable_name(func)
    check = Check(
        name, func, timeout, critical=critical, groups=validate_groups(groups, f"{name}: groups")
    )
    _REGISTERED[check.name] = func
    _CHECKS[check.name] = check
    return func


def register_partial(
    func: Callable[..., Any],
    *args: Any,
    name: str | None = None,
    timeout: float | None = None,
    critical: bool = True,
    groups: Iterable[str] = (),
) -> Callable[[], Any]:
    """Register ``func(*args)`` as a check, as python-dockerflow's ``register_partial`` does.

    :param func: the check function.
    :param args: the arguments it is called with.
    :param name: the check's name; defaults to ``func``'s name.
    :param timeout: seconds the check may run; defaults to the extension's check timeout.
    :param critical: ``False`` makes a failure of the check count as a warning.
    :param groups: the named heartbeat groups the check belongs to.
    :returns: the partial that was registered.
    :raises CheckRegistrationError: if ``func`` is not callable or ``timeout`` is not positive.
    """
    partial = functools.partial(func, *args)
    functools.update_wrapper(partial, func)
    register(partial, name=name, timeout=timeout, critical=critical, groups=groups)
    return partial


def get_checks() -> dict[str, Callable[..., Any]]:
    """Return the module-level registry itself: name → check function.

    Changes made to the returned dict (adding, replacing or deleting entries) take effect
    from the next heartbeat on, as in python-dockerflow.

    :returns: the live registry.
    """
    return _REGISTERED


def clear_checks() -> None:
    """Remove every check registered at module level, built-in checks of extensions included."""
    _REGISTERED.clear()
    _CHECKS.clear()


def register_owned(owner: object, check: Check) -> None:
    """Enter an extension's own check in the registry, to be run by that extension only.

    ``Dockerflow(app, db=db)`` does this for its built-in checks, so that they are listed by
    :func:`get_checks` under python-dockerflow's names and can be removed there, while other
    extensions in the process leave them alone. An owned check that another owner's check
    replaces under the same name is still run by its own extension.

    :param owner: the extension; held weakly.
    :param check: the check; its function must be hashable.
    """
    _OWNED.setdefault(owner, []).append(check)
    _OWNER_OF[check.func] = weakref.ref(owner)
    _REGISTERED[check.name] = check.func


def owned_checks(owner: object) -> list[Check]:
    """Return the checks entered with :func:`register_owned` for ``owner``, removed or not.

    :param owner: the extension.
    :returns: its checks, in the order they were entered.
    """
    return list(_OWNED.get(owner, ()))


def checks_for(owner: object) -> list[Check]:
    """Return the checks ``owner`` runs from this registry, in registry order.

    Those are the entries of :func:`get_checks` that no other extension owns, and ``owner``'s
    own entries, including any hidden by another extension's check of the same name.

    :param owner: the extension asking.
    :returns: the checks to run.
    """
    if not _REGISTERED:
        # Nothing registered at module level (the usual case in new code): no check to run,
        # owned ones included, as each owned check is run only while it is in the registry.
        return []
    own = {id(check.func): check for check in _OWNED.get(owner, ())}
    out: list[Check] = []
    taken: set[str] = set()
    for name, func in list(_REGISTERED.items()):
        check = own.get(id(func))
        if check is not None:
            out.append(check if check.name == name else _unowned_check(name, func))
        elif _owner_of(func) is None:
            out.append(_unowned_check(name, func))
        else:
            taken.add(name)  # another extension's built-in check
            continue
    for check in own.values():
        if check.name in taken:
            out.append(check)
    return out


def registered_checks() -> list[Check]:
    """Return the module-level checks that every extension runs, in registration order.

    :returns: the checks of :func:`get_checks` that no extension owns.
    """
    return [
        _unowned_check(name, func)
        for name, func in list(_REGISTERED.items())
        if _owner_of(func) is None
    ]


def _owner_of(func: Callable[..., Any]) -> weakref.ref[object] | None:
    try:
        return _OWNER_OF.get(func)
    except TypeError:  # an unhashable callable put into the dict by hand: nobody's
        return None


def _unowned_check(name: str, func: Callable[..., Any]) -> Check:
    check = _CHECKS.get(name)
    if check is None or check.func is not func:
        # Entered into the dict by hand, or replaced there: a check with the default timeout.
        check = _CHECKS[name] = Check(name, func)
    return check


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
        registered = _CHECKS.get(name)
        # A registered check keeps its identity (and timeout); another pair is a new check.
        pairs.append(registered if registered and registered.func is func else Check(name, func))
    return engine, pairs
