"""Spec kinds by name: "sqlite" -> handles.specs.sqlite:SqliteSpec, imported on first use.

A kind is known from three places, checked in this order:
1. classes already defined in this process (every public Spec subclass with a `kind`);
2. the table below and `register_kind()`, each with an install hint;
3. the `handles.kinds` entry-point group, for third-party packages.

Only these can be rebuilt from JSON: a spec read from untrusted input can never
name an arbitrary module to import. Two rules keep that table honest:

- Built-in names always mean the built-in class. A class of any other module
  that declares a built-in name (`kind="sqlite"`) is a TypeError at once, when
  it is defined, whether or not the built-in module was imported before it.
- Private classes (names starting with "_", such as the SQLite kind's internal
  engine and lock specs) are never known by name: not loadable from JSON, not
  listed. They still work, and pickle, as ordinary classes.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from handles.exceptions import DISTRIBUTION, MissingDependencyError, SpecError

if TYPE_CHECKING:
    from handles._spec import Spec

ENTRY_POINT_GROUP = "handles.kinds"


@dataclass(frozen=True)
class KindInfo:
    """Where a kind's class lives and what installs what it needs."""

    target: str
    """"package.module:ClassName", imported on first use."""
    extra: str | None = None
    """The handle-specs extra that installs its packages (`pip install "handle-specs[extra]"`)."""
    note: str | None = None
    """What it needs, said in words, where no extra says it."""

    def needs(self) -> str:
        """One line for people: the install command, the note, or "" when nothing is needed."""
        if self.extra is not None:
            return f'pip install "{DISTRIBUTION}[{self.extra}]"'
        return self.note or ""


_BUILTIN: dict[str, KindInfo] = {
    "sqlite": KindInfo(
        "handles.specs.sqlite:SqliteSpec",
        note=f'standard library only; .engine() needs pip install "{DISTRIBUTION}[sql]"',
    ),
    "database": KindInfo("handles.specs.database:DatabaseSpec", "sql"),
    "async-database": KindInfo("handles.specs.async_database:AsyncDatabaseSpec", "sql"),
    "file": KindInfo("handles.specs.file:FileSpec", "file"),
    "torch": KindInfo("handles.specs.torch:TorchModelSpec", "torch"),
    "spacy": KindInfo("handles.specs.spacy:SpacySpec", "spacy"),
    "hf-pipeline": KindInfo("handles.specs.hf:HFPipelineSpec", "hf"),
}
_known: dict[str, KindInfo] = dict(_BUILTIN)
_classes: dict[str, type[Spec[Any]]] = {}
_lock = threading.Lock()
_entry_points_loaded = False


def known_kinds() -> Mapping[str, KindInfo]:
    """Every kind that can be loaded by name (read-only)."""
    _load_entry_points()
    with _lock:
        merged = dict(_known)
        for name, cls in _classes.items():
            merged.setdefault(name, KindInfo(_target(cls)))
    return MappingProxyType(merged)


def register_kind(
    name: str, target: str, *, extra: str | None = None, clobber: bool = False
) -> None:
    """Make kind `name` loadable from "module:Class" (imported lazily, on first use)."""
    if ":" not in target:
        raise ValueError(f"kind target must look like 'package.module:Class', got {target!r}")
    builtin = _BUILTIN.get(name)
    if builtin is not None:
        if builtin.target != target:
            raise ValueError(f"kind {name!r} is built in ({builtin.target}); choose another name")
        return
    with _lock:
        current = _known.get(name)
        if current is not None and current.target != target and not clobber:
            raise ValueError(
                f"kind {name!r} is already registered to {current.target}; "
                "pass clobber=True to replace it"
            )
        _known[name] = KindInfo(target, extra)


def register_class(cls: type[Spec[Any]]) -> None:
    """Called for every concrete Spec subclass as it is defined."""
    name = cls.model_fields["kind"].default
    builtin = _BUILTIN.get(name)
    if builtin is not None and builtin.target != _target(cls):
        raise TypeError(
            f"spec kind {name!r} is built in ({builtin.target}); "
            f"{_target(cls)} must declare a kind name of its own"
        )
    if cls.__name__.startswith("_"):
        return  # private: never known by name (see the module docstring)
    with _lock:
        current = _classes.get(name)
        if current is not None and _target(current) != _target(cls):
            raise TypeError(
                f"spec kind {name!r} is already defined by "
                f"{current.__module__}.{current.__qualname__}"
            )
        _classes[name] = cls


def load_kind(name: str) -> type[Spec[Any]]:
    """The Spec class for `name`, importing its module if needed."""
    cls = _classes.get(name)  # register_class keeps built-in names for built-in classes
    if cls is not None:
        return cls
    info = _known.get(name)
    if info is None:
        _load_entry_points()
        info = _known.get(name)
    if info is None:
        known = ", ".join(sorted(known_kinds())) or "none"
        raise SpecError.one("Spec", "kind", f"unknown kind {name!r}; known kinds: {known}")
    module_name, _, class_name = info.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if info.extra is None:
            raise
        raise MissingDependencyError(exc.name or module_name, info.extra, kind=name) from exc
    return _checked(name, info.target, getattr(module, class_name, None))


def _checked(name: str, target: str, loaded: Any) -> type[Spec[Any]]:
    """`loaded` if it is a public Spec class whose kind is `name`; else a SpecError."""
    from handles._spec import Spec

    if not (isinstance(loaded, type) and issubclass(loaded, Spec)):
        problem = "not found" if loaded is None else f"a {type(loaded).__name__}, not a Spec class"
        raise SpecError.one("Spec", "kind", f"kind {name!r} names {target}: {problem}")
    declared = loaded.model_fields["kind"].default
    if declared != name or loaded.__name__.startswith("_"):
        raise SpecError.one(
            "Spec", "kind", f"kind {name!r} names {target}, whose kind is {declared!r}"
        )
    return loaded


def _target(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def spec_from_json(data: str | bytes | Mapping[str, Any]) -> Spec[Any]:
    """Rebuild any registered spec from its JSON (or the dict JSON decodes to)."""
    try:
        if isinstance(data, str | bytes):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise SpecError.one("Spec", "", f"not valid JSON: {exc}") from None
        if not isinstance(data, Mapping):
            raise SpecError.one("Spec", "", f"a spec is a JSON object, got {type(data).__name__}")
        kind = data.get("kind")
        if not isinstance(kind, str):
            raise SpecError.one("Spec", "kind", "missing: every spec's JSON names its kind")
        return load_kind(kind).model_validate(dict(data))
    except RecursionError:
        # Deeply nested input exhausts the parser's or the validator's stack.
        raise SpecError.one("Spec", "", "nested too deeply to be a spec") from None


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    found = entry_points(group=ENTRY_POINT_GROUP)
    with _lock:
        for ep in found:
            _known.setdefault(ep.name, KindInfo(ep.value))
        _entry_points_loaded = True
