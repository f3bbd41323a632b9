"""Registry behaviour beyond the per-kind contract: scopes, eviction, overrides, teardown, logs."""

from __future__ import annotations

import logging
import threading

import pytest

import handles
from handles import BuildError
from support.kinds import CLOSED, EchoSpec, Resource, ThreadEchoSpec


def test_stats_count_builds_hits_and_seconds():
    spec = EchoSpec(name="stats", delay=0.01)
    for _ in range(5):
        spec.get()
    stats = handles.registry().stats()[spec.cache_key()]
    assert (stats.kind, stats.builds, stats.hits, stats.errors, stats.live) == (
        "test-echo",
        1,
        4,
        0,
        1,
    )
    assert stats.build_seconds >= 0.01


def test_placements_share_stats_but_not_objects():
    cpu, other = EchoSpec(name="placed"), EchoSpec(name="placed", delay=0.001)
    assert cpu.get() is not other.get()
    stats = handles.registry().stats()[cpu.cache_key()]
    assert (stats.builds, stats.live) == (2, 2)


def test_build_logs_one_line(caplog):
    spec = EchoSpec(name="logged")
    with caplog.at_level(logging.INFO, logger="handles"):
        spec.get()
        spec.get()
    lines = [r.getMessage() for r in caplog.records if r.name == "handles"]
    assert len(lines) == 1
    assert lines[0].startswith(f"built test-echo {spec.cache_key()[:12]} in ")


def test_build_error_names_kind_and_spec_and_chains_cause(tmp_path):
    spec = EchoSpec(name="boom", fail_if_exists=str(tmp_path))
    with pytest.raises(BuildError) as info:
        spec.get()
    assert info.value.kind == "EchoSpec"  # as messages name it; the kind name is .spec.kind
    assert info.value.spec.kind == "test-echo"
    assert "EchoSpec(" in str(info.value)
    assert "OSError: refusing to build" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


def test_next_get_after_failure_builds(tmp_path):
    marker = tmp_path / "fail"
    marker.touch()
    spec = EchoSpec(name="flaky", fail_if_exists=str(marker))
    with pytest.raises(BuildError):
        spec.get()
    marker.unlink()
    assert spec.get().ping() == "flaky"
    stats = handles.registry().stats()[spec.cache_key()]
    assert (stats.builds, stats.errors) == (1, 1)


def test_a_build_that_gets_itself_fails_instead_of_deadlocking():
    class Recursive(EchoSpec):
        kind: str = "test-recursive"  # type: ignore[assignment]

        def build(self) -> Resource:
            return self.get()

    with pytest.raises(BuildError, match="asked for itself"):
        Recursive(name="loop").get()


def test_thread_scope_gives_each_thread_its_own_and_closes_it_when_the_thread_ends():
    spec = ThreadEchoSpec(name="per-thread")
    main = spec.get()
    seen: list[Resource] = []

    def worker() -> None:
        seen.append(spec.get())
        seen.append(spec.get())

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen[0] is seen[1]
    assert seen[0] is not main
    assert seen[0].thread != main.thread
    assert seen[0].closed, "a thread's objects are closed when the thread ends"
    assert not main.closed
    assert handles.registry().stats()[spec.cache_key()].builds == 2


def test_close_continues_past_a_failing_teardown(caplog):
    class BadClose(EchoSpec):
        kind: str = "test-bad-close"  # type: ignore[assignment]

        def teardown(self, value: Resource) -> None:
            raise RuntimeError("cannot close")

    good, bad = EchoSpec(name="good-one"), BadClose(name="bad-one")
    good.get()
    bad.get()
    with caplog.at_level(logging.ERROR, logger="handles"):
        handles.registry().close()
    assert "good-one" in CLOSED
    assert any("closing" in r.getMessage() and "bad-one" in r.getMessage() for r in caplog.records)


