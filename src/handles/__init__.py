"""handles: small, picklable specs for live resources in workflow tasks.

    spec = SqliteSpec(path="data/app.db")
    conn = spec.get()      # built once per process (or thread), then reused
    spec.cache_key()       # stable across processes, machines and runs

Importing handles imports no optional package (torch, spaCy, transformers,
SQLAlchemy, fsspec, Prefect, Dask): each kind imports what it needs in build().
"""

from handles._fields import Identity, Placement
from handles._kinds import known_kinds, load_kind, register_kind, spec_from_json
from handles._registry import KeyStats, Registry, override, registry
from handles._secrets import SecretRef
from handles._spec import Scope, Spec
from handles.exceptions import BuildError, HandlesError, MissingDependencyError, SpecError

__version__ = "0.1.0"

__all__ = [
    "BuildError",
    "HandlesError",
    "Identity",
    "KeyStats",
    "MissingDependencyError",
    "Placement",
    "Registry",
    "Scope",
    "SecretRef",
    "Spec",
    "SpecError",
    "known_kinds",
    "load_kind",
    "override",
    "register_kind",
    "registry",
    "spec_from_json",
]
