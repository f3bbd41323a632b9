"""The registry's modules import one way, and no module of the library grows past ~700 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import handles

SRC = Path(handles.__file__).parent
# Lowest first: a module may import (at run time) only modules listed before it.
LAYERS = ["entries", "policy", "refs", "flight", "buckets", "loops", "core", "__init__"]


def _runtime_imports(path: Path) -> set[str]:
    """handles._registry.* modules imported outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and id(node) not in type_only:
            module = node.module or ""
            if module.startswith("handles._registry."):
                found.add(module.rsplit(".", 1)[1])
            elif module == "handles._registry":
                found.update(alias.name for alias in node.names if alias.name in LAYERS)
    return found


def test_registry_modules_import_one_way():
    for index, name in enumerate(LAYERS):
        imported = _runtime_imports(SRC / "_registry" / f"{name}.py")
        later = imported & set(LAYERS[index:])
        assert not later, f"_registry/{name}.py imports {sorted(later)}, which sit above it"


def test_every_registry_module_is_listed():
    files = {p.stem for p in (SRC / "_registry").glob("*.py")}
    assert files == set(LAYERS)


def test_no_library_module_passes_700_lines():
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 700
    }
    assert long == {}
