"""prefect-dask's DaskTaskRunner on a cluster it connects to, bound to specs by `bind_to_workers`.

A cluster the runner creates gets the warm-up plugin in its `cluster_kwargs`
(see `_prefect_workers`). A cluster that already runs (`address=`, `cluster=`)
is shared: the plugin is registered through the runner's client when the runner
starts, so every worker, and each one that joins later, builds the specs; it is
removed when the runner stops, so every worker closes them, and the cluster
goes on running for its other users. A module of its own so that
`handles.integrations.prefect` imports prefect-dask only when given a DaskTaskRunner.
"""

from __future__ import annotations

import uuid
from typing import Any, Self

import distributed
from prefect_dask.task_runners import DaskTaskRunner

from handles._spec import Spec
from handles.integrations.dask import SpecWarmUp


def bind_dask_cluster(runner: DaskTaskRunner, specs: tuple[Spec[Any], ...]) -> BoundDaskTaskRunner:
    """A copy of `runner` (which connects to a running cluster) that registers the specs' plugin."""
    if isinstance(runner, BoundDaskTaskRunner):
        specs = (*runner.specs, *specs)
    elif type(runner) is not DaskTaskRunner:
        raise TypeError(
            "bind_to_workers takes prefect-dask's DaskTaskRunner itself, "
            f"not {type(runner).__name__}"
        )
    return BoundDaskTaskRunner(runner, specs)


class BoundDaskTaskRunner(DaskTaskRunner):
    """A DaskTaskRunner from `bind_to_workers` for a cluster that runs without it.

    Process-scoped specs are built by the `SpecWarmUp` plugin on every worker,
    present and future, while the runner runs; thread-scoped ones by each
    executor thread on first use (they stay with those threads, which the
    shared cluster keeps).
    """

    def __init__(self, runner: DaskTaskRunner, specs: tuple[Spec[Any], ...]) -> None:
        super().__init__(
            # prefect-dask refuses cluster_kwargs and adapt_kwargs with address=
            # or cluster=: only the settings it accepts are passed on.
            cluster=getattr(runner, "_cluster", None),
            address=runner.address,
            client_kwargs=runner.client_kwargs,
            performance_report_path=runner.performance_report_path,
        )
        self.specs = specs
        self._plugin: str | None = None

    def duplicate(self) -> BoundDaskTaskRunner:
        # Prefect enters a duplicate for each flow run. prefect-dask's own
        # duplicate() drops cluster= (then a copy would start a LocalCluster of
        # its own); this one keeps it.
        return type(self)(self, self.specs)

    def __enter__(self) -> Self:
        super().__enter__()  # type: ignore[no-untyped-call]  # prefect-dask's
        if _in_a_dask_worker():
            # Prefect enters a copy of the flow's runner around each task run it
            # hydrates in a worker: the flow's own runner registered the plugin.
            return self
        shared = [spec for spec in self.specs if spec.scope == "process"]
        if shared:
            plugin = SpecWarmUp(*shared, prefect_logs=True)
            # One name per runner: two flows sharing the cluster and the specs
            # each remove only their own plugin.
            plugin.name = f"{plugin.name}-{uuid.uuid4().hex[:8]}"
            try:
                self.client.register_plugin(plugin)
            except BaseException:
                super().__exit__(None, None, None)  # close the client it opened
                raise
            self._plugin = plugin.name
        return self

    def __exit__(self, *exc_info: Any) -> None:
        name, self._plugin = self._plugin, None
        try:
            if name is not None:
                # Every running worker runs the plugin's teardown (closes the
                # specs); the cluster keeps running for its other users.
                self.client.unregister_worker_plugin(name)  # type: ignore[no-untyped-call]
        finally:
            super().__exit__(*exc_info)


def _in_a_dask_worker() -> bool:
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True
