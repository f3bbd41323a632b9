"""The contract every spec kind keeps, as checks a kind's own tests call.

    from handles.testing import assert_contract

    def test_vocabulary_keeps_the_contract():
        assert_contract(
            VocabularySpec(words=("a", "b")),
            identity={"words": ("c",)},        # each change must move cache_key()
            placement={"log_level": "debug"},  # each must keep it, and pick another object
        )

`assert_contract` runs every check; each is also a function of its own
(`check_pickle`, `check_single_flight`, ...), for one test per property. A
broken property raises AssertionError whose message starts with
"contract broken: <property>:", the property being one of: one value, pickle,
JSON, canonical dump, input order, canonical fingerprint, placement/identity
roles, key stability across hash seeds, reuse, single-flight, one object per
event loop, failure not cached, fork, teardown order.

These checks use this process's registry (`handles.registry()`): they build and
evict objects in it, and the teardown-order check closes it (`registry().close()`
tears down every object of the process) to start from a clean state. They are
meant for test processes, not for processes doing real work.

Loop-scoped kinds are driven through `await spec.aget()` on one event loop,
running in a thread of its own for the duration of a check; the fork and
teardown-order checks do not apply to them (a loop's objects live and die with
the loop), and one more does: two loops at once, through `asyncio.run()`, get
two objects, each torn down on its own loop when its `asyncio.run()` ends. The
fork check needs `os.fork` and does nothing where it is missing.

Importing this module imports no optional package: cloudpickle, when installed,
is imported by the pickle and key checks that use it.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

from handles._keys import canonical_json
from handles._kinds import spec_from_json
from handles._registry import KeyStats, registry
from handles._spec import Spec
from handles.exceptions import BuildError, SpecError

__all__ = [
    "assert_contract",
    "check_canonical_dump",
    "check_fingerprint",
    "check_failure_not_cached",
    "check_failure_reaches_every_waiter",
    "check_fork",
    "check_input_order",
    "check_json",
    "check_key_stable_across_processes",
    "check_one_object_per_loop",
    "check_one_value",
    "check_pickle",
    "check_reuse",
    "check_roles",
    "check_single_flight",
    "check_teardown_order",
]

T = TypeVar("T")

ONE_VALUE = "one value"
PICKLE = "pickle"
JSON = "JSON"
CANONICAL_DUMP = "canonical dump"
INPUT_ORDER = "input order"
CANONICAL_FINGERPRINT = "canonical fingerprint"
ROLES = "placement/identity roles"
KEY_STABILITY = "key stability across hash seeds"
REUSE = "reuse"
SINGLE_FLIGHT = "single-flight"
PER_LOOP = "one object per event loop"
FAILURE_NOT_CACHED = "failure not cached"
FORK = "fork"
TEARDOWN_ORDER = "teardown order"

_PREFIX = "contract broken: "
# Generous: a build may load a model; only a hang should ever reach it.
_TIMEOUT = 120.0
# Specs travel with every task and every cache lookup.
_MAX_PICKLE_BYTES = 1024

Getter = Callable[[Spec[Any]], Any]


def assert_contract(
    spec: Spec[Any],
    *,
    identity: Mapping[str, Any],
    placement: Mapping[str, Any] | None = None,
    broken: Spec[Any] | None = None,
    alive: Callable[[Any], object] | None = None,
    setup_modules: Sequence[str] = (),
) -> None:
    """Check every property of the spec contract on `spec`; AssertionError names the first broken.

    identity: field changes (each applied alone with `spec.replace`) that must
        move `cache_key()`. One at least; all applied together, they must give a
        spec that builds (the teardown-order check builds it beside `spec`).
    placement: field changes that must keep `cache_key()` but pick another live
        object. None or empty: the kind must have no placement fields.
    broken: a spec of the same kind whose build fails, for the failure checks
        (skipped when None).
    alive: called with the parent's object after a forked child ran; raises if
        the object no longer works (its return value is ignored).
    setup_modules: modules a fresh process imports before it can rebuild the
        spec (those registering what the spec names, as a worker would).
    """
    if broken is not None and broken.kind != spec.kind:
        raise ValueError(f"broken is a {broken.kind!r} spec; a {spec.kind!r} one is needed")
    check_one_value(spec)
    check_pickle(spec)
    check_json(spec)
    check_canonical_dump(spec)
    check_input_order(spec)
    check_fingerprint(spec)
    check_roles(spec, identity=identity, placement=placement)
    check_key_stable_across_processes(spec, setup_modules=setup_modules)
    check_reuse(spec)
    check_single_flight(spec)
    check_one_object_per_loop(spec)
    if broken is not None:
        check_failure_not_cached(broken)
        check_failure_reaches_every_waiter(broken)
    check_fork(spec, alive=alive)
    check_teardown_order(spec, identity=identity)


# -- the checks -----------------------------------------------------------------


def check_one_value(spec: Spec[Any]) -> None:
    """A spec is not iterable (Prefect's `map()` would split it), and `dict(spec)` is its fields."""
    with _property(ONE_VALUE):
        try:
            iter(spec)  # type: ignore[call-overload]  # mypy agrees; the check is for runtime
        except TypeError:
            pass
        else:
            _fail(ONE_VALUE, f"iter() accepts a {_name(spec)}: task.map() would split it up")
        fields = {name: getattr(spec, name) for name in type(spec).model_fields}
        _require(dict(spec) == fields, ONE_VALUE, "dict(spec) is not {field: value}")


def check_pickle(spec: Spec[Any]) -> None:
    """Pickles small and equal, by pickle and cloudpickle, and the same before and after use."""
    with _property(PICKLE):
        before = pickle.dumps(spec)
        with _getter(spec) as get:
            get(spec)
            after = pickle.dumps(spec)
        _require(
            after == before,
            PICKLE,
            f"a used {_name(spec)} pickles differently from a fresh one: live state is on the spec",
        )
        _require(
            len(before) < _MAX_PICKLE_BYTES,
            PICKLE,
            f"a {_name(spec)} pickles to {len(before)} bytes ({_MAX_PICKLE_BYTES} at most)",
        )
        _require(pickle.loads(before) == spec, PICKLE, "the unpickled spec differs")
        cloudpickle = _cloudpickle()
        if cloudpickle is not None:
            copy = cloudpickle.loads(cloudpickle.dumps(spec))
            _require(copy == spec, PICKLE, "the spec differs after a cloudpickle round trip")


def check_json(spec: Spec[Any]) -> None:
    """The JSON dump validates back, as the class and through `handles.spec_from_json`."""
    with _property(JSON):
        text = spec.model_dump_json()
        _require(json.loads(text).get("kind") == spec.kind, JSON, "the dump does not name the kind")
        _require(
            type(spec).model_validate_json(text) == spec,
            JSON,
            f"{_name(spec)}.model_validate_json() of the dump gives another spec",
        )
        rebuilt = spec_from_json(text)
        _require(rebuilt == spec, JSON, "spec_from_json() of the dump gives another spec")
        _require(
            rebuilt.cache_key() == spec.cache_key(),
            JSON,
            "the spec rebuilt from JSON has another cache_key()",
        )


def check_canonical_dump(spec: Spec[Any]) -> None:
    """Keys sorted, and a validated copy dumps to the same bytes (validators are idempotent)."""
    with _property(CANONICAL_DUMP):
        dumped = spec.model_dump(mode="json")
        _require(list(dumped) == sorted(dumped), CANONICAL_DUMP, "the dump's keys are not sorted")
        first, again = spec.model_dump_json(), spec.replace().model_dump_json()
        _require(
            again == first,
            CANONICAL_DUMP,
            f"validating the dump again changes it (a validator that is not idempotent?): "
            f"{first} became {again}",
        )


def check_input_order(spec: Spec[Any]) -> None:
    """Built from its input in two orders (dict keys, set items), the spec keys and dumps alike.

    Equal input in another order is the same spec: the same `cache_key()`, the
    same live object, the same JSON. A fingerprint or serializer that follows a
    mapping's or a set's order breaks this (within one process for mappings, and
    across hash seeds for sets).
    """
    with _property(INPUT_ORDER):
        baseline = spec.replace()
        for order, other in (
            ("sorted", _reordered(spec, False)),
            ("reversed", _reordered(spec, True)),
        ):
            for what, ours, theirs in (
                ("cache_key()", baseline.cache_key(), other.cache_key()),
                ("the registry's instance key", baseline._instance_key(), other._instance_key()),
                ("the JSON dump", baseline.model_dump_json(), other.model_dump_json()),
            ):
                _require(
                    ours == theirs,
                    INPUT_ORDER,
                    f"{what} of a {_name(spec)} built with its dict keys and set items in "
                    f"{order} order differs ({_short(theirs)} vs {_short(ours)}): does "
                    "fingerprint() or a serializer follow the input's order?",
                )
            _require(other == baseline, INPUT_ORDER, f"the {order}-order {_name(spec)} is unequal")


def check_fingerprint(spec: Spec[Any]) -> None:
    """`fingerprint()` is canonical: JSON data, the same on every call and for input in any order.

    Canonical JSON of it is what `cache_key()` hashes, so a dict's order or a set's
    never matters there; what does is order frozen into a string (JSON text
    written without sorted keys) or into a list (a set's items, a dict's values).
    """
    with _property(CANONICAL_FINGERPRINT):
        found = spec.fingerprint()
        if found is None:
            return
        try:
            text = canonical_json(found)
        except (TypeError, ValueError) as exc:
            _fail(
                CANONICAL_FINGERPRINT, f"fingerprint() returned data with no JSON form: {exc}", exc
            )
        variants = [
            ("a second call", spec),
            ("the sorted-order spec", _reordered(spec, False)),
            ("the reversed-order spec", _reordered(spec, True)),
        ]
        for label, other in variants:
            again = other.fingerprint()
            _unsorted_json_text(again)
            _require(
                canonical_json(again) == text,
                CANONICAL_FINGERPRINT,
                f"fingerprint() of {label} is {canonical_json(again)}, {text} here "
                "(the time, ids, or a dict's or set's order in it?)",
            )


def check_roles(
    spec: Spec[Any], *, identity: Mapping[str, Any], placement: Mapping[str, Any] | None = None
) -> None:
    """Each identity change moves `cache_key()`; each placement change keeps it, moves the object.

    Every change is applied alone (`spec.replace(field=value)`), so one mislabelled
    field cannot hide behind another. No placement changes: the kind has no placement
    fields.
    """
    with _property(ROLES):
        _require(bool(identity), ROLES, "no identity change given: name one field at least")
        for name, value in identity.items():
            other = _changed(spec, name, value)
            _require(
                other.cache_key() != spec.cache_key(),
                ROLES,
                f"changing {name!r} keeps cache_key(): mark it Identity if it says what the "
                "object is",
            )
        if not placement:
            fields = type(spec).placement_fields
            _require(
                not fields, ROLES, f"{_name(spec)} has placement fields {fields} but none changed"
            )
            return
        for name, value in placement.items():
            moved = _changed(spec, name, value)
            _require(
                moved.cache_key() == spec.cache_key(),
                ROLES,
                f"changing placement field {name!r} moves cache_key(): mark it Placement",
            )
            _require(
                moved._instance_key() != spec._instance_key(),
                ROLES,
                f"changing {name!r} keeps the registry's instance key: placement must pick the "
                "live object",
            )


def check_key_stable_across_processes(
    spec: Spec[Any], *, setup_modules: Sequence[str] = ()
) -> None:
    """Two fresh interpreters (PYTHONHASHSEED=1 and 2) rebuild the spec from JSON to the same key.

    They see this process's import path and import the kind's module and
    `setup_modules` first. A kind no fresh process can import by name (defined in
    `__main__` or in exec'd code) reaches them by value through cloudpickle, as it
    reaches Ray or Dask workers.
    """
    with _property(KEY_STABILITY):
        expected = [spec.cache_key(), spec.model_dump_json()]
        job = _rebuild_job(spec, setup_modules)
        for seed in ("1", "2"):
            got = _rebuild_in_fresh_process(job, seed)
            _require(
                got[0] == expected[0],
                KEY_STABILITY,
                f"cache_key() is {got[0]} with PYTHONHASHSEED={seed}, {expected[0]} here "
                "(Python's hash(), ids or set order in fingerprint() or a dump?)",
            )
            _require(
                got[1] == expected[1],
                KEY_STABILITY,
                f"the dump is {got[1]} with PYTHONHASHSEED={seed}, {expected[1]} here",
            )


def check_reuse(spec: Spec[Any]) -> None:
    """get() builds once, then returns that object, also to an equal spec rebuilt from JSON."""
    with _property(REUSE), _getter(spec) as get:
        _forget(spec)
        before = _stats(spec)
        first = get(spec)
        _require(first is not None, REUSE, "get() returned None: build() must return the object")
        _require(get(spec) is first, REUSE, "a second get() returned another object")
        copy = type(spec).model_validate_json(spec.model_dump_json())
        _require(get(copy) is first, REUSE, "an equal spec from JSON got another object")
        builds, hits = _delta(before, _stats(spec))
        _require(
            (builds, hits) == (1, 2),
            REUSE,
            f"three get() calls counted {builds} builds and {hits} hits (1 and 2 expected)",
        )


def check_single_flight(spec: Spec[Any], threads: int = 64) -> None:
    """`threads` threads ask at once: one build for process and loop scope, else one per thread."""
    with _property(SINGLE_FLIGHT), _getter(spec) as get:
        _forget(spec)
        before = _stats(spec)
        got = _in_threads(threads, lambda: _get_twice(get, spec), SINGLE_FLIGHT)
        builds = _delta(before, _stats(spec))[0]
        objects = len({id(obj) for obj in got})
        per_thread = spec.scope == "thread"
        wanted = threads if per_thread else 1
        _require(
            (builds, objects) == (wanted, wanted),
            SINGLE_FLIGHT,
            f"{threads} threads made {objects} objects in {builds} builds of a {spec.scope}-scoped "
            f"spec ({wanted} expected{': one per thread' if per_thread else ''})",
        )


def check_one_object_per_loop(spec: Spec[Any]) -> None:
    """Loop scope: two event loops at once get two objects, each torn down on its own loop.

    Each loop is an `asyncio.run()` in a thread of its own; both hold their
    object at the same moment, and each object must be torn down (`ateardown`)
    once, on the loop that built it, by the time its `asyncio.run()` returns.
    Does nothing for other scopes.
    """
    if spec.scope != "loop":
        return
    with _property(PER_LOOP):
        torn: list[tuple[Any, asyncio.AbstractEventLoop | None]] = []
        with _recording_loop_teardowns(type(spec), torn):
            got = _on_two_loops(spec)
        first, second = (obj for obj, _ in got)
        _require(
            first is not second,
            PER_LOOP,
            f"two event loops got one {type(first).__name__} (a cache outside the registry, "
            "or an object made outside abuild()?)",
        )
        for number, (obj, loop) in enumerate(got, 1):
            where = [on for value, on in torn if value is obj]
            _require(
                len(where) == 1,
                PER_LOOP,
                f"loop {number}'s object was torn down {len(where)} times when its loop ended "
                "(once expected)",
            )
            _require(
                where[0] is loop,
                PER_LOOP,
                f"loop {number}'s object was torn down "
                f"{'outside any event loop' if where[0] is None else 'on another event loop'}",
            )


def check_failure_not_cached(broken: Spec[Any]) -> None:
    """A failing build raises BuildError (kind named, cause chained) every time; nothing is kept."""
    with _property(FAILURE_NOT_CACHED), _getter(broken) as get:
        before = _stats(broken)
        for attempt in (1, 2):
            error = _build_error(get, broken, attempt)
            text = str(error)
            _require(
                broken.kind in text or _name(broken) in text,
                FAILURE_NOT_CACHED,
                f"the BuildError does not name the kind: {text}",
            )
            _require(
                error.__cause__ is not None,
                FAILURE_NOT_CACHED,
                "the BuildError has no cause: let build() raise the original error",
            )
            after = _stats(broken)
            counts = (after.builds - before.builds, after.errors - before.errors, after.live)
            _require(
                counts == (0, attempt, 0),
                FAILURE_NOT_CACHED,
                f"after failure {attempt}: {counts} (builds, errors, live); (0, {attempt}, 0) "
                "expected",
            )
        _require(broken not in registry(), FAILURE_NOT_CACHED, "the broken spec is in the registry")


def check_failure_reaches_every_waiter(broken: Spec[Any], threads: int = 16) -> None:
    """Threads waiting on one failing build each get their own BuildError; nothing is kept."""
    with _property(FAILURE_NOT_CACHED), _getter(broken) as get:
        errors = _in_threads(threads, lambda: _raised(get, broken), FAILURE_NOT_CACHED)
        failed = [e for e in errors if isinstance(e, BuildError) and e.__cause__ is not None]
        _require(
            len(failed) == threads,
            FAILURE_NOT_CACHED,
            f"{threads - len(failed)} of {threads} waiters got no BuildError with a cause",
        )
        _require(
            len({id(e) for e in errors}) == threads,
            FAILURE_NOT_CACHED,
            "waiters share one exception object (each needs its own traceback)",
        )
        _require(broken not in registry(), FAILURE_NOT_CACHED, "the broken spec is in the registry")


def check_fork(spec: Spec[Any], alive: Callable[[Any], object] | None = None) -> None:
    """A forked child starts empty and builds its own; the parent's object is untouched.

    `alive(obj)` raises if the parent's object stopped working. Does nothing for
    loop scope or where `os.fork` is missing.
    """
    if spec.scope == "loop" or not hasattr(os, "fork"):
        return
    with _property(FORK):
        parent_obj = spec.get()
        builds = _stats(spec).builds
        inherited, own, child_builds = _run_in_fork(_child_after_fork, spec, parent_obj)
        _require(inherited == 0, FORK, f"the child's registry started with {inherited} keys")
        _require(own, FORK, "the child got the parent's object (a cache outside the registry?)")
        _require(child_builds == 1, FORK, f"the child built {child_builds} times (1 expected)")
        _require(spec.get() is parent_obj, FORK, "the parent's get() returns another object")
        if alive is not None:
            try:
                alive(parent_obj)
            except Exception as exc:
                _fail(FORK, f"the parent's object stopped working after a child ran: {exc!r}", exc)
        _require(_stats(spec).builds == builds, FORK, "the parent built again after the fork")


def check_teardown_order(spec: Spec[Any], *, identity: Mapping[str, Any]) -> None:
    """close() tears this process's objects down newest first, and get() then builds anew.

    `identity`: changes giving a second spec that builds. Closes the registry
    first, for a clean state. Does nothing for loop scope.
    """
    if spec.scope == "loop":
        return
    with _property(TEARDOWN_ORDER):
        older, newer = spec, spec.replace(**identity)
        _require(newer.cache_key() != older.cache_key(), TEARDOWN_ORDER, "identity moves no key")
        registry().close()
        closed: list[str] = []
        with _recording_teardowns(type(spec), closed):
            older.get()
            newer.get()
            builds = _stats(older).builds
            registry().close()
        expected = [newer.cache_key(), older.cache_key()]
        if closed != expected:
            _fail(TEARDOWN_ORDER, _teardown_problem(closed, expected))
        _require(
            len(registry()) == 0, TEARDOWN_ORDER, f"{len(registry())} objects live after close()"
        )
        _require(older.get() is not None, TEARDOWN_ORDER, "get() after close() returned None")
        _require(
            _stats(older).builds == builds + 1, TEARDOWN_ORDER, "get() after close() built nothing"
        )


# -- failing well -----------------------------------------------------------------


def _fail(prop: str, detail: str, cause: BaseException | None = None) -> NoReturn:
    raise AssertionError(f"{_PREFIX}{prop}: {detail}") from cause


def _require(ok: bool, prop: str, detail: str) -> None:
    # Not `assert`: python -O strips those, and only test modules get pytest's rewriting.
    if not ok:
        _fail(prop, detail)


@contextmanager
def _property(prop: str) -> Iterator[None]:
    """Report any other error inside a check as that property broken, its cause chained."""
    try:
        yield
    except AssertionError as exc:
        if str(exc).startswith(_PREFIX):
            raise
        _fail(prop, f"AssertionError: {exc}", exc)
    except Exception as exc:
        _fail(prop, f"{type(exc).__name__}: {exc}", exc)


def _name(spec: Spec[Any]) -> str:
    return type(spec).__name__


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


# -- helpers ---------------------------------------------------------------------


@contextmanager
def _getter(spec: Spec[Any]) -> Iterator[Getter]:
    """`s.get()`, or for loop scope `await s.aget()` on one event loop for the whole block.

    The loop runs in a thread of its own, so callers in any thread share it, as the
    coroutines of one application share their loop. Its shutdown closes its objects.
    """
    if spec.scope != "loop":
        yield lambda s: s.get()
        return
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="handles-testing-loop", daemon=True)
    thread.start()
    try:
        yield lambda s: asyncio.run_coroutine_threadsafe(s.aget(), loop).result(_TIMEOUT)
    finally:
        asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_TIMEOUT)
        loop.close()


