"""The contract every spec kind keeps. Each kind joins through a case in support/cases_*.py."""

from __future__ import annotations

import asyncio
import json
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import pytest

import handles
from handles import BuildError, Spec
from support.cases import KindCase, all_cases
from support.forking import run_in_fork

CASES = all_cases()


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest) -> KindCase:
    kind_case: KindCase = request.param
    for module in kind_case.requires:
        pytest.importorskip(module, reason=f"{kind_case.name} needs {module}")
    return kind_case


@pytest.fixture
def spec(case: KindCase, tmp_path) -> Spec[Any]:
    return case.make(tmp_path)


@pytest.fixture
def live() -> Iterator[Callable[[Spec[Any]], Any]]:
    """`spec.get()`, or for loop-scoped kinds `await spec.aget()` on one event loop.

    The loop runs in a thread of its own for the whole test, so callers from any
    thread share it, as the coroutines of one application share their loop.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def get(spec: Spec[Any]) -> Any:
        if spec.scope != "loop":
            return spec.get()
        return asyncio.run_coroutine_threadsafe(spec.aget(), loop).result(timeout=120)

    yield get
    # Closing the loop's async generators closes its objects, on the loop.
    asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(timeout=120)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=120)
    loop.close()


NOT_FOR_LOOPS = "a loop-scoped object lives and dies with its event loop: see tests/test_async.py"


def stats_of(spec: Spec[Any]) -> handles.KeyStats | None:
    return handles.registry().stats().get(spec.cache_key())


def test_pickle_round_trip_is_small_and_carries_no_live_state(spec, live):
    before = pickle.dumps(spec)
    live(spec)
    after = pickle.dumps(spec)
    assert after == before, "a used spec must pickle exactly like a fresh one"
    assert len(before) < 1024, f"pickled spec is {len(before)} bytes"
    assert pickle.loads(before) == spec
    assert cloudpickle.loads(cloudpickle.dumps(spec)) == spec


def test_json_round_trip(spec):
    text = spec.model_dump_json()
    assert type(spec).model_validate_json(text) == spec
    rebuilt = handles.spec_from_json(text)
    assert rebuilt == spec
    assert rebuilt.cache_key() == spec.cache_key()
    assert json.loads(text)["kind"] == spec.kind


def test_dump_is_canonical(spec):
    dumped = spec.model_dump(mode="json")
    assert list(dumped) == sorted(dumped)
    assert spec.replace().model_dump_json() == spec.model_dump_json()


def test_key_is_equal_across_processes_and_hash_seeds(case, spec, subprocess_env):
    modules = [type(spec).__module__, *case.setup_modules]  # test kinds are not in the table
    script = (
        "import sys, json, importlib, handles\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "s = handles.spec_from_json(sys.stdin.read())\n"
        "print(json.dumps([s.cache_key(), s.model_dump_json()]))\n"
    )
    results = []
    for seed in ("1", "2"):
        env = {**subprocess_env, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script],
            input=spec.model_dump_json(),
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        results.append(json.loads(out.stdout))
    assert results[0] == results[1] == [spec.cache_key(), spec.model_dump_json()]


def test_placement_change_keeps_the_key_identity_change_moves_it(case, spec):
    other = case.identity_variant(spec)
    assert other != spec
    assert other.cache_key() != spec.cache_key()
    if case.placement_variant is None:
        assert not type(spec).placement_fields
        return
    moved = case.placement_variant(spec)
    assert moved != spec
    assert moved.cache_key() == spec.cache_key()
    assert moved._instance_key() != spec._instance_key(), "placement still picks the live object"


def test_get_reuses_one_object(spec, live):
    first = live(spec)
    assert live(spec) is first
    assert live(type(spec).model_validate_json(spec.model_dump_json())) is first
    stats = stats_of(spec)
    assert stats is not None
    assert stats.builds == 1
    assert stats.hits == 2


def test_single_flight_with_64_threads(case, spec, live):
    barrier = threading.Barrier(64)
    got: list[Any] = [None] * 64
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            got[i] = live(spec)
            assert live(spec) is got[i]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    stats = stats_of(spec)
    assert stats is not None
    if spec.scope in ("process", "loop"):  # the loop: one, shared by its coroutines
        assert stats.builds == 1
        assert all(obj is got[0] for obj in got)
    else:
        assert stats.builds == 64, "one object per thread"
        assert len({id(obj) for obj in got}) == 64


def test_failing_build_is_not_cached(case, tmp_path, live):
    broken = case.broken(tmp_path)
    for attempt in (1, 2):
        with pytest.raises(BuildError) as info:
            live(broken)
        assert broken.kind in str(info.value) or type(broken).__name__ in str(info.value)
        assert info.value.__cause__ is not None
        stats = stats_of(broken)
        assert stats is not None
        assert (stats.builds, stats.errors, stats.live) == (0, attempt, 0)
    assert broken not in handles.registry()


def test_failing_build_reaches_every_waiter(case, tmp_path, live):
    broken = case.broken(tmp_path)
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            live(broken)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 16
    assert all(isinstance(e, BuildError) and e.__cause__ is not None for e in errors)
    assert len({id(e) for e in errors}) == 16, "each waiter gets its own exception"
    assert broken not in handles.registry()


def _child_after_fork(spec: Spec[Any], parent_obj: Any) -> tuple[int, bool, int]:
    before = handles.registry().stats()
    obj = spec.get()
    stats = handles.registry().stats()[spec.cache_key()]
    return len(before), obj is not parent_obj, stats.builds


def test_fork_child_builds_its_own(case, spec):
    if spec.scope == "loop":
        pytest.skip(NOT_FOR_LOOPS)
    parent_obj = spec.get()
    result = run_in_fork(_child_after_fork, spec, parent_obj)
    assert result == (0, True, 1), "the child starts empty and builds its own"
    assert spec.get() is parent_obj
    case.alive(parent_obj)
    stats = stats_of(spec)
    assert stats is not None
    assert stats.builds == 1


def test_close_tears_down_newest_first(case, spec, monkeypatch):
    if spec.scope == "loop":
        pytest.skip(NOT_FOR_LOOPS)
    closed: list[str] = []
    original = type(spec).teardown

    def recording(self: Spec[Any], value: Any) -> None:
        closed.append(self.cache_key())
        original(self, value)

    monkeypatch.setattr(type(spec), "teardown", recording)
    older, newer = spec, case.identity_variant(spec)
    older.get()
    newer.get()
    handles.registry().close()
    assert closed == [newer.cache_key(), older.cache_key()]
    assert len(handles.registry()) == 0
    again = older.get()
    assert again is not None
    assert stats_of(older).builds == 2


def test_a_spec_is_one_value_not_an_iterable_of_fields(spec):
    # Prefect's task.map() maps over iterable arguments: a spec must be broadcast whole.
    with pytest.raises(TypeError):
        iter(spec)
    assert dict(spec) == {name: getattr(spec, name) for name in type(spec).model_fields}