def test_max_entries_evicts_least_recently_used_and_closes_it():
    reg = handles.registry()
    reg.max_entries = 2
    try:
        a, b, c = (EchoSpec(name=f"lru-{n}") for n in "abc")
        a.get(), b.get()
        a.get()  # a was used since b was built: b is the one to go
        c.get()
        assert CLOSED[-1] == "lru-b"
        assert a in reg
        assert b not in reg
        assert c in reg
        assert not b.get().closed, "an evicted spec builds again"
    finally:
        reg.max_entries = None


def test_max_entries_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        handles.registry().max_entries = 0


def test_evict_closes_one_object():
    spec = EchoSpec(name="evict-me")
    spec.get()
    assert handles.registry().evict(spec)
    assert CLOSED[-1] == "evict-me"
    assert not handles.registry().evict(spec)
    assert not spec.get().closed
    assert handles.registry().stats()[spec.cache_key()].builds == 2


def test_override_replaces_the_object_and_nests():
    spec = EchoSpec(name="real")
    real = spec.get()
    with handles.override(spec, "fake") as value:
        assert value == "fake"
        assert spec.get() == "fake"
        assert EchoSpec(name="real", delay=0.5).get() == "fake", "matching is by cache key"
        with handles.override(spec, "inner"):
            assert spec.get() == "inner"
        assert spec.get() == "fake"
    assert spec.get() is real


def test_override_reaches_other_threads():
    spec = EchoSpec(name="threads-see-it")
    got: list[object] = []
    with handles.override(spec, "fake"):
        t = threading.Thread(target=lambda: got.append(spec.get()))
        t.start()
        t.join()
    assert got == ["fake"]


def test_override_without_building_does_not_build():
    spec = EchoSpec(name="never-built")
    with handles.override(spec, "fake"):
        assert spec.get() == "fake"
    assert spec.cache_key() not in handles.registry().stats()


def test_close_at_interpreter_exit_runs_newest_first(run_python):
    # atexit runs hooks last-registered first: this one, registered before handles
    # is imported, runs after handles has closed the registry.
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: print(','.join(sys.modules['support.kinds'].CLOSED)))\n"
        "from support import kinds\n"
        "kinds.EchoSpec(name='first').get(); kinds.EchoSpec(name='second').get()\n"
    )
    out = run_python(script)
    assert out == "second,first"


def test_closed_objects_are_never_handed_out_again():
    spec = EchoSpec(name="reopen")
    spec.get()
    handles.registry().close()
    assert CLOSED[-1] == "reopen"
    second = spec.get()
    assert not second.closed
    assert handles.registry().stats()[spec.cache_key()].builds == 2


def test_registry_len_contains_and_repr():
    spec = EchoSpec(name="counted")
    assert spec not in handles.registry()
    spec.get()
    assert spec in handles.registry()
    assert len(handles.registry()) == 1
    assert "live=1" in repr(handles.registry())
    assert object() not in handles.registry()


def test_thread_scoped_override_reaches_a_thread_that_already_built():
    spec = ThreadEchoSpec(name="thread-override")
    real = spec.get()
    with handles.override(spec, "fake"):
        assert spec.get() == "fake"
    assert spec.get() is real


def test_a_spec_copy_or_unpickled_spec_gets_the_same_object():
    import copy
    import pickle

    spec = EchoSpec(name="copies")
    obj = spec.get()
    assert copy.copy(spec).get() is obj
    assert copy.deepcopy(spec).get() is obj
    assert pickle.loads(pickle.dumps(spec)).get() is obj
    assert EchoSpec.model_construct(name="copies").get() is obj


def test_explicit_evict_logs_one_line(caplog):
    spec = EchoSpec(name="evict-logged")
    spec.get()
    with caplog.at_level(logging.INFO, logger="handles"):
        caplog.clear()  # only what evict() logs (another test may have left INFO on)
        handles.registry().evict(spec)
    assert [r.getMessage() for r in caplog.records if r.name == "handles"] == [
        f"evicted test-echo {spec.cache_key()[:12]}"
    ]
