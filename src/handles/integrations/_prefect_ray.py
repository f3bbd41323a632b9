"""prefect-ray's RayTaskRunner, bound to specs: what `bind_to_workers` returns for one.

A module of its own so that `handles.integrations.prefect` imports prefect-ray
only when given a RayTaskRunner.
"""

from __future__ import annotations

import os
from typing import Any, Self

import ray
from prefect_ray.task_runners import RayTaskRunner

from handles._spec import Spec
from handles.integrations.ray import WorkerSpecs


def bind_ray(runner: RayTaskRunner, specs: tuple[Spec[Any], ...]) -> BoundRayTaskRunner:
    _refuse_ray_client(runner.address)
    if isinstance(runner, BoundRayTaskRunner):
        specs = (*runner.specs, *specs)
    elif type(runner) is not RayTaskRunner:
        raise TypeError(
            f"bind_to_workers takes prefect-ray's RayTaskRunner itself, not {type(runner).__name__}"
        )
    return BoundRayTaskRunner(address=runner.address, init_kwargs=runner.init_kwargs, specs=specs)


class BoundRayTaskRunner(RayTaskRunner):  # type: ignore[misc]  # prefect-ray is untyped
    """A RayTaskRunner from `bind_to_workers`: every Ray worker builds the specs as it starts.

    The runner gives Ray the setup hook when it calls `ray.init`; when it stops,
    every worker closes its specs before Ray is shut down. So Ray must not be
    initialized in this process already (the runner would then use that Ray as
    it is, without the hook).
    """

    address: str | None
    init_kwargs: dict[str, Any]

    def __init__(
        self,
        address: str | None = None,
        init_kwargs: dict[str, Any] | None = None,
        specs: tuple[Spec[Any], ...] = (),
    ) -> None:
        super().__init__(address=address, init_kwargs=init_kwargs)
        self.specs = specs
        self._workers: WorkerSpecs | None = None

    def duplicate(self) -> BoundRayTaskRunner:
        return type(self)(address=self.address, init_kwargs=self.init_kwargs, specs=self.specs)

    def __enter__(self) -> Self:
        if ray.is_initialized():
            if ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
                # Prefect enters a copy of the flow's runner around each task run,
                # here in a Ray worker: the worker's job has the hook already.
                super().__enter__()
                return self
            raise RuntimeError(
                "bind_to_workers(RayTaskRunner(...)) gives Ray its worker setup hook in "
                "ray.init, but Ray is already initialized in this process: call "
                "ray.shutdown() first, or pass handles.integrations.ray.WorkerSpecs"
                "(...).runtime_env() to your own ray.init"
            )
        _refuse_ray_client(self.address)  # RAY_ADDRESS may say so only now
        workers = WorkerSpecs(*self.specs, prefect_logs=True)
        configured = self.init_kwargs
        env = workers.runtime_env(configured.get("runtime_env"))
        self.init_kwargs = {**configured, "runtime_env": env}
        try:
            super().__enter__()  # ray.init(..., runtime_env=env)
        finally:
            self.init_kwargs = configured  # a duplicate() gets the hook of its own
        self._workers = workers
        return self

    def __exit__(self, *exc_info: Any) -> None:
        workers, self._workers = self._workers, None
        try:
            if workers is not None:
                workers.stop()  # before Ray is shut down: it ends workers without notice
        finally:
            super().__exit__(*exc_info)


def _refuse_ray_client(address: str | None) -> None:
    """Ray Client (`ray://`) jobs run no worker setup hook (Ray 2.60): refuse, never skip it."""
    if not address or address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
    if address.startswith("ray://"):
        raise ValueError(
            f"bind_to_workers(RayTaskRunner(address={address!r})): Ray Client jobs do not run "
            "the worker setup hook that builds the specs; run the flow on a node of the "
            "cluster with the cluster's address (host:port, or 'auto'), or use RayTaskRunner "
            "without bind_to_workers (each worker then builds a spec on first use)"
        )
