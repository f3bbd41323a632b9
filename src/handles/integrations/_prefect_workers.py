"""Worker life under Prefect's task runners: specs built as workers start, closed as they stop."""

from __future__ import annotations

import atexit
import logging
import sys
from collections.abc import Callable
from typing import Any, Self, TypeVar, cast

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from handles._spec import Spec
from handles.integrations._prefect_logs import route_registry_logs
from handles.integrations._prefect_loop import WorkerLoopPool, adopt_pool, start_process_loop
from handles.integrations._prefect_stats import (
    flow_run_and_settings,
    publish_at_worker_end,
    publish_stats,
)
from handles.integrations._prefect_version import PROCESS_POOL_INITIALIZER, require_prefect
from handles.integrations._warm import checked, release, warm

__all__ = ["BoundThreadPoolTaskRunner", "bind_to_workers", "warm_up"]

logger = logging.getLogger("handles")


def warm_up(*specs: Spec[Any]) -> None:
    """Build `specs` in this worker before its first task, and route registry logs.

    A worker initializer: `ProcessPoolTaskRunner(initializer=warm_up, initargs=(a, b))`.
    Process pool tasks run in the worker's main thread, the same thread as the
    initializer, so thread-scoped specs are warmed for them too. A failed build
    is logged and retried by the first task that needs it. `bind_to_workers`
    also closes them when the worker stops.
    """
    route_registry_logs()
    warm(specs)


RunnerT = TypeVar("RunnerT", bound=TaskRunner[Any])


def bind_to_workers(runner: RunnerT, *specs: Spec[Any]) -> RunnerT:
    """A copy of `runner` that builds `specs` as each worker starts and closes them as it stops.

        @flow(task_runner=bind_to_workers(ProcessPoolTaskRunner(max_workers=2), NLP, DB))

    - ThreadPoolTaskRunner: process-scoped specs are built once, in the flow's
      process, when the runner starts, and closed when it stops. Each pool
      thread has one event loop for its async task runs, from its start to its
      end; it builds the thread-scoped specs, and the loop-scoped ones on its
      loop, as it starts, and closes them (and the loop) as it ends, when the
      runner stops.
    - ProcessPoolTaskRunner: every spec is built in each worker's main thread,
      where its tasks run (after your own initializer, if any), loop-scoped ones
      on the worker's one event loop for async task runs; all are closed, and
      the loop too, when the worker exits.
    - DaskTaskRunner: process-scoped specs are built as each worker starts and
      closed as it closes (the `SpecWarmUp` plugin); thread-scoped ones by each
      executor thread on first use. On a cluster it connects to (`address=`),
      the plugin is registered when the runner starts (workers joining later
      get it too) and removed when it stops: every worker closes the specs and
      the cluster goes on running.
    - RayTaskRunner, when it calls `ray.init`: every spec is built by Ray's
      worker setup hook in each worker's main thread, where its tasks run, and
      closed there when the runner stops (`handles.integrations.ray.WorkerSpecs`).

    On Dask and Ray each async task run still gets an event loop of its own
    (prefect-dask and prefect-ray call `asyncio.run()` per run): loop-scoped
    specs are accepted there and built by each run's `aget()`.

    A failed build is logged and retried by the first task that needs the spec.
    Registry lines go to the run logs in worker processes (in the flow's own
    process, call `route_registry_logs()` to have them there too). `runner`
    itself is unchanged; the copy keeps the binding when Prefect duplicates it
    for each flow run.
    """
    bound = checked(specs, "bind_to_workers", loops=True)
    if isinstance(runner, BoundThreadPoolTaskRunner):
        return cast(RunnerT, runner.duplicate().bound_to((*runner.specs, *bound)))
    if type(runner) is ThreadPoolTaskRunner:
        # Prefect keeps the pool size private; its own duplicate() reads it too.
        fresh = BoundThreadPoolTaskRunner(max_workers=cast(Any, runner)._max_workers)
        return cast(RunnerT, fresh.bound_to(bound))
    if isinstance(runner, ProcessPoolTaskRunner):
        return cast(RunnerT, _bind_process_pool(runner, bound))
    dask = sys.modules.get("prefect_dask.task_runners")
    if dask is not None and isinstance(runner, dask.DaskTaskRunner):
        return cast(RunnerT, _bind_dask(runner, bound))
    ray = sys.modules.get("prefect_ray.task_runners")
    if ray is not None and isinstance(runner, ray.RayTaskRunner):
        from handles.integrations._prefect_ray import bind_ray  # noqa: PLC0415  (prefect-ray)

        return cast(RunnerT, bind_ray(runner, _unlooped(bound)))
    raise TypeError(
        "bind_to_workers takes Prefect's ThreadPoolTaskRunner, ProcessPoolTaskRunner, "
        f"DaskTaskRunner or RayTaskRunner; got {type(runner).__name__}"
    )


