"""Dask integration: build chosen specs in every Dask worker before its first task.

    from handles.integrations.dask import SpecWarmUp

    client.register_plugin(SpecWarmUp(NLP, DB))                    # a running cluster
    DaskTaskRunner(cluster_kwargs={"n_workers": 2, "plugins": {SpecWarmUp(NLP)}})

Workers that join later run the plugin too. A worker closes the specs when it
closes, or when the plugin is removed. With Prefect,
`bind_to_workers(DaskTaskRunner(address=...), NLP)` registers it when the flow's runner
starts and removes it when the runner stops (docs/clusters.md). Never imported by
`import handles`; importing it imports distributed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from handles._keys import digest
from handles._optional import require
from handles._spec import Spec
from handles.integrations._warm import release, warm

require("distributed", "dask")

from distributed.diagnostics.plugin import WorkerPlugin  # noqa: E402  (after the install hint)

if TYPE_CHECKING:
    from distributed import Worker

__all__ = ["SpecWarmUp"]


class SpecWarmUp(WorkerPlugin):
    """A Dask worker plugin that builds process-scoped specs when a worker starts.

    Thread-scoped specs are refused: Dask runs tasks on its own executor
    threads, so an object built by the plugin would serve no task.
    prefect_logs: also send registry lines to Prefect's run logs (Prefect tasks
    on Dask workers).
    """

    def __init__(self, *specs: Spec[Any], prefect_logs: bool = False) -> None:
        for spec in specs:
            if not isinstance(spec, Spec):
                raise TypeError(f"SpecWarmUp takes specs, got {type(spec).__name__}")
            if spec.scope != "process":
                raise ValueError(
                    f"{type(spec).__name__} is thread-scoped: Dask's executor threads "
                    "build their own on first use, so warming it up would not help"
                )
        self.specs = specs
        self.prefect_logs = prefect_logs
        # Same specs, same name: registering twice replaces rather than adds.
        keys = sorted(spec._instance_key() for spec in specs)
        self.name = f"handles-warm-up-{digest(keys)[:12]}"

    def setup(self, worker: Worker) -> None:
        if self.prefect_logs:
            # Only with Prefect, which this integration does not need otherwise.
            from handles.integrations.prefect import route_registry_logs  # noqa: PLC0415

            route_registry_logs()
        warm(self.specs)

    def teardown(self, worker: Worker) -> None:
        release(self.specs)
