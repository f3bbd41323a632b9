"""Preflight: find task inputs a task runner cannot ship or Prefect cannot hash, before submitting.

Process pools and Dask pickle every argument into the worker; Prefect's cache
policies hash every argument (JSON first, cloudpickle second). A live object
(lock, connection, generator, open file) fails deep inside either, far from the
call that passed it. `check_inputs()` finds each offending object and names the
attribute path to it, e.g. ``args[0].engine.pool._lock: RLock``; where the object
is a known live resource, it also names the spec to pass instead.

    findings = check_inputs((conn, 3), {"nlp": nlp})
    for finding in findings:
        print(finding)

The `preflight` decorator (in `handles.integrations.prefect`) runs this check
before a Prefect task is submitted.
"""

from __future__ import annotations

import collections
import collections.abc
import functools
import io
import pickle
import sqlite3
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from handles._kinds import BUILTIN
from handles._optional import require
from handles._spec import Spec
from handles.exceptions import PreflightError
from handles.integrations._forgive import AsLive

__all__ = ["Finding", "PreflightError", "check_inputs", "check_value"]

Pickler = Literal["cloudpickle", "pickle"]

# How far, and how wide, the search for the offending attribute goes. A failing
# object past these limits is reported itself, which is still a correct answer.
MAX_DEPTH = 12
MAX_CHILDREN = 500
# Objects looked at, at most, to find an iterator inside one argument.
MAX_ITERATOR_SEARCH = 10_000

# Prefect hashes inputs as JSON first, and its encoder turns any iterator into a
# list: a generator given to a task whose inputs are hashed arrives exhausted,
# and an endless one never finishes hashing. So iterators are found by looking,
# never by trying to hash them, and a check never consumes an argument.
ITERATOR_REASON = (
    "is an iterator: hashing the inputs for the cache key consumes it, so the task would "
    "receive it exhausted (an endless one never finishes hashing)"
)
ITERATOR_HINT = "pass a list instead, or leave this argument out of the cache key"

# Live resources that have a spec: "module.Class" anywhere in the type's MRO ->
# (what it is, the spec to pass instead), from the table of built-in kinds.
# Matched by name, so checking an argument never imports torch, spaCy,
# transformers or SQLAlchemy.
LIVE_TYPES: Mapping[str, tuple[str, str]] = {
    type_name: (words, info.example())
    for info in BUILTIN.values()
    for type_name, words in info.live_types.items()
}


@dataclass(frozen=True)
class Finding:
    """One task input (or part of one) that would fail or misbehave in a task runner.

    `path` locates it from the call (``args[0].engine.pool._lock``), `type_name`
    is its type, `reason` says what goes wrong, and `suggestion` names the spec
    to pass instead when the object belongs to a known live resource.
    """

    path: str
    type_name: str
    reason: str
    suggestion: str | None = None

    def __str__(self) -> str:
        text = f"{self.path}: {self.type_name} {self.reason}"
        return f"{text}; {self.suggestion}" if self.suggestion else text


def check_inputs(
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    transport: bool = True,
    cache_key: bool = True,
    pickler: Pickler = "cloudpickle",
    ignore: tuple[type, ...] = (),
    other_thread: bool = False,
) -> list[Finding]:
    """Every problem in a call's arguments, each with the path to the offending object.

    transport: the arguments must pickle (process pools, Dask, `task.delay`).
    cache_key: the arguments must hash the way Prefect's cache policies hash them.
    pickler: "cloudpickle" as Prefect and Dask use, or "pickle" for plain
        multiprocessing (which cannot send lambdas or local functions).
    ignore: types to accept as they are (futures the runner resolves first).
    other_thread: the task runs on another thread of this process (a submitted
        task on a thread pool): thread-bound objects (sqlite3) are reported even
        when nothing is pickled or hashed.
    Known live resources (connections, pipelines, modules, open files) are
    reported even when they pickle: each task would get its own copy.
    """
    findings: list[Finding] = []
    for index, value in enumerate(args):
        findings += check_value(
            value,
            f"args[{index}]",
            transport=transport,
            cache_key=cache_key,
            pickler=pickler,
            ignore=ignore,
            other_thread=other_thread,
        )
    for name, value in (kwargs or {}).items():
        findings += check_value(
            value,
            f"kwargs[{name!r}]",
            transport=transport,
            cache_key=cache_key,
            pickler=pickler,
            ignore=ignore,
            other_thread=other_thread,
        )
    return findings


