"""Every engine, one matrix: thread pool, process pool, Dask and Ray.

For each runner: `task.map(spec, items)` hands every run the spec whole, whatever
the item count (the spec's field count included), on a bare task and through
preflight; and `bind_to_workers(runner, ...)` builds the specs once per
worker as it starts (tasks find them built) and closes them in every worker as
it stops. Teardown is proven by marker files written by the specs' teardown
(tests/support/markers.py) in whichever process and thread ran it.

Ray: one local cluster (2 CPUs, no dashboard) serves the whole module. It is
started in a process of its own, so that every flow's RayTaskRunner connects to
it as a new Ray job and gets its own worker setup hook, and it is shut down when
the module ends. Ray adds about 10 s to start, then a few seconds per flow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from spec_flows import fan_out, map_over_items

from handles.integrations.prefect import bind_to_workers
from support.kinds import EchoSpec
from support.markers import (
    MarkerSpec,
    ThreadMarkerSpec,
    markers,
    note_start,
    started,
    task_pid,
)

pytestmark = pytest.mark.usefixtures("prefect_server")

ENGINES = ["thread", "process", "dask", "ray"]

RAY_KEEPER = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False, _temp_dir=sys.argv[1])
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the tests close it
ray.shutdown()
"""


@pytest.fixture(scope="module")
def ray_address(prefect_server: Any) -> Iterator[str]:
    """A local Ray cluster for this module; yields the address drivers connect to."""
    pytest.importorskip("prefect_ray", reason="needs prefect-ray (the ray extra)")
    folder = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")  # else Ray writes a token into ~/.ray
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        keeper = subprocess.Popen(
            [sys.executable, "-c", RAY_KEEPER, folder],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert keeper.stdout is not None
            address = keeper.stdout.readline().strip()
            assert address, "the Ray cluster did not start"
            yield address
        finally:
            assert keeper.stdin is not None
            keeper.stdin.close()
            try:
                keeper.wait(timeout=60)
            except subprocess.TimeoutExpired:
                keeper.kill()
                keeper.wait()
            shutil.rmtree(folder, ignore_errors=True)


def runner_for(engine: str, request: pytest.FixtureRequest) -> Any:
    if engine == "thread":
        return ThreadPoolTaskRunner(max_workers=3)
    if engine == "process":
        return ProcessPoolTaskRunner(max_workers=2)
    if engine == "dask":
        prefect_dask = pytest.importorskip("prefect_dask", reason="needs prefect-dask")
        return prefect_dask.DaskTaskRunner(
            cluster_kwargs={
                "n_workers": 2,
                "processes": True,
                "threads_per_worker": 2,
                "dashboard_address": None,
            }
        )
    address = request.getfixturevalue("ray_address")
    from prefect_ray import RayTaskRunner

    return RayTaskRunner(address=address)


# -- task.map ------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_map_hands_every_run_the_whole_spec(engine, request, tmp_path):
    spec = EchoSpec(name=str(tmp_path / "shared"))
    fields = len(EchoSpec.model_fields)  # were specs iterable, runs would get ("kind", ...)
    others = [EchoSpec(name=str(tmp_path / f"other-{i}")) for i in range(2)]
    counts = [3, fields]
    state = map_over_items.with_options(task_runner=runner_for(engine, request))(
        spec, others, counts, return_state=True
    )
    assert state.is_completed(), state
    got = state.result()

    def runs(n: int, name: str = spec.name) -> list[dict[str, Any]]:
        return [{"item": i, "spec": name} for i in range(n)]

    def seen(rows: list[dict[str, Any]] | str) -> Any:
        if isinstance(rows, str):
            return rows  # the error .map() or a run raised
        return [{"item": row["item"], "spec": row["spec"]} for row in rows]

    assert [seen(rows) for rows in got["preflight"]] == [runs(n) for n in counts]
    assert seen(got["explicit"]) == runs(counts[0])
    assert seen(got["one spec per run"]) == [
        {"item": i, "spec": other.name} for i, other in enumerate(others)
    ]
    assert [seen(rows) for rows in got["plain"]] == [runs(n) for n in counts]


# -- bind_to_workers -------------------------------------------------------------------


def rows_by_worker(results: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in results:
        by_pid[row["pid"]].append(row)
    return by_pid


@pytest.mark.parametrize("engine", ENGINES)
def test_bound_specs_live_as_long_as_each_worker(engine, request, tmp_path):
    shared = MarkerSpec(folder=str(tmp_path), name="shared")
    per_thread = ThreadMarkerSpec(folder=str(tmp_path), name="per-thread")
    runner = runner_for(engine, request)
    if engine == "process":  # with an initializer of the user's own, which runs first
        runner = ProcessPoolTaskRunner(
            max_workers=2, initializer=note_start, initargs=(str(tmp_path),)
        )
    runner = bind_to_workers(runner, shared, per_thread)
    state = fan_out.with_options(task_runner=runner)([shared, per_thread], 8, return_state=True)
    assert state.is_completed(), state
    by_pid = rows_by_worker(state.result())

    # The shared object: built once per worker process, before its first task.
    built = markers(tmp_path, "built", "shared")
    assert sorted(pid for pid, _ in built) == sorted(set(pid for pid, _ in built))
    assert set(by_pid) <= {pid for pid, _ in built}
    for rows in by_pid.values():
        assert [row["fresh"][shared.cache_key()] for row in rows] == [False] * len(rows)
    if engine == "thread":
        assert built == [(os.getpid(), threading.get_ident())], "built once, by the flow"
    if engine == "process":
        assert started(tmp_path) == sorted(pid for pid, _ in built)

    # The thread-scoped object: built where tasks run. Process pools and Ray run
    # tasks in the worker's main thread, where it is built before the first task;
    # the thread pool's and Dask's task threads build their own on first use.
    threads_built = markers(tmp_path, "built", "per-thread")
    task_threads = {(row["pid"], row["thread"]) for rows in by_pid.values() for row in rows}
    assert task_threads <= set(threads_built)
    if engine in ("process", "ray"):
        for rows in by_pid.values():
            assert [row["fresh"][per_thread.cache_key()] for row in rows] == [False] * len(rows)

    # Every object built was torn down, in the process and thread that built it,
    # by the time the flow returned (the runner had stopped).
    # Thread-scoped ones by their own thread: the pool's and Dask's as those threads
    # end, process pools' and Ray's in the main thread.
    assert markers(tmp_path, "closed", "shared") == built
    assert markers(tmp_path, "closed", "per-thread") == threads_built


def test_ray_worker_specs_without_prefect(ray_address, tmp_path):
    import ray
    from prefect_ray import RayTaskRunner

    from handles.integrations.ray import WorkerSpecs

    shared = MarkerSpec(folder=str(tmp_path), name="shared")
    per_thread = ThreadMarkerSpec(folder=str(tmp_path), name="per-thread")
    workers = WorkerSpecs(shared, per_thread)
    base = {
        "env_vars": {"HANDLES_TEST_MARKERS": str(tmp_path)},
        "worker_process_setup_hook": "support.markers.note_start_from_env",  # runs first
    }
    ray.init(ray_address, runtime_env=workers.runtime_env(base))
    try:
        with workers:
            task = ray.remote(task_pid)
            pids = set(ray.get([task.remote(shared, per_thread) for _ in range(6)]))
            # A bound RayTaskRunner needs to call ray.init itself, with its hook.
            bound = bind_to_workers(RayTaskRunner(address=ray_address), shared)
            with pytest.raises(RuntimeError, match="already initialized"), bound:
                pass
    finally:
        ray.shutdown()
    built = markers(tmp_path, "built", "shared")
    assert pids <= {pid for pid, _ in built}
    assert {pid for pid, _ in built} <= set(started(tmp_path))  # the hook given ran first
    assert markers(tmp_path, "closed", "shared") == built
    assert markers(tmp_path, "closed", "per-thread") == markers(tmp_path, "built", "per-thread")


# -- what bind_to_workers accepts and keeps ---------------------------------------------


def test_the_binding_survives_prefects_duplicate_and_leaves_the_runner_alone(tmp_path):
    from handles.integrations._prefect_workers import _ProcessWorkerLife

    spec = MarkerSpec(folder=str(tmp_path), name="kept")
    threads = ThreadPoolTaskRunner(max_workers=3)
    bound = bind_to_workers(threads, spec).duplicate()  # Prefect copies it per flow run
    assert bound.specs == (spec,)
    assert bound.duplicate() == threads  # same pool size
    assert bind_to_workers(bound, per := ThreadMarkerSpec(folder="x", name="y")).specs == (
        spec,
        per,
    )

    pool = ProcessPoolTaskRunner(max_workers=2, initializer=note_start, initargs=("x",))
    life = bind_to_workers(pool, spec).duplicate()._initializer
    assert isinstance(life, _ProcessWorkerLife)
    assert (life.specs, life.initializer, life.initargs) == ((spec,), note_start, ("x",))
    assert pool._initializer is note_start  # the runner passed in is unchanged


def test_dask_gets_the_warm_up_plugin_for_process_scoped_specs(tmp_path):
    prefect_dask = pytest.importorskip("prefect_dask", reason="needs prefect-dask")
    from handles.integrations.dask import SpecWarmUp

    shared = MarkerSpec(folder=str(tmp_path), name="shared")
    per_thread = ThreadMarkerSpec(folder=str(tmp_path), name="per-thread")
    other = object()
    runner = prefect_dask.DaskTaskRunner(cluster_kwargs={"n_workers": 1, "plugins": [other]})
    bound = bind_to_workers(runner, shared, per_thread).duplicate()
    plugins = bound.cluster_kwargs["plugins"]
    assert plugins[0] is other
    assert isinstance(plugins[1], SpecWarmUp)
    assert plugins[1].specs == (shared,)  # Dask's executor threads build their own
    assert runner.cluster_kwargs["plugins"] == [other]

    # A cluster it connects to gets the plugin through the client when it starts
    # (tests/cluster/test_dask_cluster.py runs that against a real cluster).
    on_a_cluster = prefect_dask.DaskTaskRunner(address="tcp://127.0.0.1:8786")
    joined = bind_to_workers(on_a_cluster, shared).duplicate()
    assert (joined.address, joined.specs) == (on_a_cluster.address, (shared,))


def test_bind_to_workers_refuses_what_it_cannot_bind(tmp_path):
    from typing import ClassVar

    class LoopSpec(MarkerSpec):
        kind: str = "test-loop-marker"
        scope: ClassVar[Any] = "loop"

    class OwnRunner(ThreadPoolTaskRunner):
        pass

    runner = ThreadPoolTaskRunner()
    with pytest.raises(TypeError, match="takes specs"):
        bind_to_workers(runner, "not a spec")  # type: ignore[arg-type]
    # Loop-scoped ones are taken: bound pools give each worker its event loop
    # (tests/prefect/test_prefect_async_loop.py).
    looped = LoopSpec(folder=str(tmp_path), name="l")
    assert bind_to_workers(runner, looped).specs == (looped,)
    with pytest.raises(TypeError, match="got OwnRunner"):
        bind_to_workers(OwnRunner(), MarkerSpec(folder=str(tmp_path), name="m"))
