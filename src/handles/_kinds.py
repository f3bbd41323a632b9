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

import functools
import importlib
import json
import sys
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from handles._keys import refuse_unkeyable_fields
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
    usage: str = "..."
    """The fields to show in a hint: "path=..." reads as `SqliteSpec(path=...)`."""
    live_types: Mapping[str, str] = field(default_factory=dict)
    """Live objects this kind replaces: "module.Class" (as in the type's MRO) -> words."""
    page: str | None = None
    """Its page under docs/kinds/, for the docs' navigation and reference."""

    @property
    def class_name(self) -> str:
        return self.target.rpartition(":")[2]

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    def example(self) -> str:
        """How a user writes a spec of this kind, for hints: `SqliteSpec(path=...)`."""
        return f"{self.class_name}({self.usage})"

    def needs(self) -> str:
        """One line for people: the install command, the note, or "" when nothing is needed."""
        if self.extra is not None:
            return f'pip install "{DISTRIBUTION}[{self.extra}]"'
        return self.note or ""


# The built-in kinds: the one place a built-in kind is listed. Lazy exports of
# `handles`, install hints, preflight's hints for live objects, the docs'
# navigation and reference, and the check that every kind has a contract case
# are derived from this table (tests/test_public_api.py keeps the static
# re-exports type checkers read in step with it).
BUILTIN: Mapping[str, KindInfo] = MappingProxyType(
    {
        "sqlite": KindInfo(
            "handles.specs.sqlite:SqliteSpec",
            note=f'standard library only; .engine() needs pip install "{DISTRIBUTION}[sql]"',
            usage="path=...",
            live_types={
                "sqlite3.Connection": "a sqlite3 connection",
                "sqlite3.Cursor": "a sqlite3 cursor",
            },
            page="sqlite.md",
        ),
        "database": KindInfo(
            "handles.specs.database:DatabaseSpec",
            "sql",
            usage="url=...",
            live_types={
                "sqlalchemy.engine.base.Engine": "a SQLAlchemy Engine",
                "sqlalchemy.engine.base.Connection": "a SQLAlchemy Connection",
                "sqlalchemy.orm.session.Session": "a SQLAlchemy Session",
            },
            page="database.md",
        ),
        "async-database": KindInfo(
            "handles.specs.async_database:AsyncDatabaseSpec",
            "sql",
            usage="url=...",
            live_types={
                "sqlalchemy.ext.asyncio.engine.AsyncEngine": "a SQLAlchemy AsyncEngine",
                "sqlalchemy.ext.asyncio.session.AsyncSession": "a SQLAlchemy AsyncSession",
            },
            page="async-database.md",
        ),
        "file": KindInfo(
            "handles.specs.file:FileSpec",
            "file",
            live_types={"io.IOBase": "an open file"},
            page="file.md",
        ),
        "torch": KindInfo(
            "handles.specs.torch:TorchModelSpec",
            "torch",
            live_types={"torch.nn.modules.module.Module": "a torch module"},
            page="torch.md",
        ),
        "spacy": KindInfo(
            "handles.specs.spacy:SpacySpec",
            "spacy",
            live_types={"spacy.language.Language": "a spaCy pipeline"},
            page="spacy.md",
        ),
        "hf-pipeline": KindInfo(
            "handles.specs.hf:HFPipelineSpec",
            "hf",
            live_types={"transformers.pipelines.base.Pipeline": "a transformers pipeline"},
            page="hf.md",
        ),
    }
)
_known: dict[str, KindInfo] = dict(BUILTIN)
_classes: dict[str, type[Spec[Any]]] = {}
_lock = threading.Lock()
_spec_classes: weakref.WeakSet[type] = weakref.WeakSet()
# From register_class up to cloudpickle's class factory: the metaclass, pydantic's
# __init_subclass__ hooks and types.new_class lie between, a dozen frames at most.
_SKELETON_FRAMES = 24


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
    builtin = BUILTIN.get(name)
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
    """Called for every Spec subclass as it is defined; those naming a kind become known.

    A field type with no canonical JSON form is a TypeError here (handles._keys).
    """
    refuse_unkeyable_fields(cls)
    _spec_classes.add(cls)
    name = cls.model_fields["kind"].default
    if not isinstance(name, str):
        return  # a base for kinds, not a kind
    if _inherits_kind(cls, name) and _rebuilt_by_cloudpickle():
        # cloudpickle makes a class by value in two steps: an empty class on the
        # same bases (defined here, so it inherits its base's kind), then its own
        # namespace, `kind` included, set on it. The first step is no claim to
        # the base's name; the class it becomes is the one already known, or
        # (in a fresh process) one that arrives with its specs.
        return
    builtin = BUILTIN.get(name)
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