def check_value(
    value: Any,
    path: str,
    *,
    transport: bool = True,
    cache_key: bool = True,
    pickler: Pickler = "cloudpickle",
    ignore: tuple[type, ...] = (),
    other_thread: bool = False,
) -> list[Finding]:
    """The problems in one value; `path` names it in the findings."""
    if _trivially_fine(value, ignore):
        return []
    if not (transport or cache_key):
        # Nothing is pickled or hashed, but a thread pool still moves the value
        # to another thread; a pickling or hashing check reports these anyway.
        return _thread_bound(value, path, ignore, depth=0, seen=set()) if other_thread else []
    probe = _Probe(transport=transport, cache_key=cache_key, pickler=pickler, ignore=ignore)
    return probe.walk(value, path, depth=0, seen=set(), live=None)


def _thread_bound(
    obj: Any, path: str, ignore: tuple[type, ...], *, depth: int, seen: set[int]
) -> list[Finding]:
    """sqlite3 objects anywhere in `obj`: usable only in the thread that opened them."""
    if id(obj) in seen or _trivially_fine(obj, ignore):
        return []
    seen.add(id(obj))
    if isinstance(obj, sqlite3.Connection | sqlite3.Cursor):
        return [
            Finding(
                path,
                _type_name(obj),
                "is bound to the thread that opened it: a task on another thread fails with "
                '"SQLite objects created in a thread can only be used in that same thread"',
                "pass SqliteSpec(path=...) instead and call .get() inside the task",
            )
        ]
    if depth >= MAX_DEPTH:
        return []
    found: list[Finding] = []
    for child_path, child in _children(obj, path):
        found += _thread_bound(child, child_path, ignore, depth=depth + 1, seen=seen)
    return found


# -- the search ---------------------------------------------------------------


