"""Detect python-dockerflow installed next to dockerflow-async.

Both distributions install the ``dockerflow`` import package, so whichever was installed last
has overwritten files of the other: the result is a mix of the two that fails in odd ways. The
check is made once, when ``dockerflow`` is first imported.
"""

from __future__ import annotations

import importlib.metadata
import warnings

#: The distribution name of python-dockerflow on PyPI.
OTHER_DISTRIBUTION = "dockerflow"
#: Ours.
OUR_DISTRIBUTION = "dockerflow-async"


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
        "both and reinstall the one you mean to use: pip uninstall -y dockerflow "
        "dockerflow-async && pip install dockerflow-async",
        ConflictingInstallWarning,
        stacklevel=2,
    )
    return True