def _forget(spec: Spec[Any]) -> None:
    # So counts start from no object. A loop-scoped check runs on a loop of its own: nothing there.
    if spec.scope != "loop":
        registry().evict(spec)


def _stats(spec: Spec[Any]) -> KeyStats:
    # Stats outlive objects (and close()), so checks compare counts before and after.
    found = registry().stats().get(spec.cache_key())
    return found if found is not None else KeyStats(spec.kind, 0, 0, 0, 0.0, 0)


def _delta(before: KeyStats, after: KeyStats) -> tuple[int, int]:
    """(builds, hits) between two stats of one key."""
    return after.builds - before.builds, after.hits - before.hits


def _changed(spec: Spec[Any], name: str, value: Any) -> Spec[Any]:
    other = spec.replace(**{name: value})
    _require(other != spec, ROLES, f"{name}={value!r} does not change the spec: pick another value")
    return other


def _cloudpickle() -> Any:
    """The cloudpickle module, or None: it is optional, and only some checks use it."""
    try:
        import cloudpickle  # noqa: PLC0415  (optional)
    except ImportError:
        return None
    return cloudpickle


def _in_threads(count: int, work: Callable[[], T], prop: str) -> list[T]:
    """`work()` in `count` threads released together; their results, in thread order."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(_TIMEOUT)
            results[i] = work()
        except BaseException as exc:  # reported below, in the caller's thread
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        _fail(prop, f"{len(errors)} of {count} threads failed, first with {errors[0]!r}", errors[0])
    return results


def _get_twice(get: Getter, spec: Spec[Any]) -> Any:
    obj = get(spec)
    _require(get(spec) is obj, SINGLE_FLIGHT, "a thread's second get() returned another object")
    return obj


def _raised(get: Getter, spec: Spec[Any]) -> BaseException | None:
    try:
        get(spec)
    except Exception as exc:
        return exc
    return None


def _build_error(get: Getter, broken: Spec[Any], attempt: int) -> BuildError:
    try:
        value = get(broken)
    except BuildError as exc:
        return exc
    _fail(
        FAILURE_NOT_CACHED,
        f"get() #{attempt} of the broken spec returned a {type(value).__name__} instead of "
        "raising BuildError (a build that swallows its error, or remembers a placeholder?)",
    )


@contextmanager
def _recording_teardowns(cls: type[Spec[Any]], closed: list[str]) -> Iterator[None]:
    """While the block runs, each teardown of a `cls` object appends its spec's cache key."""
    own = cls.__dict__.get("teardown")
    teardown = cls.teardown

    def recording(self: Spec[Any], value: Any) -> None:
        closed.append(self.cache_key())
        teardown(self, value)

    cls.teardown = recording  # type: ignore[method-assign]
    try:
        yield
    finally:
        if own is None:
            del cls.teardown
        else:
            cls.teardown = own  # type: ignore[method-assign]


