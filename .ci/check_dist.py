"""Check the sdist and wheel that ``python -m build`` wrote, before they are published.

Run by ``make dist`` from the repository root with the project's venv, after ``twine check``::

    python .ci/check_dist.py dist

It checks what twine does not:

* both files carry ``dockerflow.__version__``, the version's single source, in their names and
  metadata;
* the sdist holds exactly the source release: the files of ``dockerflow/``, ``tests/``,
  ``docs/``, ``examples/`` and ``benchmarks/`` that git tracks or would track (so nothing that
  ``.gitignore`` names: no ``build/``, ``.venv*``, ``docs/_build``, ``__pycache__``), the top-level
  files listed below, and what setuptools generates;
* the wheel holds the package (with ``py.typed``) and its licence, nothing else;
* every classifier is one PyPI accepts (the ``trove-classifiers`` list), none deprecated.

It prints the number of files per top-level directory of each, and exits with status 1 naming
every problem it found.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from email.message import Message
from email.parser import BytesParser
from pathlib import Path

import trove_classifiers

import dockerflow

ROOT = Path(__file__).resolve().parent.parent
DIST_NAME = "dockerflow_async"
# Directories shipped whole in the sdist (MANIFEST.in grafts them; setuptools finds the package).
SDIST_DIRS = ("dockerflow", "tests", "docs", "examples", "benchmarks")
SDIST_TOP_FILES = ("CHANGELOG.md", "LICENSE", "MANIFEST.in", "README.md", "pyproject.toml")
# Written by setuptools into every sdist.
SDIST_GENERATED = ("PKG-INFO", "setup.cfg")
SDIST_GENERATED_DIR = f"{DIST_NAME}.egg-info/"
LICENSE_EXPRESSION = "MPL-2.0"


def source_files() -> list[str]:
    """The files git tracks, or would track if added, that exist in the working tree.

    :returns: paths relative to the repository root, with ``/`` separators.
    :raises SystemExit: if this is not a git checkout.
    """
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(
            f"check_dist needs a git checkout to compare the sdist with: {exc}"
        ) from exc
    names = (name.decode() for name in out.split(b"\0") if name)
    return sorted(name for name in names if (ROOT / name).is_file())


def per_directory(names: list[str]) -> str:
    """Count files per top-level directory.

    :param names: file paths relative to the distribution's root.
    :returns: one line per directory or top-level file, such as ``   57 tests/``.
    """
    counts = Counter(name.split("/", 1)[0] + ("/" if "/" in name else "") for name in names)
    return "\n".join(f"{count:5} {top}" for top, count in sorted(counts.items()))


def check_metadata(label: str, meta: Message, version: str, problems: list[str]) -> None:
    """Check the version, licence and classifiers of one distribution's metadata.

    :param label: the file name, for messages.
    :param meta: its ``PKG-INFO`` or ``METADATA``, parsed.
    :param version: the version it must carry.
    :param problems: the list that each problem found is appended to.
    """
    if meta["Version"] != version:
        problems.append(f"{label}: metadata version {meta['Version']!r}, expected {version!r}")
    if meta["License-Expression"] != LICENSE_EXPRESSION:
        problems.append(
            f"{label}: License-Expression {meta['License-Expression']!r}, "
            f"expected {LICENSE_EXPRESSION!r}"
        )
    for classifier in meta.get_all("Classifier") or []:
        if classifier in trove_classifiers.deprecated_classifiers:
            problems.append(f"{label}: deprecated classifier {classifier!r}")
        elif classifier not in trove_classifiers.classifiers:
            problems.append(f"{label}: {classifier!r} is not a trove classifier")


def check_sdist(path: Path, version: str, problems: list[str]) -> list[str]:
    """Compare the sdist's files with the source files it must hold.

    :param path: the ``.tar.gz``.
    :param version: the version in its name and metadata.
    :param problems: the list that each problem found is appended to.
    :returns: its file names, relative to its top directory.
    """
    prefix = f"{DIST_NAME}-{version}/"
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        outside = [m.name for m in members if not m.name.startswith(prefix)]
        if outside:
            problems.append(f"{path.name}: files outside {prefix}: {outside}")
        names = sorted(m.name[len(prefix) :] for m in members if m.name.startswith(prefix))
        pkg_info = (
            tar.extractfile(prefix + "PKG-INFO") if prefix + "PKG-INFO" in tar.getnames() else None
        )
        if pkg_info is None:
            problems.append(f"{path.name}: no PKG-INFO")
        else:
            check_metadata(path.name, BytesParser().parse(pkg_info), version, problems)

    expected = {
        name
        for name in source_files()
        if name.split("/", 1)[0] in SDIST_DIRS or name in SDIST_TOP_FILES
    }
    shipped = {
        name
        for name in names
        if name not in SDIST_GENERATED and not name.startswith(SDIST_GENERATED_DIR)
    }
    missing = sorted(expected - shipped)
    extra = sorted(shipped - expected)
    if missing:
        problems.append(f"{path.name}: source files missing (see MANIFEST.in): {missing}")
    if extra:
        problems.append(
            f"{path.name}: files that are not source files (generated, ignored by git, or outside "
            f"{', '.join(SDIST_DIRS)} and the top-level files): {extra}"
        )
    for directory in ("tests/", "docs/"):
        if not any(name.startswith(directory) for name in names):
            problems.append(f"{path.name}: no {directory}")
    return names


def check_wheel(path: Path, version: str, problems: list[str]) -> list[str]:
    """Check that the wheel holds the package, ``py.typed``, the status page's template and
    assets (``dockerflow/flask/status/``) and the licence, and nothing else.

    :param path: the ``.whl``.
    :param version: the version in its name and metadata.
    :param problems: the list that each problem found is appended to.
    :returns: its file names.
    """
    dist_info = f"{DIST_NAME}-{version}.dist-info/"
    with zipfile.ZipFile(path) as whl:
        names = sorted(name for name in whl.namelist() if not name.endswith("/"))
        if dist_info + "METADATA" in names:
            meta = BytesParser().parsebytes(whl.read(dist_info + "METADATA"))
            check_metadata(path.name, meta, version, problems)
        else:
            problems.append(f"{path.name}: no {dist_info}METADATA")

    package = {
        name
        for name in source_files()
        if name.startswith("dockerflow/")
        and (name.endswith((".py", "py.typed")) or name.startswith("dockerflow/flask/status/"))
    }
    shipped = {name for name in names if not name.startswith(dist_info)}
    if "dockerflow/py.typed" not in shipped:
        problems.append(f"{path.name}: no dockerflow/py.typed")
    if package - shipped:
        problems.append(f"{path.name}: package files missing: {sorted(package - shipped)}")
    if shipped - package:
        problems.append(
            f"{path.name}: files that are not the package's: {sorted(shipped - package)}"
        )
    if dist_info + "licenses/LICENSE" not in names:
        problems.append(f"{path.name}: no {dist_info}licenses/LICENSE")
    return names


def main(argv: list[str]) -> int:
    """Check the distribution files in the directory named by ``argv[1]``.

    :param argv: the command line.
    :returns: the exit status: 0 when every check passed, else 1.
    """
    if len(argv) != 2:
        print(f"usage: {argv[0]} DIST_DIR", file=sys.stderr)
        return 2
    dist = Path(argv[1])
    version = dockerflow.__version__
    if not Path(dockerflow.__file__).resolve().is_relative_to(ROOT):
        print(f"dockerflow is imported from {dockerflow.__file__}, not {ROOT}", file=sys.stderr)
        return 1

    sdist = dist / f"{DIST_NAME}-{version}.tar.gz"
    wheel = dist / f"{DIST_NAME}-{version}-py3-none-any.whl"
    found = sorted(p.name for p in dist.iterdir())
    if found != sorted([sdist.name, wheel.name]):
        print(f"{dist}/ holds {found}, expected {sdist.name} and {wheel.name}", file=sys.stderr)
        return 1

    problems: list[str] = []
    sdist_names = check_sdist(sdist, version, problems)
    wheel_names = check_wheel(wheel, version, problems)
    print(f"{sdist.name}: {len(sdist_names)} files\n{per_directory(sdist_names)}")
    print(f"{wheel.name}: {len(wheel_names)} files\n{per_directory(wheel_names)}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
