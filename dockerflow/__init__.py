"""Mozilla Dockerflow for Flask services, with an async, timeout-bounded checks engine.

The import name is ``dockerflow`` so that code written for python-dockerflow keeps working;
the distribution on PyPI is ``dockerflow-async``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