class BoundThreadPoolTaskRunner(ThreadPoolTaskRunner[Any]):
    """A ThreadPoolTaskRunner from `bind_to_workers`: its specs live as long as it runs.

    Each pool thread keeps one event loop for its async task runs, from its
    start to its end (handles.integrations._prefect_loop).
    """

    specs: tuple[Spec[Any], ...] = ()
    _pool: WorkerLoopPool | None = None
    _warned = False
    _flow_run: Any = None

    def bound_to(self, specs: tuple[Spec[Any], ...]) -> BoundThreadPoolTaskRunner:
        self.specs = specs
        return self

    def duplicate(self) -> BoundThreadPoolTaskRunner:
        return cast(BoundThreadPoolTaskRunner, super().duplicate()).bound_to(self.specs)

    def __enter__(self) -> Self:
        super().__enter__()
        per_worker = tuple(spec for spec in self.specs if spec.scope != "process")
        self._pool = adopt_pool(self, per_worker)
        warm(self._shared())  # here, in the flow's process: no logging is changed
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            super().__exit__(*exc_info)  # waits for the pool's threads to close their loops
        finally:
            self._pool = None
            _publish_here(self._flow_run)  # the threads share this process's registry: one table
            release(self._shared())

    def submit(self, task: Any, *args: Any, **kwargs: Any) -> Any:
        if self._flow_run is None:  # the run the registry table is published on, at exit
            self._flow_run = flow_run_and_settings()[0]
        future = super().submit(task, *args, **kwargs)
        pool = self._pool
        shared = pool is None or pool.last_submit_shared()
        if task.isasync and not shared and not self._warned:
            self._warned = True
            logger.warning(
                "this Prefect version hands async task runs to its pool in a way handles "
                "does not know: each runs on an event loop of its own, and loop-scoped "
                "specs are built once per task run"
            )
        return future

    def _shared(self) -> list[Spec[Any]]:
        # Thread-scoped objects belong to the pool's threads, which build and
        # close their own: one built here would serve no task.
        return [spec for spec in self.specs if spec.scope == "process"]


def _bind_process_pool(runner: Any, specs: tuple[Spec[Any], ...]) -> Any:
    # Older runners drop the initializer below without a word: say so instead.
    require_prefect(PROCESS_POOL_INITIALIZER, "bind_to_workers(ProcessPoolTaskRunner(...))")
    bound = runner.duplicate()
    # The worker initializer and its arguments: Prefect keeps them private, and
    # its duplicate() carries them to every flow run's copy of the runner.
    bound._initializer = _ProcessWorkerLife(
        specs, getattr(runner, "_initializer", None), getattr(runner, "_initargs", ())
    )
    bound._initargs = ()
    return bound


class _ProcessWorkerLife:
    """A process-pool worker initializer: your initializer, then the specs, closed at exit.

    Pickled into every worker by name (spawn), with the specs and your initializer.
    """

    def __init__(
        self,
        specs: tuple[Spec[Any], ...],
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        self.specs = specs
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self.flow_run: tuple[Any, dict[str, str]] = (None, {})

    def __getstate__(self) -> dict[str, Any]:
        # Pickled as the pool spawns each worker, inside the flow run: the run
        # (and API) the worker's registry table is published on when it exits.
        return {**self.__dict__, "flow_run": flow_run_and_settings()}

    def __call__(self) -> None:
        if self.initializer is not None:
            self.initializer(*self.initargs)
        route_registry_logs()
        others = _unlooped(self.specs)
        warm(others)
        # Tasks ran in this (main) thread, which also runs exit handlers: its
        # thread-scoped objects close here too. Registered after handles' own
        # handler, so it runs first.
        atexit.register(release, others)
        atexit.register(publish_at_worker_end, *self.flow_run)  # runs before release
        # Registered last, so it runs first: the loop's objects go on the loop.
        start_process_loop(self.specs)


def _publish_here(flow_run_id: Any) -> None:
    if flow_run_id is None:
        return  # no task ran in a flow run: no run to attach the table to
    try:
        publish_stats(flow_run_id=flow_run_id)
    except Exception:  # a stopping runner must not fail on its report
        logger.warning("publishing the registry stats failed", exc_info=True)


def _unlooped(specs: tuple[Spec[Any], ...]) -> tuple[Spec[Any], ...]:
    return tuple(spec for spec in specs if spec.scope != "loop")


def _bind_dask(runner: Any, specs: tuple[Spec[Any], ...]) -> Any:
    from handles.integrations.dask import SpecWarmUp  # noqa: PLC0415  (prefect-dask)

    if runner.address or getattr(runner, "_cluster", None) is not None:
        from handles.integrations._prefect_dask import bind_dask_cluster  # noqa: PLC0415

        return bind_dask_cluster(runner, specs)  # registered when it starts: see there
    bound = runner.duplicate()
    shared = [spec for spec in specs if spec.scope == "process"]
    if shared:
        plugin = SpecWarmUp(*shared, prefect_logs=True)
        plugins = bound.cluster_kwargs.get("plugins") or set()
        added = [*plugins, plugin] if isinstance(plugins, list | tuple) else {*plugins, plugin}
        bound.cluster_kwargs = {**bound.cluster_kwargs, "plugins": added}
    return bound
