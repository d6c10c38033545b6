"""Dockerflow for Flask: ``/__version__``, ``/__heartbeat__``, ``/__lbheartbeat__``, request logs.

::

    from dockerflow.flask import Dockerflow, checks
"""

from __future__ import annotations

from ..engine import UnknownCheckError
from . import checks, signals
from ._extension import Dockerflow

__all__ = ["Dockerflow", "UnknownCheckError", "checks", "signals"]
