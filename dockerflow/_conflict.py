"""Detect python-dockerflow installed next to dockerflow-async.

Both distributions install the ``dockerflow`` import package, so whichever was installed last
has overwritten files of the other: the result is a mix of the two that fails in odd ways. The
check is made once, when ``dockerflow`` is first imported.
"""

from __future__ import annotations

import importlib.metadata
import re
import warnings

#: The distribution name of python-dockerflow on PyPI.
OTHER_DISTRIBUTION = "dockerflow"
#: Ours.
OUR_DISTRIBUTION = "dockerflow-async"
#: Our extras that a service uses at run time, in the order a repair names them.
SERVICE_EXTRAS = ("flask", "sqlalchemy", "postgres", "redis", "alembic", "prometheus")

_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ConflictingInstallWarning(RuntimeWarning):
    """python-dockerflow (``pip install dockerflow``) is installed next to dockerflow-async."""


def installed(name: str) -> str | None:
    """Return the installed version of distribution ``name``, or ``None``.

    :param name: a distribution name.
    :returns: its version, or ``None`` if it is not installed.
    """
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_extras() -> list[str]:
    """Return the extras of dockerflow-async (of :data:`SERVICE_EXTRAS`) whose requirements are
    all installed: those a reinstall must keep.

    pip does not record which extras were asked for, so they are told from what is installed:
    Flask makes ``flask``, SQLAlchemy ``sqlalchemy``, redis-py ``redis`` and so on.

    :returns: the extras, in the order of :data:`SERVICE_EXTRAS`.
    """
    try:
        requirements = importlib.metadata.requires(OUR_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    needs: dict[str, list[str]] = {}
    for requirement in requirements:
        name_part, _, marker = requirement.partition(";")
        found = _EXTRA_MARKER.search(marker)
        if found is None or found.group(1) not in SERVICE_EXTRAS:
            continue
        name = _NAME.match(name_part.strip())
        if name is not None:
            needs.setdefault(found.group(1), []).append(name.group(0))
    return [
        extra
        for extra in SERVICE_EXTRAS
        if extra in needs and all(installed(name) is not None for name in needs[extra])
    ]


def repair_command() -> str:
    """Return the shell command that removes both distributions and reinstalls ours, with the
    extras in use (:func:`installed_extras`)."""
    extras = installed_extras()
    target = f"'{OUR_DISTRIBUTION}[{','.join(extras)}]'" if extras else OUR_DISTRIBUTION
    return f"pip uninstall -y {OTHER_DISTRIBUTION} {OUR_DISTRIBUTION} && pip install {target}"


def warn_if_both_installed() -> bool:
    """Warn with :class:`ConflictingInstallWarning` if both distributions are installed.

    :returns: whether they are.
    """
    other = installed(OTHER_DISTRIBUTION)
    ours = installed(OUR_DISTRIBUTION)
    if other is None or ours is None:
        return False
    warnings.warn(
        f"python-dockerflow {other} (the 'dockerflow' distribution) is installed next to "
        f"dockerflow-async {ours}. Both install the 'dockerflow' package, so each has "
        "overwritten files of the other and the code imported is a mix of the two. Remove "
        f"both and reinstall the one you mean to use: {repair_command()}",
        ConflictingInstallWarning,
        stacklevel=2,
    )
    return True
