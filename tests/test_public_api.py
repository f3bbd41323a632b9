"""The public surface: exactly these names, and `import handles` stays light."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import types
from pathlib import Path

import handles
from handles._kinds import BUILTIN

HEAVY = ["torch", "spacy", "transformers", "prefect", "sqlalchemy", "dask", "distributed", "fsspec"]


def test_all_is_exactly_the_public_names():
    # As httpx does: every public name in the module's namespace is in __all__,
    # and nothing else. Lazy exports join the namespace once resolved.
    for name in dir(handles):
        getattr(handles, name)
    public = sorted(
        name
        for name, value in vars(handles).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    )
    assert handles.__all__ == public


def test_every_builtin_kind_is_exported_lazily_and_typed():
    # The table of built-in kinds is the one list; the static re-exports that type
    # checkers read (under TYPE_CHECKING in __init__.py) must say the same.
    expected = {(info.module, info.class_name) for info in BUILTIN.values()}
    expected.add(("handles.specs.torch", "model_factory"))
    assert {(module, name) for name, module in handles._LAZY.items()} == expected
    tree = ast.parse(Path(handles.__file__).read_text())
    typed = {
        (node.module, alias.name)
        for stmt in tree.body
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test)
        for node in stmt.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert typed == expected
    assert {info.class_name for info in BUILTIN.values()} <= set(handles.__all__)


def test_error_tree():
    assert issubclass(handles.SpecError, handles.HandlesError)
    assert issubclass(handles.SpecError, ValueError)
    assert issubclass(handles.BuildError, handles.HandlesError)
    assert issubclass(handles.MissingDependencyError, handles.HandlesError)
    assert issubclass(handles.MissingDependencyError, ImportError)
    assert issubclass(handles.LockTimeout, handles.HandlesError)
    assert issubclass(handles.LockTimeout, TimeoutError)
    assert issubclass(handles.PreflightError, handles.HandlesError)
    assert issubclass(handles.PreflightError, TypeError)
    documented = handles.exceptions.__doc__ or ""
    for name in handles.exceptions.__all__:
        assert f"── {name}" in documented or name == "HandlesError", name


def test_import_handles_imports_no_optional_package():
    script = (
        "import sys, json, handles\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_importing_every_spec_class_stays_light():
    # Spec modules import their packages inside build(), so naming a kind is cheap.
    names = sorted(handles._LAZY)
    script = (
        "import sys, json, importlib, handles\n"
        f"for name, module in {handles._LAZY!r}.items():\n"
        "    try:\n"
        "        importlib.import_module(module)\n"
        "    except ModuleNotFoundError as exc:\n"
        "        if exc.name != module: raise\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [], names