# Set while a recorded ateardown runs, so the teardown() it calls (the default
# ateardown does) is not counted again; contextvars follow it into to_thread().
_IN_ATEARDOWN: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "handles_testing_in_ateardown", default=False
)


@contextmanager
def _recording_loop_teardowns(
    cls: type[Spec[Any]], torn: list[tuple[Any, asyncio.AbstractEventLoop | None]]
) -> Iterator[None]:
    """While the block runs, each teardown of a `cls` object appends (object, its loop or None)."""
    own = {name: cls.__dict__.get(name) for name in ("ateardown", "teardown")}
    ateardown, teardown = cls.ateardown, cls.teardown

    async def recording_ateardown(self: Spec[Any], value: Any) -> None:
        torn.append((value, asyncio.get_running_loop()))
        token = _IN_ATEARDOWN.set(True)
        try:
            await ateardown(self, value)
        finally:
            _IN_ATEARDOWN.reset(token)

    def recording_teardown(self: Spec[Any], value: Any) -> None:
        if not _IN_ATEARDOWN.get():
            torn.append((value, _running_loop()))
        teardown(self, value)

    cls.ateardown = recording_ateardown  # type: ignore[method-assign]
    cls.teardown = recording_teardown  # type: ignore[method-assign]
    try:
        yield
    finally:
        for name, method in own.items():
            if method is None:
                delattr(cls, name)
            else:
                setattr(cls, name, method)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _on_two_loops(spec: Spec[Any]) -> list[tuple[Any, asyncio.AbstractEventLoop]]:
    """(object, loop) from `await spec.aget()` in two `asyncio.run()`s at once, in two threads."""
    both = threading.Barrier(2)
    got: list[Any] = [None, None]
    errors: list[BaseException] = []

    async def hold(i: int) -> None:
        obj = await spec.aget()
        _require(
            await spec.aget() is obj, PER_LOOP, "a second aget() on one loop gave another object"
        )
        got[i] = (obj, asyncio.get_running_loop())
        both.wait(_TIMEOUT)  # blocks this loop: both objects are held at once

    def run(i: int) -> None:
        try:
            asyncio.run(hold(i))
        except BaseException as exc:  # reported below, in the caller's thread
            errors.append(exc)
            both.abort()

    threads = [
        threading.Thread(target=run, args=(i,), name=f"handles-testing-loop-{i}") for i in (0, 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real:
        if isinstance(real[0], AssertionError) and str(real[0]).startswith(_PREFIX):
            raise real[0]
        _fail(PER_LOOP, f"a loop failed: {real[0]!r}", real[0])
    return got


def _reordered(spec: Spec[Any], reverse: bool) -> Spec[Any]:
    """`spec` validated again from its field values, dict keys and set items sorted or reversed.

    A set is handed over as a list in that order where the field takes one (a
    set handed over would be read in its own iteration order); as a set where
    a list would make another spec (an untyped field).
    """
    values = {name: getattr(spec, name) for name in type(spec).model_fields}
    try:
        listed = spec.replace(**{n: _in_order(v, reverse, list) for n, v in values.items()})
    except SpecError:
        listed = None
    if listed is not None and listed == spec:
        return listed
    return spec.replace(**{n: _in_order(v, reverse, None) for n, v in values.items()})


def _in_order(value: Any, reverse: bool, sets_as: type[list[Any]] | None) -> Any:
    """`value` with every dict's keys and set's items (inside lists and tuples too) in one order."""
    if isinstance(value, dict):
        keys = sorted(value, key=str, reverse=reverse)
        return {k: _in_order(value[k], reverse, sets_as) for k in keys}
    if isinstance(value, set | frozenset):
        items = sorted(value, key=canonical_json, reverse=reverse)
        if sets_as is not None:
            return sets_as(items)
        return (frozenset if isinstance(value, frozenset) else set)(items)
    if isinstance(value, list | tuple):
        items = [_in_order(v, reverse, sets_as) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    return value


def _unsorted_json_text(value: Any) -> None:
    """Fail if a string in `value` is JSON text of an object whose keys are out of order."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        elif isinstance(item, str) and item[:1] in ("{", "["):
            try:
                json.loads(item, object_pairs_hook=_sorted_pairs)
            except _UnsortedKeys as exc:
                _fail(
                    CANONICAL_FINGERPRINT,
                    f"fingerprint() holds JSON text whose keys are not sorted ({exc}): "
                    "json.dumps(..., sort_keys=True), or return the data itself",
                )
            except ValueError:
                pass  # text that only looks like JSON


class _UnsortedKeys(ValueError):
    pass


def _sorted_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if keys != sorted(keys):
        raise _UnsortedKeys(", ".join(keys))
    return dict(pairs)


def _teardown_problem(closed: list[str], expected: list[str]) -> str:
    if sorted(closed) == sorted(expected):
        return "close() tore the older object down first (newest first expected)"
    # The registry defers a teardown while anything outside it holds the object.
    return (
        f"close() tore down {len(closed)} of the 2 objects: does something outside the "
        "registry still hold them?"
    )


# -- other processes ---------------------------------------------------------------

_REBUILD = """\
import importlib, json, pickle, sys
import handles
job = pickle.loads(sys.stdin.buffer.read())
for name in job["modules"]:
    importlib.import_module(name)
if job["by_value"] is None:
    spec = handles.spec_from_json(job["json"])
else:
    spec = pickle.loads(job["by_value"]).model_validate_json(job["json"])
print(json.dumps([spec.cache_key(), spec.model_dump_json()]))
"""


def _rebuild_job(spec: Spec[Any], setup_modules: Sequence[str]) -> bytes:
    """What a fresh process needs to rebuild `spec`: modules to import, the class if by value."""
    module = type(spec).__module__
    by_value = None
    if not _importable(module):
        cloudpickle = _cloudpickle()
        if cloudpickle is None:
            _fail(
                KEY_STABILITY,
                f"no fresh process can import {module}, nor get it without cloudpickle",
            )
        by_value = _pickled_by_value(cloudpickle, type(spec))
    modules = [*([module] if by_value is None else []), *setup_modules]
    return pickle.dumps({"modules": modules, "by_value": by_value, "json": spec.model_dump_json()})


def _importable(module_name: str) -> bool:
    """Whether a fresh process can import `module_name` (not __main__, not exec'd code)."""
    module = sys.modules.get(module_name)
    return module_name != "__main__" and getattr(module, "__spec__", None) is not None


def _pickled_by_value(cloudpickle: Any, cls: type) -> bytes:
    module = sys.modules[cls.__module__]
    registered = cls.__module__ in cloudpickle.list_registry_pickle_by_value()
    if not registered:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(cls)  # type: ignore[no-any-return]
    finally:
        if not registered:
            cloudpickle.unregister_pickle_by_value(module)


def _rebuild_in_fresh_process(job: bytes, seed: str) -> list[str]:
    """[cache_key(), model_dump_json()] of the job's spec in `python` with PYTHONHASHSEED=seed."""
    # This process's import path, so kinds defined in a test's own modules import there.
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", _REBUILD],
        input=job,
        env=env,
        capture_output=True,
        timeout=_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace").strip()[-2000:]
        _fail(
            KEY_STABILITY, f"a fresh process (PYTHONHASHSEED={seed}) could not rebuild it:\n{error}"
        )
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def _child_after_fork(spec: Spec[Any], parent_obj: Any) -> tuple[int, bool, int]:
    inherited = len(registry().stats())
    obj = spec.get()
    return inherited, obj is not parent_obj, registry().stats()[spec.cache_key()].builds


def _run_in_fork(target: Callable[..., T], *args: Any, timeout: float = 60) -> T:
    """`target(*args)` in a child made by `os.fork`; its return value, pickled back.

    An error in the child comes back as AssertionError with the child's traceback.
    """
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        raise
    if pid == 0:
        os.close(read_end)
        _report_and_exit(write_end, target, args)
    os.close(write_end)
    try:
        data = _read_until_closed(read_end, timeout)
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"forked child sent nothing within {timeout} s") from None
    finally:
        os.close(read_end)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code != 0 or not data:
        raise AssertionError(f"forked child exited with {code}, sending {len(data)} bytes")
    status, value = pickle.loads(data)
    if status != "ok":
        raise AssertionError(f"forked child failed:\n{value}")
    return value  # type: ignore[no-any-return]


def _report_and_exit(fd: int, target: Callable[..., Any], args: tuple[Any, ...]) -> NoReturn:
    try:
        try:
            payload = pickle.dumps(("ok", target(*args)))
        except BaseException:
            payload = pickle.dumps(("error", traceback.format_exc()))
        with os.fdopen(fd, "wb") as pipe:
            pipe.write(payload)
    finally:
        # Not sys.exit: the parent's exit hooks (pytest's, Prefect's at-fork ones and
        # threads it left) must not run in the child, and would make it exit with 1.
        os._exit(0)


def _read_until_closed(fd: int, timeout: float) -> bytes:
    """Everything written to pipe `fd` until its writer closes it; TimeoutError past `timeout`."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