class _Probe:
    """Tries each object the way the runner and the cache policy would, then narrows down."""

    def __init__(
        self, *, transport: bool, cache_key: bool, pickler: Pickler, ignore: tuple[type, ...]
    ) -> None:
        self.ignore = ignore
        self.transport = transport
        self.cache_key = cache_key
        self.dumps = _dumps_for(pickler) if transport else None
        # Results by id(): every object tried stays alive during one check.
        self.tried: dict[int, tuple[str | None, int | None]] = {}
        self.iterators: dict[int, bool] = {}

    def walk(
        self, obj: Any, path: str, *, depth: int, seen: set[int], live: tuple[str, str] | None
    ) -> list[Finding]:
        seen.add(id(obj))
        # The outermost live resource names the spec: a pool's connection
        # belongs to the Engine the user passed.
        hint = live or _live_hint(obj)
        reason, size = self.trouble(obj)
        if reason is None:
            return [] if hint is None else [self.live_finding(obj, path, hint, size)]
        found: list[Finding] = []
        covered = False  # a failing part already reported under another path
        if depth < MAX_DEPTH:
            for child_path, child in _children(obj, path):
                if _trivially_fine(child, self.ignore) or self.trouble(child)[0] is None:
                    continue
                if id(child) in seen:
                    covered = True
                    continue
                found += self.walk(child, child_path, depth=depth + 1, seen=seen, live=hint)
                if found and hint is not None:
                    break  # one path per live resource: the spec replaces all of it
        if found or covered:
            return found
        # Nothing inside fails on its own: this object is the culprit.
        suggestion = _suggest(hint, inside=live is not None)
        if reason == ITERATOR_REASON and suggestion is None:
            suggestion = ITERATOR_HINT
        return [Finding(path, _type_name(obj), reason, suggestion)]

    def trouble(self, obj: Any) -> tuple[str | None, int | None]:
        """(what fails for `obj`, or None; its pickled size when it pickled)."""
        known = self.tried.get(id(obj))
        if known is None:
            known = self.tried[id(obj)] = self.try_both(obj)
        return known

    def try_both(self, obj: Any) -> tuple[str | None, int | None]:
        if self.cache_key and self.holds_iterator(obj):
            # Hashing would drain it; the search narrows down to the iterator itself.
            return (ITERATOR_REASON if _is_iterator(obj) else "holds an iterator"), None
        size = None
        pickle_error = None
        if self.dumps is not None:
            try:
                size = len(self.dumps(obj))
            except Exception as exc:
                pickle_error = _describe(exc)
        hash_failed = self.cache_key and size is None and not _prefect_hashes(obj)
        if pickle_error and hash_failed:
            return f"cannot be pickled or hashed ({pickle_error})", None
        if pickle_error:
            return f"cannot be pickled ({pickle_error})", None
        if hash_failed:
            return "cannot be hashed for a cache key (neither JSON nor cloudpickle)", None
        return None, size

    def holds_iterator(self, obj: Any) -> bool:
        known = self.iterators.get(id(obj))
        if known is None:
            known = self.iterators[id(obj)] = _holds_iterator(obj, self.ignore)
        return known

    def live_finding(self, obj: Any, path: str, hint: tuple[str, str], size: int | None) -> Finding:
        what, spec = hint
        if self.transport:
            copied = f"pickles to {_megabytes(size)} and " if size is not None else ""
            cost = f"{copied}is copied into every task instead of built once per worker"
        else:
            cost = "is serialized whole to hash it for every call's cache key"
        return Finding(
            path,
            _type_name(obj),
            f"is {what}: it {cost}",
            f"pass {spec} instead and call .get() inside the task",
        )


def _is_iterator(obj: Any) -> bool:
    # Open files are iterators too, but hashing does not read them (and they
    # are reported as live resources).
    return isinstance(obj, collections.abc.Iterator) and not isinstance(obj, io.IOBase)


def _holds_iterator(obj: Any, ignore: tuple[type, ...]) -> bool:
    """Is `obj`, or anything pickling it would reach, an iterator? Looks, never iterates."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    seen: set[int] = set()
    budget = MAX_ITERATOR_SEARCH
    while stack and budget > 0:
        item, depth = stack.pop()
        budget -= 1
        if id(item) in seen or _trivially_fine(item, ignore):
            continue
        seen.add(id(item))
        if _is_iterator(item):
            return True
        if depth < MAX_DEPTH:
            stack.extend((child, depth + 1) for _, child in _children(item, ""))
    return False


def _dumps_for(pickler: Pickler) -> Callable[[Any], bytes]:
    if pickler == "pickle":
        return functools.partial(pickle.dumps, protocol=pickle.HIGHEST_PROTOCOL)
    cloudpickle = require("cloudpickle", "prefect")
    return cloudpickle.dumps  # type: ignore[no-any-return]


def _prefect_hashes(obj: Any) -> bool:
    # Exactly the check Prefect's INPUTS policy makes: JSON, then cloudpickle.
    hashing = require("prefect.utilities.hashing", "prefect")
    return hashing.hash_objects(obj) is not None


def _trivially_fine(obj: Any, ignore: tuple[type, ...]) -> bool:
    # Specs are built to pickle and hash (AsLive is a spec sent for its live object);
    # plain data always does.
    return obj is None or isinstance(obj, (str, bytes, int, float, bool, Spec, AsLive, *ignore))


def _children(obj: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(path, value) for what pickling `obj` would also pickle, as far as it can be seen."""
    for count, item in enumerate(_parts(obj, path)):
        if count >= MAX_CHILDREN:
            return
        yield item


