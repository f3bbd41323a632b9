"""The registry's promises, each tested so that breaking the line that keeps it fails here.

Races run for a fixed number of rounds at a tiny switch interval and call the
registry directly, checking every object handed out (not only the last).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Annotated, ClassVar, Literal

import pytest

import handles
from handles import BuildError, Identity, MissingDependencyError, Scope, Spec
from handles._registry import refs
from support.kinds import CLOSED, EchoSpec, Resource


@pytest.fixture
def tiny_switches() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _run(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# -- the warm path's liveness check ----------------------------------------------------


def test_get_never_hands_out_none_or_a_closed_object_while_others_evict(tiny_switches):
    # Builds that take a moment (the GIL released), so callers queue on each
    # build in flight and wake to an entry another thread may already have
    # retired and torn down: the live check must send them back.
    reg = handles.registry()
    specs = [EchoSpec(name=f"race-{i}", delay=0.0001) for i in range(2)]
    bad: list[object] = []
    handed_out = [0]
    stop = threading.Event()

    def getter() -> None:
        while not stop.is_set():
            for spec in specs:
                value = reg.get(spec)
                handed_out[0] += 1
                if value is None or value.closed:
                    bad.append(value)

    def evicter() -> None:
        while not stop.is_set():
            for spec in specs:
                reg.evict(spec)

    threads = [threading.Thread(target=getter) for _ in range(4)]
    threads.append(threading.Thread(target=evicter))
    for thread in threads:
        thread.start()
    stop.wait(2.0)  # a fixed time, not a timing assertion: the check is on every object
    stop.set()
    for thread in threads:
        thread.join()
    assert handed_out[0] > 100
    assert bad == [], f"{len(bad)} of {handed_out[0]} handed-out objects were None or closed"


# -- eviction order ----------------------------------------------------------------------


def test_the_bound_retires_an_idle_object_before_a_held_one():
    reg = handles.registry()
    reg.max_entries = 2
    try:
        oldest, middle, newest = (EchoSpec(name=n) for n in ("oldest", "middle", "newest"))
        held = oldest.get()  # least recently used, but a task holds it
        middle.get()
        newest.get()  # over the bound: one must go
        assert oldest in reg, "the held object was chosen over an idle one"
        assert middle not in reg
        assert not held.closed
    finally:
        reg.max_entries = None


def test_a_held_object_retired_by_the_bound_is_closed_when_its_holder_lets_go():
    reg = handles.registry()
    reg.max_entries = 1
    try:
        first = EchoSpec(name="first")
        held = first.get()
        EchoSpec(name="second").get()  # only held objects left to choose: first goes
        assert first not in reg
        assert not held.closed, "torn down while a caller held it"
        del held
        reg.close()  # a safe point
        assert EchoSpec(name="first").get() is not None
    finally:
        reg.max_entries = None


# -- single-flight ---------------------------------------------------------------------------


class MissingPackageSpec(Spec[Resource]):
    kind: Literal["test-missing-package"] = "test-missing-package"
    name: Annotated[str, Identity]

    def build(self) -> Resource:
        GATE.wait(30)
        raise MissingDependencyError("nonexistent-package", install="nonexistent-package")


GATE = threading.Event()


def _waiting_in_flight(threads: list[threading.Thread]) -> int:
    """How many of `threads` are blocked waiting on a build in flight (read from their frames)."""
    frames = sys._current_frames()
    count = 0
    for thread in threads:
        frame = frames.get(thread.ident or -1)
        while frame is not None:
            if frame.f_code.co_name == "wait" and frame.f_code.co_filename.endswith("flight.py"):
                count += 1
                break
            frame = frame.f_back
    return count


def test_every_waiter_of_a_failing_build_sees_the_builders_error_type_after_one_build():
    GATE.clear()
    spec = MissingPackageSpec(name="x")
    errors: list[BaseException] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            spec.get()
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(64)]
    for thread in threads:
        thread.start()
    # Release the build only once the 63 others are proven to be waiting on it.
    deadline = 600
    while _waiting_in_flight(threads) < 63 and deadline:
        threading.Event().wait(0.05)
        deadline -= 1
    assert _waiting_in_flight(threads) == 63
    GATE.set()
    for thread in threads:
        thread.join()
    assert len(errors) == 64
    assert {type(e) for e in errors} == {MissingDependencyError}
    assert len({id(e) for e in errors}) == 64, "waiters must not share one exception object"
    assert handles.registry().stats()[spec.cache_key()].errors == 1


def test_a_thread_scoped_build_that_asks_for_itself_fails_at_once():
    class SelfAsking(Spec[Resource]):
        kind: Literal["test-self-asking-thread"] = "test-self-asking-thread"
        scope: ClassVar[Scope] = "thread"
        name: Annotated[str, Identity]

        def build(self) -> Resource:
            self.get()
            return Resource(self.name)

    spec = SelfAsking(name="loop")
    with pytest.raises(BuildError, match="asked for itself"):
        spec.get()
    assert handles.registry().stats()[spec.cache_key()].errors == 1


# -- the teardown rule's fallback ------------------------------------------------------------


def test_the_conservative_rule_keeps_retired_objects_until_close(monkeypatch):
    monkeypatch.setattr(refs, "EXACT", False)
    reg = handles.registry()
    spec = EchoSpec(name="conservative")
    spec.get()  # nobody holds it, but the rule cannot tell
    assert reg.evict(spec)
    reg.close()  # retires nothing more: the evicted object is no longer the registry's
    assert "conservative" not in CLOSED, "the conservative rule tore down on evict()"
    with EchoSpec(name="leased").use() as leased:
        reg.close()
        assert not leased.closed, "close() tore down an object inside a use() block"
    assert leased.closed  # the block ended after close(): torn down then
    assert EchoSpec(name="conservative").get() is not None


def test_a_cold_lookup_closes_a_retired_object_its_holder_has_let_go():
    reg = handles.registry()
    held_spec, other = EchoSpec(name="held-then-free"), EchoSpec(name="other")
    held = held_spec.get()
    other.get()
    reg.close()  # held_spec's object is in use: retired, not torn down
    other.get()  # built again
    assert "held-then-free" not in CLOSED
    del held  # its holder lets go
    EchoSpec(name="other").get()  # a new instance's first call: a lookup, no build
    assert "held-then-free" in CLOSED, "the next call into the registry closes it"


def _closed_resources() -> list[Resource]:
    import gc

    return [o for o in gc.get_objects() if isinstance(o, Resource) and o.closed]


def test_forcing_the_conservative_rule_from_the_environment(run_python, subprocess_env):
    import subprocess

    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.WARNING, stream=sys.stdout)\n"
        "from handles._registry import refs\n"
        "print('exact', refs.EXACT)\n"
    )
    env = {**subprocess_env, "HANDLES_TEARDOWN": "conservative"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().endswith("exact False")
    assert run_python(script).endswith("exact True")  # this interpreter counts exactly


# -- torch: a held part of a model -----------------------------------------------------------


def test_evicting_a_model_leaves_a_held_submodule_working(tmp_path):
    torch = pytest.importorskip("torch")
    import support.tiny_models  # noqa: F401  (registers the tiny-mlp factory)
    from handles import TorchModelSpec

    spec = TorchModelSpec(factory="tiny-mlp")
    part = spec.get().fc1  # the task keeps only the first layer
    weight = part.weight.detach().clone()
    assert handles.registry().evict(spec)
    assert part.weight.shape == weight.shape, "a held submodule's weights were emptied"
    assert torch.equal(part.weight, weight)
    part(torch.ones(1, part.in_features))  # still runs


# -- what the registry tells observers ------------------------------------------------------


def test_listeners_hear_builds_errors_and_evictions_and_stats_count_evictions(tmp_path):
    reg = handles.registry()
    heard: list[tuple[str, str]] = []
    unsubscribe = reg.subscribe(lambda event, kind, key, seconds: heard.append((event, kind)))
    try:
        spec = EchoSpec(name="observed")
        spec.get()
        spec.get()  # a hit: no event
        assert reg.evict(spec)
        broken = EchoSpec(name="broken", fail_if_exists=str(tmp_path))
        with pytest.raises(BuildError):
            broken.get()
        failing = reg.subscribe(lambda *args: 1 / 0)  # never breaks a build
        spec.get()
        failing()
    finally:
        unsubscribe()
    assert heard == [
        ("build", "test-echo"),
        ("evict", "test-echo"),
        ("error", "test-echo"),
        ("build", "test-echo"),
    ]
    stats = reg.stats()[EchoSpec(name="observed").cache_key()]
    assert (stats.builds, stats.hits, stats.evictions) == (2, 1, 1)
    assert reg.totals().evictions >= 1


def test_spec_of_names_the_spec_behind_a_live_object():
    spec = EchoSpec(name="owned")
    value = spec.get()
    assert handles.registry().spec_of(value) == spec
    assert handles.registry().spec_of(Resource("stranger")) is None


def test_a_teardown_that_echoes_a_secret_never_logs_its_value(monkeypatch, caplog):
    from handles import Placement, SecretRef

    monkeypatch.setenv("HANDLES_TEST_TEARDOWN_SECRET", "hunter2-teardown")

    class Echoing(Spec[Resource]):
        kind: Literal["test-echoing-teardown"] = "test-echoing-teardown"
        name: Annotated[str, Identity]
        token: Annotated[SecretRef, Placement]

        def build(self) -> Resource:
            return Resource(self.name)

        def teardown(self, value: Resource) -> None:
            raise RuntimeError(f"cannot close with token {self.token.resolve()}")

    Echoing(name="x", token="env:HANDLES_TEST_TEARDOWN_SECRET").get()
    with caplog.at_level("ERROR", logger="handles"):
        handles.registry().close()
    logged = caplog.text
    assert "closing" in logged
    assert "cannot close with token" in logged
    assert "hunter2-teardown" not in logged


# -- forks and threads ------------------------------------------------------------------------


def _child_gets(spec: EchoSpec) -> tuple[int, bool]:
    import os

    value = spec.get()  # the same spec instance: its getter remembers the parent's entry
    return value.pid, value.pid == os.getpid()


def test_a_forked_child_builds_its_own_object_even_through_a_remembered_entry():
    from support.forking import run_in_fork

    spec = EchoSpec(name="forked")
    parent = spec.get()
    child_pid, own = run_in_fork(_child_gets, spec)
    assert own, f"the child got its parent's object (built in {child_pid})"
    assert not parent.closed


def test_a_threads_retired_object_is_closed_by_that_thread_at_its_next_call():
    from support.kinds import ThreadEchoSpec

    reg = handles.registry()
    built = threading.Event()
    closed_in_main = threading.Event()
    called_again = threading.Event()
    seen: dict[str, bool] = {}

    def worker() -> None:
        ThreadEchoSpec(name="owned-by-worker").get()
        built.set()
        closed_in_main.wait(30)
        seen["closed before its next call"] = "owned-by-worker" in CLOSED
        ThreadEchoSpec(name="another").get()  # the thread's next call into the registry
        seen["closed at its next call"] = "owned-by-worker" in CLOSED
        called_again.set()

    thread = threading.Thread(target=worker)
    thread.start()
    built.wait(30)
    reg.close()  # from another thread: retires the worker's object, never closes it here
    closed_in_main.set()
    called_again.wait(30)
    thread.join()
    assert seen == {"closed before its next call": False, "closed at its next call": True}
