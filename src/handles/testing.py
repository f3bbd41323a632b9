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
import json
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from handles import _contract as kit
from handles._contract import (
    CANONICAL_DUMP,
    CANONICAL_FINGERPRINT,
    FAILURE_NOT_CACHED,
    FORK,
    INPUT_ORDER,
    JSON,
    KEY_STABILITY,
    ONE_VALUE,
    PER_LOOP,
    PICKLE,
    REUSE,
    ROLES,
    SINGLE_FLIGHT,
    TEARDOWN_ORDER,
)
from handles._keys import canonical_json
from handles._kinds import spec_from_json
from handles._registry import registry
from handles._spec import Spec
from handles.exceptions import BuildError

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
    with kit.property(ONE_VALUE):
        try:
            iter(spec)  # type: ignore[call-overload]  # mypy agrees; the check is for runtime
        except TypeError:
            pass
        else:
            kit.fail(ONE_VALUE, f"iter() accepts a {kit.name(spec)}: task.map() would split it up")
        fields = {name: getattr(spec, name) for name in type(spec).model_fields}
        kit.require(dict(spec) == fields, ONE_VALUE, "dict(spec) is not {field: value}")


def check_pickle(spec: Spec[Any]) -> None:
    """Pickles small and equal, by pickle and cloudpickle, and the same before and after use."""
    with kit.property(PICKLE):
        before = pickle.dumps(spec)
        with kit.getter(spec) as get:
            get(spec)
            after = pickle.dumps(spec)
        kit.require(
            after == before,
            PICKLE,
            f"a used {kit.name(spec)} pickles differently from a fresh one: "
            "live state is on the spec",
        )
        kit.require(
            len(before) < _MAX_PICKLE_BYTES,
            PICKLE,
            f"a {kit.name(spec)} pickles to {len(before)} bytes ({_MAX_PICKLE_BYTES} at most)",
        )
        kit.require(pickle.loads(before) == spec, PICKLE, "the unpickled spec differs")
        cloudpickle = kit.import_cloudpickle()
        if cloudpickle is not None:
            copy = cloudpickle.loads(cloudpickle.dumps(spec))
            kit.require(copy == spec, PICKLE, "the spec differs after a cloudpickle round trip")


def check_json(spec: Spec[Any]) -> None:
    """The JSON dump validates back, as the class and through `handles.spec_from_json`."""
    with kit.property(JSON):
        text = spec.model_dump_json()
        kit.require(
            json.loads(text).get("kind") == spec.kind, JSON, "the dump does not name the kind"
        )
        kit.require(
            type(spec).model_validate_json(text) == spec,
            JSON,
            f"{kit.name(spec)}.model_validate_json() of the dump gives another spec",
        )
        rebuilt = spec_from_json(text)
        kit.require(rebuilt == spec, JSON, "spec_from_json() of the dump gives another spec")
        kit.require(
            rebuilt.cache_key() == spec.cache_key(),
            JSON,
            "the spec rebuilt from JSON has another cache_key()",
        )


