"""The public surface: exactly these names, and `import handles` stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import handles

PUBLIC = {
    "AsyncDatabaseSpec",
    "BuildError",
    "DatabaseSpec",
    "FileSpec",
    "HFPipelineSpec",
    "HandlesError",
    "Identity",
    "KeyStats",
    "LockTimeout",
    "MissingDependencyError",
    "Placement",
    "Registry",
    "Scope",
    "SecretRef",
    "Spec",
    "SpecError",
    "SpacySpec",
    "SqliteSpec",
    "TorchModelSpec",
    "known_kinds",
    "load_kind",
    "model_factory",
    "override",
    "register_kind",
    "registry",
    "require",
    "spec_from_json",
}
HEAVY = ["torch", "spacy", "transformers", "prefect", "sqlalchemy", "dask", "distributed", "fsspec"]


def test_all_is_exactly_the_public_names():
    assert set(handles.__all__) == PUBLIC
    assert handles.__all__ == sorted(handles.__all__, key=str)


def test_error_tree():
    assert issubclass(handles.SpecError, handles.HandlesError)
    assert issubclass(handles.SpecError, ValueError)
    assert issubclass(handles.BuildError, handles.HandlesError)
    assert issubclass(handles.MissingDependencyError, handles.HandlesError)
    assert issubclass(handles.MissingDependencyError, ImportError)


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
