"""The Prefect flows of the cluster tests; their tasks are importable on every node."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cluster_flows import use_marker, use_marker_or_die
from nodes import wait_for
from prefect import flow, task, unmapped

from support.markers import MarkerSpec


@task
def marker_task(spec: MarkerSpec, item: int) -> tuple[str, int, int]:
    return use_marker(spec, item)


@task
def dying_task(spec: MarkerSpec, item: int, kill_at: int, flag: str) -> tuple[str, int, int]:
    return use_marker_or_die(spec, item, kill_at, flag)


@flow
def mapped(spec: MarkerSpec, count: int) -> list[tuple[str, int, int]]:
    return [future.result() for future in marker_task.map(spec, range(count))]


@flow
def mapped_with_a_kill(
    spec: MarkerSpec, count: int, kill_at: int, flag: str, *, workers: int, dask: str = ""
) -> list[tuple[str, int, int]]:
    """`count` tasks, one of which kills its worker; returns once `workers` run again.

    The wait keeps the runner, and so its plugin or setup hook, running until
    the replacement has joined: it must build the spec too.
    """
    futures = dying_task.map(spec, range(count), unmapped(kill_at), unmapped(flag))
    results = [future.result() for future in futures]
    if dask:
        import distributed

        killed = int(Path(flag).read_text())
        with distributed.Client(dask, set_as_default=False) as client:
            wait_for(lambda: replaced(worker_pids(client), killed, workers), "the replacement")
    return results


def worker_pids(client: Any) -> set[int]:
    return set(client.run(os.getpid).values())


def replaced(pids: set[int], killed: int, workers: int) -> bool:
    return killed not in pids and len(pids) == workers
