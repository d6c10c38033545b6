"""Mozilla Dockerflow for Flask services, with an async, timeout-bounded checks engine.

The import name is ``dockerflow`` so that code written for python-dockerflow keeps working;
the distribution on PyPI is ``dockerflow-async``. Importing it warns with
:class:`~dockerflow._conflict.ConflictingInstallWarning` if python-dockerflow is installed too.
"""

from __future__ import annotations

from ._conflict import warn_if_both_installed

__version__ = "0.1.0"

__all__ = ["__version__"]

warn_if_both_installed()
