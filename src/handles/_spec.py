"""The spec base: a frozen pydantic model that describes a live object and gets it.

A kind subclasses `Spec`, names itself, marks its fields, and says how to build
and close its object::

    class SqliteSpec(Spec[sqlite3.Connection]):
        kind: Literal["sqlite"] = "sqlite"
        scope: ClassVar[Scope] = "thread"
        path: Annotated[str, Identity]
        timeout: Annotated[float, Placement] = 5.0

        def build(self) -> sqlite3.Connection: ...
        def teardown(self, value: sqlite3.Connection) -> None: ...
"""

from __future__ import annotations

import threading
from collections.abc import KeysView, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    ModelWrapValidatorHandler,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    model_serializer,
    model_validator,
)

from handles import _allow, _kinds, _trust
from handles._fields import mark_roles, split_roles
from handles._keys import canonical, digest, unkeyable
from handles._registry import NO_ENTRY, registry
from handles.exceptions import SpecError

__all__ = ["Scope", "Spec"]

T = TypeVar("T")
Scope = Literal["process", "thread", "loop"]

# Bump when the canonical form itself changes, so old persisted keys stop matching.
KEY_FORMAT = 1


class Spec(BaseModel, Generic[T]):
    """Configuration for a live object of type `T`; `get()` returns the object.

    Specs are frozen, equal by value, picklable, and dump to canonical JSON: equal
    specs dump identically in every process, which is what Prefect's default cache
    policy hashes.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        validate_default=True,
        hide_input_in_errors=True,  # inputs may hold secrets
        json_schema_extra=mark_roles,  # every field says its role, marked or not
        revalidate_instances="never",
    )
    # Per-instance caches, outside the model's fields so they never reach JSON,
    # pickle, equality or copies.
    __slots__ = ("_handles_hash", "_handles_ikey", "_handles_key", "get")
    if TYPE_CHECKING:
        _handles_hash: int
        _handles_ikey: str
        _handles_key: str

    scope: ClassVar[Scope] = "process"
    """`process`: one object per process; `thread`: one per thread; `loop`: one per event loop."""
    schema_version: ClassVar[int] = 1
    """Bump in a kind when the meaning of its fields changes; moves every key."""
    identity_fields: ClassVar[tuple[str, ...]] = ()
    placement_fields: ClassVar[tuple[str, ...]] = ()

    kind: str

    # -- construction -----------------------------------------------------------

    def __init__(self, /, **data: Any) -> None:
        # What BaseModel.__init__ does, marked trusted: Python code made this spec.
        # Validation from data (JSON, dicts, Prefect parameters) is untrusted
        # unless its caller says otherwise: see handles._trust.
        try:
            self.__pydantic_validator__.validate_python(
                data, self_instance=self, context=_trust.TRUSTED
            )
        except ValidationError as exc:
            raise SpecError.from_validation(type(self).__name__, exc) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise SpecError.from_validation(cls.__name__, exc) from None

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Self:
        try:
            return super().model_validate_json(json_data, **kwargs)
        except ValidationError as exc:
            raise SpecError.from_validation(cls.__name__, exc) from None

    def replace(self, **changes: Any) -> Self:
        """A validated copy with `changes` applied (unlike `model_copy`, which skips validation)."""
        return self.model_validate({**self.model_dump(), **changes}, context=_trust.TRUSTED)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unkeyable(cls, data: Any) -> Any:
        # Before any field validator: a lone surrogate, NaN or 5,000-deep list
        # would otherwise fail later, in cache_key(), get() or a JSON dump.
        if isinstance(data, dict):
            found = unkeyable(data)
            if found is not None:
                where, why = found
                field, _, inner = where.partition(".")
                raise SpecError.one(cls.__name__, field, f"{inner} {why}" if inner else why)
        return data

    @model_validator(mode="wrap")
    @classmethod
    def _check_trust(
        cls, data: Any, handler: ModelWrapValidatorHandler[Self], info: ValidationInfo
    ) -> Self:
        # From untrusted data, secret references and whatever the kind lists
        # need the worker's consent: every problem in one error. A spec instance
        # passing through validation again (a flow parameter given one in Python,
        # model_validate(spec), a TypeAdapter) was made by code: it stays trusted.
        spec = handler(data)
        if isinstance(data, Spec) or not _trust.untrusted(info):
            return spec
        problems = [
            *_trust.secret_problems(dict(spec)),
            *_allow.path_problems(_allow.declared_paths(spec)),
            *spec._untrusted_problems(),
        ]
        if problems:
            raise SpecError(cls.__name__, problems)
        return spec

    def _untrusted_problems(self) -> list[tuple[str, str]]:
        """(field, message) for each thing this spec may not do when read from JSON.

        Kinds that reach hosts or run code add theirs (see handles._trust).
        """
        return []

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls.identity_fields, cls.placement_fields = split_roles(
            {n: f for n, f in cls.model_fields.items() if n != "kind"}
        )
        _kinds.register_class(cls)

    # A spec is one value. Prefect's `task.map()` maps over every iterable argument,
    # and a pydantic model iterates its fields, so a spec would be split into
    # (name, value) pairs: specs are not iterable. `dict(spec)`, which Prefect's
    # traversal of task inputs relies on, still works through keys() and [].
    __iter__ = None  # type: ignore[assignment]

    def keys(self) -> KeysView[str]:
        """The field names, so that `dict(spec)` gives {field: value} as for any model."""
        return self.__dict__.keys()

    def __getitem__(self, name: str) -> Any:
        return self.__dict__[name]

    def __getattr__(self, name: str) -> Any:
        # `get` is a slot holding this instance's _Getter.get, made on first use
        # (after construction, copy or unpickling alike). See _Getter for why.
        if name == "get":
            getters: dict[str, type[_Getter | _ThreadGetter | _LoopGetter]] = {
                "thread": _ThreadGetter,
                "loop": _LoopGetter,
            }
            getter = getters.get(self.scope, _Getter)(self).get
            object.__setattr__(self, "get", getter)
            return getter
        return super().__getattr__(name)  # type: ignore[misc]

    @model_serializer(mode="wrap")
    def _canonical_dump(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Sorted mappings and sets, posix paths, decimals and datetimes in one form
        # (walked beside the values they came from), so two equal specs dump to
        # the same bytes in every process and hash seed (Prefect hashes this dump).
        return canonical(handler(self), self)

    # -- the live object ------------------------------------------------------

    if TYPE_CHECKING:

        def get(self) -> T:
            """The live object: built on first use in this process (or thread), then reused."""
            ...

    def use(self) -> AbstractContextManager[T]:
        """The live object, held for the block: eviction and `close()` wait for its end.

        `get()` objects are safe too while a caller holds a reference; `use()` also
        keeps the registry from choosing this object to evict while the block runs.
        """
        return registry().use(self)

    async def aget(self) -> T:
        """`get()` for coroutines: a build never blocks the event loop.

        Process and thread scope: the same object `get()` returns (a process-scoped
        build runs in a worker thread, single-flight with every other caller).
        Loop scope: this event loop's object, built once per loop with `abuild()`
        and closed with `ateardown()` when the loop shuts down.
        """
        if self.scope == "process":
            entry = self.get.__self__.entry  # type: ignore[attr-defined]  # the _Getter
            value = entry.value  # before the ok check: see handles._registry
            if entry.ok:
                entry.hits += 1
                return value  # type: ignore[no-any-return]
        return await registry().aget(self)

    async def abuild(self) -> T:
        """Create the live object on the running event loop (loop scope). Defaults to `build()`."""
        return self.build()

    async def ateardown(self, value: T) -> None:
        """Release a loop-scoped object on its own loop. Defaults to `teardown()`."""
        self.teardown(value)

    def build(self) -> T:
        """Create the live object. Kinds override; called once per process (or thread)."""
        raise NotImplementedError(f"{type(self).__name__} does not define build()")

    def teardown(self, value: T) -> None:
        """Release the live object. The default calls its `close()` if it has one."""
        close = getattr(value, "close", None)
        if callable(close):
            close()

    def nbytes(self, value: T) -> Mapping[str, int] | None:
        """Memory the live object holds, by device: "cpu" for host memory, "cuda:0", ...

        Called once after each build, for `stats()` and the registry's memory
        budgets (`max_bytes`, `max_device_bytes`). None (the default): unknown.
        """
        return None

    def fingerprint(self) -> Any:
        """JSON data describing the content behind the spec, or None; part of `cache_key()`.

        For content a user may change in place (a file's checksum, ETag, or size
        and mtime), kinds return it only when the user asked for content tracking.
        For facts that name the content (a pipeline's name and version from its
        meta), a kind may always return them.
        """
        return None

    def live_identity(self) -> Any:
        """JSON data naming the live object, where many specs share one; None (default): not shared.

        By default each spec's object is its own, named by its cache key and
        placement. A kind whose object serves many specs returns what names that
        object, and the registry keeps one entry for all of them: FileSpec returns
        its filesystem (protocol, options, secret references), so the files of one
        bucket are one filesystem and one registry entry, while each file keeps its
        own `cache_key()`. Whatever can change the object must be in it.
        """
        return None

    def attached(self, value: T) -> None:
        """Called when `get()` first serves this spec an object built for another spec.

        Only for kinds that share objects (`live_identity()`): the first spec's
        build checked what it needed (FileSpec: that its file exists); this checks
        the same for this spec, on the object already built. Raise to refuse; the
        object stays live for the specs it serves.
        """

    def _checked_fingerprint(self) -> Any:
        # A path no file system accepts (a 300-character name: ENAMETOOLONG) or
        # cannot read fails here, in cache_key(): a SpecError naming the field.
        try:
            return self.fingerprint()
        except OSError as exc:
            name = str(exc.filename) if exc.filename is not None else ""
            values = [(f, v) for f, v in self.__dict__.items() if name and isinstance(v, str) and v]
            field = next((f for f, v in values if name.startswith(v) or v.startswith(name)), "")
            reason = exc.strerror or type(exc).__name__
            raise SpecError.one(
                type(self).__name__, field, f"cannot read {name!r} for the key: {reason}"
            ) from None

    # -- keys -----------------------------------------------------------------

    def cache_key(self) -> str:
        """Stable hex digest of kind, schema version and identity fields.

        The same in every process, machine, run and hash seed; placement fields
        never enter it. Computed once per instance.
        """
        try:
            return self._handles_key
        except AttributeError:
            pass
        # Outside the except block, so an error here is not chained to the miss.
        return self._compute_keys(keys_only=True)[0]

    def identity(self) -> dict[str, Any]:
        """The identity fields as JSON data: exactly what `cache_key()` hashes besides kind."""
        return self._roles_json()[0]

    def placement(self) -> dict[str, Any]:
        """The placement fields as JSON data: where and how the object lives."""
        return self._roles_json()[1]

    def _instance_key(self) -> str:
        # The registry's key: identity and placement, since a model on cuda:0 is
        # a different live object from the same model on cpu.
        try:
            return self._handles_ikey
        except AttributeError:
            pass
        return self._compute_keys()[1]

    def _roles_json(self) -> tuple[dict[str, Any], dict[str, Any]]:
        dumped = self.model_dump(mode="json")
        return (
            {name: dumped[name] for name in self.identity_fields},
            {name: dumped[name] for name in self.placement_fields},
        )

    def _compute_keys(self, *, keys_only: bool = False) -> tuple[str, str]:
        # Both keys from one dump and one fingerprint, cached on the instance.
        identity, placement = self._roles_json()
        try:
            key = self._handles_key
        except AttributeError:
            payload: dict[str, Any] = {
                "format": KEY_FORMAT,
                "kind": self.kind,
                "schema": self.schema_version,
                "identity": identity,
            }
            content = self._checked_fingerprint()
            if content is not None:
                payload["content"] = content
            key = digest(payload)
            object.__setattr__(self, "_handles_key", key)
        # Kinds that share live objects name them only when the registry asks:
        # cache_key() must not need what naming the object needs (fsspec, say).
        shares = type(self).live_identity is not Spec.live_identity
        if shares and keys_only:
            return key, ""
        shared = self.live_identity() if shares else None
        if shared is None:
            instance_key = digest({"cache_key": key, "placement": placement})
        else:  # one live object for every spec that names the same one
            instance_key = digest({"kind": self.kind, "live": shared})
        object.__setattr__(self, "_handles_ikey", instance_key)
        return key, instance_key

    def __hash__(self) -> int:
        try:
            return self._handles_hash
        except AttributeError:
            pass

        # Python's hash of the dump's data, not of its text: == (pydantic's, by
        # field values) holds 1 == 1.0 == True where the dump keeps them apart,
        # and equal specs must hash equal.
        def hashable(data: Any) -> Any:
            if isinstance(data, dict):
                return frozenset((k, hashable(v)) for k, v in data.items())
            if isinstance(data, list):
                return tuple(hashable(v) for v in data)
            return data

        value = hash((type(self), hashable(self.model_dump(mode="json"))))
        object.__setattr__(self, "_handles_hash", value)
        return value


class _Getter:
    """`spec.get` for one spec instance.

    The warm path is the whole point of handles, and on a pydantic model every
    attribute read goes through BaseModel.__getattr__'s slower lookup. Storing
    this bound method in the instance's `get` slot makes `spec.get()` one such
    lookup plus a call on a plain slotted object: measured in bench/bench_core.py.
    The remembered entry stops being `ok` when it is closed, evicted, inherited
    across fork or shadowed by an override, which sends the call to the registry.
    """

    __slots__ = ("entry", "spec")

    def __init__(self, spec: Spec[Any]) -> None:
        self.spec = spec
        self.entry: Any = NO_ENTRY  # an _Entry, or NO_ENTRY (never ok)

    def get(self) -> Any:
        entry = self.entry
        value = entry.value  # before the ok check: see handles._registry
        if entry.ok:
            entry.hits += 1
            return value
        value, self.entry = registry().lookup(self.spec)
        return value


class _LoopGetter:
    """`spec.get` for a loop-scoped spec: this event loop's object, from the registry."""

    __slots__ = ("spec",)

    def __init__(self, spec: Spec[Any]) -> None:
        self.spec = spec

    def get(self) -> Any:
        return registry().get(self.spec)


class _ThreadGetter:
    """`spec.get` for a thread-scoped spec: remembers one entry per thread."""

    __slots__ = ("local", "spec")

    def __init__(self, spec: Spec[Any]) -> None:
        self.spec = spec
        self.local = threading.local()

    def get(self) -> Any:
        entry = getattr(self.local, "entry", NO_ENTRY)
        if entry.ok:  # only this thread tears its own objects down
            entry.hits += 1
            return entry.value
        value, self.local.entry = registry().lookup(self.spec)
        return value
