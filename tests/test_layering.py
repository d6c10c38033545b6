"""The package's layers: no import circle, and the exceptions at the bottom.

The import graph is read from the source, every ``import`` counted wherever it stands: at module
level, inside a function (a lazy import) or under ``if TYPE_CHECKING:``. A circle hidden in a
function or in type hints still ties two modules together, and is one edit away from failing at
import time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import dockerflow

PACKAGE_DIR = Path(dockerflow.__file__).parent
ERRORS_MODULE = "dockerflow._errors"


def module_files(package_dir: Path) -> dict[str, Path]:
    """Every module of the package under ``package_dir``, by dotted name."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: Mapping[str, Path]) -> Iterator[tuple[str, str]]:
    """Yield (module imported, name imported from it) for every import of ``path``'s module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = next(iter(modules)).split(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == top:
                    yield alias.name, ""
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            if node.level:
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if base.split(".")[0] != top:
                continue
            for alias in node.names:
                # "from . import app" imports a module; "from .x import y" a name of x.
                submodule = f"{base}.{alias.name}"
                yield (submodule, "") if submodule in modules else (base, alias.name)


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    modules = module_files(package_dir)
    return {
        name: {target for target, _ in imports_of(name, path, modules)} - {name}
        for name, path in modules.items()
    }


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_circle() -> None:
    graph = import_graph(PACKAGE_DIR)
    assert {"dockerflow.flask._cli", "dockerflow.flask._extension"} <= set(graph)
    assert cycles(graph) == []


def test_a_circle_through_a_lazy_or_type_checking_import_is_found(tmp_path: Path) -> None:
    # The detector itself must be able to fail: the circle the CLI and the extension had.
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import ext\n")
    (package / "sub" / "ext.py").write_text("def init():\n    from ._cli import group\n")
    (package / "sub" / "_cli.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .ext import Ext\n"
    )
    (package / "plain.py").write_text("from .sub import ext\n")
    assert cycles(import_graph(package)) == [["pkg.sub._cli", "pkg.sub.ext"]]


def test_every_module_imports_first_and_alone() -> None:
    """Each module is imported first in a clean slate of the package: no import order matters."""
    names = sorted(module_files(PACKAGE_DIR))
    code = textwrap.dedent(
        f"""
        import importlib, sys, traceback
        failed = []
        for name in {names!r}:
            for loaded in [m for m in sys.modules if m.split(".")[0] == "dockerflow"]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception:
                failed.append(name + ": " + traceback.format_exc(limit=-3))
        print("\\n".join(failed) or "all imported")
        """
    )
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "all imported"


def test_the_exceptions_sit_at_the_bottom() -> None:
    modules = module_files(PACKAGE_DIR)
    assert ERRORS_MODULE in modules
    imported = list(imports_of(ERRORS_MODULE, modules[ERRORS_MODULE], modules))
    assert imported == [], "the exceptions module imports nothing of dockerflow"


@pytest.mark.parametrize(
    ("module", "not_loaded"),
    [
        ("dockerflow.version", ("dockerflow.engine", "dockerflow.integrations")),
        ("dockerflow.metrics", ("dockerflow.integrations",)),
    ],
)
def test_modules_do_not_import_a_layer_for_its_exceptions(
    module: str, not_loaded: tuple[str, ...]
) -> None:
    code = f"import sys, {module}\nprint(sorted(m for m in {not_loaded!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_exceptions_are_imported_from_the_bottom_module() -> None:
    """version.py, metrics.py and the integrations take dockerflow's exceptions from the bottom."""
    import importlib

    from dockerflow.engine import DockerflowError

    modules = module_files(PACKAGE_DIR)
    users = ["dockerflow.version", "dockerflow.metrics"] + [
        name for name in modules if name.startswith("dockerflow.integrations.")
    ]
    wrong = []
    for user in users:
        for source, name in imports_of(user, modules[user], modules):
            if not name or source == ERRORS_MODULE:
                continue
            obj = getattr(importlib.import_module(source), name)
            if isinstance(obj, type) and issubclass(obj, DockerflowError):
                wrong.append(f"{user}: {name} from {source}")
    assert wrong == []
