"""Sphinx configuration for the dockerflow-async documentation."""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))
sys.path.insert(0, os.path.dirname(HERE))

import dockerflow  # noqa: E402

project = "dockerflow-async"
author = "dockerflow-async contributors"
copyright = "dockerflow-async contributors"  # noqa: A001 - Sphinx's name
release = dockerflow.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "dockerflow_docs",
]

# No network at build time: no intersphinx, and nothing in the build fetches anything.
templates_path: list[str] = []
exclude_patterns = ["_build"]
root_doc = "index"
nitpicky = False

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_default_options = {"show-inheritance": True}

html_theme = "alabaster"
html_title = f"dockerflow-async {release}"
html_theme_options = {
    "description": "Dockerflow for Flask with a concurrent, timeout-bounded checks engine",
    "fixed_sidebar": True,
}