def check_canonical_dump(spec: Spec[Any]) -> None:
    """Keys sorted, and a validated copy dumps to the same bytes (validators are idempotent)."""
    with kit.property(CANONICAL_DUMP):
        dumped = spec.model_dump(mode="json")
        kit.require(
            list(dumped) == sorted(dumped), CANONICAL_DUMP, "the dump's keys are not sorted"
        )
        first, again = spec.model_dump_json(), spec.replace().model_dump_json()
        kit.require(
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
    with kit.property(INPUT_ORDER):
        baseline = spec.replace()
        for order, other in (
            ("sorted", kit.reordered(spec, False)),
            ("reversed", kit.reordered(spec, True)),
        ):
            for what, ours, theirs in (
                ("cache_key()", baseline.cache_key(), other.cache_key()),
                ("the registry's instance key", baseline._instance_key(), other._instance_key()),
                ("the JSON dump", baseline.model_dump_json(), other.model_dump_json()),
            ):
                kit.require(
                    ours == theirs,
                    INPUT_ORDER,
                    f"{what} of a {kit.name(spec)} built with its dict keys and set items in "
                    f"{order} order differs ({kit.short(theirs)} vs {kit.short(ours)}): does "
                    "fingerprint() or a serializer follow the input's order?",
                )
            kit.require(
                other == baseline, INPUT_ORDER, f"the {order}-order {kit.name(spec)} is unequal"
            )


def check_fingerprint(spec: Spec[Any]) -> None:
    """`fingerprint()` is canonical: JSON data, the same on every call and for input in any order.

    Canonical JSON of it is what `cache_key()` hashes, so a dict's order or a set's
    never matters there; what does is order frozen into a string (JSON text
    written without sorted keys) or into a list (a set's items, a dict's values).
    """
    with kit.property(CANONICAL_FINGERPRINT):
        found = spec.fingerprint()
        if found is None:
            return
        try:
            text = canonical_json(found)
        except (TypeError, ValueError) as exc:
            kit.fail(
                CANONICAL_FINGERPRINT, f"fingerprint() returned data with no JSON form: {exc}", exc
            )
        variants = [
            ("a second call", spec),
            ("the sorted-order spec", kit.reordered(spec, False)),
            ("the reversed-order spec", kit.reordered(spec, True)),
        ]
        for label, other in variants:
            again = other.fingerprint()
            kit.unsorted_json_text(again)
            kit.require(
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
    with kit.property(ROLES):
        kit.require(bool(identity), ROLES, "no identity change given: name one field at least")
        for name, value in identity.items():
            other = kit.changed(spec, name, value)
            kit.require(
                other.cache_key() != spec.cache_key(),
                ROLES,
                f"changing {name!r} keeps cache_key(): mark it Identity if it says what the "
                "object is",
            )
        if not placement:
            fields = type(spec).placement_fields
            kit.require(
                not fields,
                ROLES,
                f"{kit.name(spec)} has placement fields {fields} but none changed",
            )
            return
        for name, value in placement.items():
            moved = kit.changed(spec, name, value)
            kit.require(
                moved.cache_key() == spec.cache_key(),
                ROLES,
                f"changing placement field {name!r} moves cache_key(): mark it Placement",
            )
            kit.require(
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
    with kit.property(KEY_STABILITY):
        expected = [spec.cache_key(), spec.model_dump_json()]
        job = kit.rebuild_job(spec, setup_modules)
        for seed in ("1", "2"):
            got = kit.rebuild_in_fresh_process(job, seed)
            kit.require(
                got[0] == expected[0],
                KEY_STABILITY,
                f"cache_key() is {got[0]} with PYTHONHASHSEED={seed}, {expected[0]} here "
                "(Python's hash(), ids or set order in fingerprint() or a dump?)",
            )
            kit.require(
                got[1] == expected[1],
                KEY_STABILITY,
                f"the dump is {got[1]} with PYTHONHASHSEED={seed}, {expected[1]} here",
            )


def check_reuse(spec: Spec[Any]) -> None:
    """get() builds once, then returns that object, also to an equal spec rebuilt from JSON."""
    with kit.property(REUSE), kit.getter(spec) as get:
        kit.forget(spec)
        before = kit.stats(spec)
        first = get(spec)
        kit.require(first is not None, REUSE, "get() returned None: build() must return the object")
        kit.require(get(spec) is first, REUSE, "a second get() returned another object")
        copy = type(spec).model_validate_json(spec.model_dump_json())
        kit.require(get(copy) is first, REUSE, "an equal spec from JSON got another object")
        builds, hits = kit.delta(before, kit.stats(spec))
        kit.require(
            (builds, hits) == (1, 2),
            REUSE,
            f"three get() calls counted {builds} builds and {hits} hits (1 and 2 expected)",
        )


def check_single_flight(spec: Spec[Any], threads: int = 64) -> None:
    """`threads` threads ask at once: one build for process and loop scope, else one per thread."""
    with kit.property(SINGLE_FLIGHT), kit.getter(spec) as get:
        kit.forget(spec)
        before = kit.stats(spec)
        got = kit.in_threads(threads, lambda: kit.get_twice(get, spec), SINGLE_FLIGHT)
        builds = kit.delta(before, kit.stats(spec))[0]
        objects = len({id(obj) for obj in got})
        per_thread = spec.scope == "thread"
        wanted = threads if per_thread else 1
        kit.require(
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
    with kit.property(PER_LOOP):
        torn: list[tuple[Any, asyncio.AbstractEventLoop | None]] = []
        with kit.recording_loop_teardowns(type(spec), torn):
            got = kit.on_two_loops(spec)
        first, second = (obj for obj, _ in got)
        kit.require(
            first is not second,
            PER_LOOP,
            f"two event loops got one {type(first).__name__} (a cache outside the registry, "
            "or an object made outside abuild()?)",
        )
        for number, (obj, loop) in enumerate(got, 1):
            where = [on for value, on in torn if value is obj]
            kit.require(
                len(where) == 1,
                PER_LOOP,
                f"loop {number}'s object was torn down {len(where)} times when its loop ended "
                "(once expected)",
            )
            kit.require(
                where[0] is loop,
                PER_LOOP,
                f"loop {number}'s object was torn down "
                f"{'outside any event loop' if where[0] is None else 'on another event loop'}",
            )


def check_failure_not_cached(broken: Spec[Any]) -> None:
    """A failing build raises BuildError (kind named, cause chained) every time; nothing is kept."""
    with kit.property(FAILURE_NOT_CACHED), kit.getter(broken) as get:
        before = kit.stats(broken)
        for attempt in (1, 2):
            error = kit.build_error(get, broken, attempt)
            text = str(error)
            kit.require(
                broken.kind in text or kit.name(broken) in text,
                FAILURE_NOT_CACHED,
                f"the BuildError does not name the kind: {text}",
            )
            kit.require(
                error.__cause__ is not None,
                FAILURE_NOT_CACHED,
                "the BuildError has no cause: let build() raise the original error",
            )
            after = kit.stats(broken)
            counts = (after.builds - before.builds, after.errors - before.errors, after.live)
            kit.require(
                counts == (0, attempt, 0),
                FAILURE_NOT_CACHED,
                f"after failure {attempt}: {counts} (builds, errors, live); (0, {attempt}, 0) "
                "expected",
            )
        kit.require(
            broken not in registry(), FAILURE_NOT_CACHED, "the broken spec is in the registry"
        )


def check_failure_reaches_every_waiter(broken: Spec[Any], threads: int = 16) -> None:
    """Threads waiting on one failing build each get their own BuildError; nothing is kept."""
    with kit.property(FAILURE_NOT_CACHED), kit.getter(broken) as get:
        errors = kit.in_threads(threads, lambda: kit.raised(get, broken), FAILURE_NOT_CACHED)
        failed = [e for e in errors if isinstance(e, BuildError) and e.__cause__ is not None]
        kit.require(
            len(failed) == threads,
            FAILURE_NOT_CACHED,
            f"{threads - len(failed)} of {threads} waiters got no BuildError with a cause",
        )
        kit.require(
            len({id(e) for e in errors}) == threads,
            FAILURE_NOT_CACHED,
            "waiters share one exception object (each needs its own traceback)",
        )
        kit.require(
            broken not in registry(), FAILURE_NOT_CACHED, "the broken spec is in the registry"
        )


def check_fork(spec: Spec[Any], alive: Callable[[Any], object] | None = None) -> None:
    """A forked child starts empty and builds its own; the parent's object is untouched.

    `alive(obj)` raises if the parent's object stopped working. Does nothing for
    loop scope or where `os.fork` is missing.
    """
    if spec.scope == "loop" or not hasattr(os, "fork"):
        return
    with kit.property(FORK):
        parent_obj = spec.get()
        builds = kit.stats(spec).builds
        inherited, own, child_builds = kit.run_in_fork(kit.child_after_fork, spec, parent_obj)
        kit.require(inherited == 0, FORK, f"the child's registry started with {inherited} keys")
        kit.require(own, FORK, "the child got the parent's object (a cache outside the registry?)")
        kit.require(child_builds == 1, FORK, f"the child built {child_builds} times (1 expected)")
        kit.require(spec.get() is parent_obj, FORK, "the parent's get() returns another object")
        if alive is not None:
            try:
                alive(parent_obj)
            except Exception as exc:
                kit.fail(
                    FORK, f"the parent's object stopped working after a child ran: {exc!r}", exc
                )
        kit.require(kit.stats(spec).builds == builds, FORK, "the parent built again after the fork")


def check_teardown_order(spec: Spec[Any], *, identity: Mapping[str, Any]) -> None:
    """close() tears this process's objects down newest first, and get() then builds anew.

    `identity`: changes giving a second spec that builds. Closes the registry
    first, for a clean state. Does nothing for loop scope.
    """
    if spec.scope == "loop":
        return
    with kit.property(TEARDOWN_ORDER):
        older, newer = spec, spec.replace(**identity)
        kit.require(newer.cache_key() != older.cache_key(), TEARDOWN_ORDER, "identity moves no key")
        registry().close()
        closed: list[str] = []
        with kit.recording_teardowns(type(spec), closed):
            older.get()
            newer.get()
            builds = kit.stats(older).builds
            registry().close()
        expected = [newer.cache_key(), older.cache_key()]
        if closed != expected:
            kit.fail(TEARDOWN_ORDER, kit.teardown_problem(closed, expected))
        kit.require(
            len(registry()) == 0, TEARDOWN_ORDER, f"{len(registry())} objects live after close()"
        )
        kit.require(older.get() is not None, TEARDOWN_ORDER, "get() after close() returned None")
        kit.require(
            kit.stats(older).builds == builds + 1,
            TEARDOWN_ORDER,
            "get() after close() built nothing",
        )
