"""The version has one source, ``dockerflow.__version__``, and the release files agree with it.

The build and install of the distribution itself is checked by ``make dist`` (too slow here).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.version import Version

import dockerflow

try:
    import tomllib
except ImportError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
RELEASE_HEADING = re.compile(r"^## \[(?P<version>[^\]]+)\] - (?P<date>\d{4}-\d{2}-\d{2})$", re.M)


def test_pyproject_takes_the_version_from_the_package() -> None:
    """pyproject.toml declares no version of its own: setuptools reads dockerflow.__version__."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    dynamic = pyproject["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "dockerflow.__version__"}


def test_version_is_normalized() -> None:
    """The version is written as PEP 440 normalizes it, as wheel names and metadata carry it."""
    assert str(Version(dockerflow.__version__)) == dockerflow.__version__


def test_changelog_newest_release_is_the_version() -> None:
    """CHANGELOG.md's newest release heading is the package's version: a bump needs an entry."""
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = RELEASE_HEADING.findall(changelog)
    assert releases, "CHANGELOG.md has no '## [X.Y.Z] - YYYY-MM-DD' heading"
    assert releases[0][0] == dockerflow.__version__
    versions = [Version(version) for version, _ in releases]
    assert versions == sorted(versions, reverse=True), "releases must be listed newest first"


@pytest.mark.parametrize("name", ["README.md", "docs/quickstart.rst"])
def test_install_instructions_name_the_current_wheel(name: str) -> None:
    """The wheel file named in the install instructions is the one ``make dist`` builds."""
    text = (ROOT / name).read_text(encoding="utf-8")
    wheels = set(re.findall(r"dockerflow_async-([^-\s]+)-py3-none-any\.whl", text))
    assert wheels == {dockerflow.__version__}
