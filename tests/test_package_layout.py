"""How the Python package hangs together, without a server: its modules import
each other without a circle (counting imports made inside functions), and
``cog`` is ``cogd`` under Cog's name with one version."""

from __future__ import annotations

import ast
from pathlib import Path

import cog
import cogd

PACKAGE = Path(cogd.__file__).parent


def imports_of(path: Path) -> set[str]:
    """The ``cogd`` submodules a module imports, anywhere in its code."""
    found: set[str] = set()
    submodules = {p.stem for p in PACKAGE.glob("*.py")}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "cogd":
                found.update(f"cogd.{a.name}" for a in node.names if a.name in submodules)
            elif node.module.startswith("cogd."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("cogd."))
    return found


def test_the_modules_import_each_other_without_a_circle() -> None:
    graph = {
        f"cogd.{path.stem}": imports_of(path)
        for path in PACKAGE.glob("*.py")
        if path.stem != "__init__"
    }
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            circle = " -> ".join([*trail[trail.index(module) :], module])
            raise AssertionError(f"import circle: {circle}")
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_type_tree_and_loading_stand_below_the_schema_and_the_runner() -> None:
    assert imports_of(PACKAGE / "signature.py") <= {"cogd.types"}
    assert "cogd.schema" not in imports_of(PACKAGE / "coercion.py")
    assert not imports_of(PACKAGE / "loader.py") & {"cogd.schema", "cogd.runner"}


def test_cog_is_cogd_under_cogs_name_with_one_version() -> None:
    from cogd import _native

    assert cogd.__version__ == cog.__version__ == _native.__version__
    assert all(getattr(cog, name) is getattr(cogd, name) for name in cogd.__all__)