def _parts(obj: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        for key, value in list(obj.items()):
            yield f"{path}[{key!r}]", value
    elif isinstance(obj, list | tuple | collections.deque):
        for index, value in enumerate(obj):
            yield f"{path}[{index}]", value
    elif isinstance(obj, set | frozenset):
        for index, value in enumerate(obj):
            yield f"{path}.<item {index}>", value
    elif isinstance(obj, types.FunctionType):
        yield from _function_parts(obj, path)
    elif isinstance(obj, types.MethodType | types.BuiltinMethodType):
        # A bound method pickles its object: report the object, once.
        if not isinstance(obj.__self__, types.ModuleType):
            yield f"{path}.__self__", obj.__self__
    elif isinstance(obj, type | types.ModuleType):
        return  # pickled by reference; their contents are not the argument's
    elif isinstance(obj, functools.partial):
        yield f"{path}.func", obj.func
        yield from _parts(obj.args, f"{path}.args")
        yield from _parts(obj.keywords, f"{path}.keywords")
    else:
        yield from _state_parts(obj, path)


def _function_parts(fn: types.FunctionType, path: str) -> Iterator[tuple[str, Any]]:
    # cloudpickle copies a function by value with its closure, defaults and the
    # globals it names; any of them can hold the live object.
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
        try:
            yield f"{path}.<closure {name}>", cell.cell_contents
        except ValueError:  # an empty cell
            continue
    for index, default in enumerate(fn.__defaults__ or ()):
        yield f"{path}.__defaults__[{index}]", default
    for name in fn.__code__.co_names:
        if name in fn.__globals__ and not isinstance(fn.__globals__[name], types.ModuleType):
            yield f"{path}.__globals__[{name!r}]", fn.__globals__[name]


def _state_parts(obj: Any, path: str) -> Iterator[tuple[str, Any]]:
    # What pickle itself would save: __getstate__() (a dict, or a (dict, slots) pair).
    try:
        state = obj.__getstate__()
    except Exception:
        return
    if state is None or state is obj:
        return
    if isinstance(state, tuple) and len(state) == 2:
        dicts = [part for part in state if isinstance(part, Mapping)]
    elif isinstance(state, Mapping):
        dicts = [state]
    else:
        yield f"{path}.<state>", state
        return
    for attrs in dicts:
        for name, value in list(attrs.items()):
            yield from _attribute_parts(str(name), value, path)


def _attribute_parts(name: str, value: Any, path: str) -> Iterator[tuple[str, Any]]:
    # pydantic models keep their fields and private attributes one level down.
    if (name == "__dict__" or name.startswith("__pydantic")) and isinstance(value, Mapping):
        for field, item in list(value.items()):
            yield f"{path}.{field}", item
    else:
        yield f"{path}.{name}", value


# -- naming what was found ----------------------------------------------------------


def _live_hint(obj: Any) -> tuple[str, str] | None:
    if isinstance(obj, io.IOBase):  # an ABC: open files do not have it in their MRO
        return LIVE_TYPES.get("io.IOBase")
    for klass in type(obj).__mro__:
        hint = LIVE_TYPES.get(f"{klass.__module__}.{klass.__qualname__}")
        if hint is not None:
            return hint
    return None


def _suggest(hint: tuple[str, str] | None, *, inside: bool) -> str | None:
    if hint is None:
        return None
    what, spec = hint
    where = "it belongs to" if inside else "it is"
    return f"{where} {what}: pass {spec} instead and call .get() inside the task"


def _type_name(obj: Any) -> str:
    if isinstance(obj, types.FunctionType | types.BuiltinFunctionType):
        return f"function {obj.__qualname__}"
    return type(obj).__name__


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
