"""handles: small, picklable specs for live resources in workflow tasks.

    spec = SqliteSpec(path="data/app.db")
    conn = spec.get()      # built once per process (or thread), then reused
    spec.cache_key()       # stable across processes, machines and runs

Importing handles imports no optional package (torch, spaCy, transformers,
SQLAlchemy, fsspec, Prefect, Dask): each kind imports what it needs in build().
"""

from importlib import import_module as _import_module
from typing import TYPE_CHECKING as _TYPE_CHECKING

from handles._fields import Identity, Placement
from handles._kinds import BUILTIN as _BUILTIN_KINDS
from handles._kinds import known_kinds, load_kind, register_kind, spec_from_json
from handles._optional import require
from handles._registry import KeyStats, Registry, override, registry
from handles._secrets import SecretRef
from handles._spec import Scope, Spec
from handles.exceptions import (
    BuildError,
    HandlesError,
    LockTimeout,
    MissingDependencyError,
    PreflightError,
    SpecError,
)

if _TYPE_CHECKING:  # what the lazy exports resolve to, for type checkers (tested against the table)
    from handles.specs.async_database import AsyncDatabaseSpec
    from handles.specs.database import DatabaseSpec
    from handles.specs.file import FileSpec
    from handles.specs.hf import HFPipelineSpec
    from handles.specs.spacy import SpacySpec
    from handles.specs.sqlite import SqliteSpec
    from handles.specs.torch import TorchModelSpec, model_factory

__version__ = "0.1.0"

# Spec kinds are exported lazily: `from handles import SqliteSpec` imports only
# that kind's module, and no kind module imports its heavy packages at import time.
# The names come from the table of built-in kinds (handles._kinds.BUILTIN).
_LAZY = {info.class_name: info.module for info in _BUILTIN_KINDS.values()}
_LAZY["model_factory"] = "handles.specs.torch"


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'handles' has no attribute {name!r}")
    value = getattr(_import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
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
    "PreflightError",
    "Registry",
    "Scope",
    "SecretRef",
    "SpacySpec",
    "Spec",
    "SpecError",
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
]