def _inherits_kind(cls: type, name: str) -> bool:
    """Whether `cls` declares no kind of its own: a base class already named `name`."""
    return any(
        base in _spec_classes and base.model_fields["kind"].default == name  # type: ignore[attr-defined]
        for base in cls.__mro__[1:]
    )


def _rebuilt_by_cloudpickle() -> bool:
    """Whether the class being defined is cloudpickle's skeleton of a class pickled by value.

    Its `_make_skeleton_class` (also in Ray's vendored copy) defines the class;
    nothing else about the empty class tells it from `class Sub(Kind): pass`.
    """
    frame = sys._getframe(1)
    for _ in range(_SKELETON_FRAMES):
        if frame is None:
            return False
        if frame.f_code.co_name == "_make_skeleton_class" and "cloudpickle" in str(
            frame.f_globals.get("__name__")
        ):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _rebuilt_here(name: str) -> type[Spec[Any]] | None:
    """A public class named `name` that cloudpickle rebuilt in this process, now registered.

    In a process that never defined it, a kind pickled by value arrives as a
    class defined empty (see register_class) whose `kind` was set afterwards:
    known from its first use by name, as a class defined here is.
    """
    if name in BUILTIN:
        return None
    for cls in list(_spec_classes):
        if (
            cls.model_fields["kind"].default == name  # type: ignore[attr-defined]
            and not cls.__name__.startswith("_")
            and not _inherits_kind(cls, name)
        ):
            with _lock:
                return _classes.setdefault(name, cls)
    return None


def load_kind(name: str) -> type[Spec[Any]]:
    """The Spec class for `name`, importing its module if needed."""
    cls = _classes.get(name) or _rebuilt_here(name)  # built-in names mean built-in classes
    if cls is not None:
        return cls
    info = _known.get(name)
    if info is None:
        _load_entry_points()
        info = _known.get(name)
    if info is None:
        known = ", ".join(sorted(known_kinds())) or "none"
        raise SpecError.one("Spec", "kind", f"unknown kind {name!r}; known kinds: {known}")
    try:
        module = importlib.import_module(info.module)
    except ModuleNotFoundError as exc:
        # Only a module that is not installed is a missing dependency; any other
        # ImportError (a name a module lacks, a broken binary) is a bug to see as is.
        if info.extra is None or exc.name is None:
            raise
        raise MissingDependencyError(exc.name, info.extra, kind=info.class_name) from exc
    return _checked(name, info.target, getattr(module, info.class_name, None))


def _checked(name: str, target: str, loaded: Any) -> type[Spec[Any]]:
    """`loaded` if it is a public Spec class whose kind is `name`; else a SpecError."""
    # Importing a module defines its classes, and every Spec class defined
    # registers itself (register_class): no import of the Spec base needed here.
    if loaded is None:
        problem = "not found"
    elif loaded not in _spec_classes:
        problem = f"a {type(loaded).__name__}, not a Spec class"
    elif loaded.__name__.startswith("_"):
        problem = "an internal class (its name starts with '_'), never loaded by name"
    elif _classes.get(name) is not loaded:
        problem = f"a spec class whose kind is {loaded.model_fields['kind'].default!r}"
    else:
        return cast("type[Spec[Any]]", loaded)
    raise SpecError.one("Spec", "kind", f"kind {name!r} names {target}: {problem}")


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


@functools.cache  # once per process: installed distributions do not change under us
def _load_entry_points() -> None:
    found = entry_points(group=ENTRY_POINT_GROUP)
    with _lock:
        for ep in found:
            _known.setdefault(ep.name, KindInfo(ep.value))
