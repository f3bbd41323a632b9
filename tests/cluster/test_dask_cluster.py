"""bind_to_workers on a Dask cluster that runs without the flow: 2 nodes x 2 worker processes.

Load tests (`nox -s load`): the cluster takes 10-30 s to start on a busy
2-core machine and the flows run 100 Prefect tasks each.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from node_checks import RunOn, check_node_local_path, check_secrets_resolve_on_the_worker
from nodes import DaskCluster

from support.markers import MarkerSpec, markers

# The first test also waits for the cluster and Prefect's server to start.
pytestmark = [pytest.mark.load, pytest.mark.timeout(900)]

prefect_dask = pytest.importorskip("prefect_dask", reason="needs prefect-dask")


@pytest.fixture
def run_on(dask_cluster: DaskCluster) -> Iterator[RunOn]:
    """Run a function on a worker of the named node (each node's workers carry its name)."""
    with dask_cluster.client() as client:

        def run(node: str, function: Any, *args: Any) -> Any:
            future = client.submit(function, *args, resources={node: 1}, pure=False)
            return future.result(timeout=120)

        yield run


def test_nodes_differ_one_key_and_a_node_local_path_fails_where_missing(
    dask_cluster: DaskCluster, run_on: RunOn, tmp_path: Path
) -> None:
    roots = {node.name: node.root for node in dask_cluster.nodes}
    check_node_local_path(run_on, roots, tmp_path / "shared.csv")


def test_secrets_resolve_from_the_workers_environment(
    dask_cluster: DaskCluster, run_on: RunOn, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    roots = {node.name: node.root for node in dask_cluster.nodes}
    check_secrets_resolve_on_the_worker(run_on, moto_endpoint, monkeypatch, roots)


def bound_runner(cluster: DaskCluster, *specs: Any) -> Any:
    from handles.integrations.prefect import bind_to_workers

    return bind_to_workers(prefect_dask.DaskTaskRunner(address=cluster.address), *specs)


def pids_by_event(folder: Path, name: str, event: str) -> Counter[int]:
    return Counter(pid for pid, _thread in markers(folder, event, name))


def test_one_build_per_worker_over_100_tasks_and_a_teardown_from_each(
    dask_cluster: DaskCluster, prefect_api: str, tmp_path: Path
) -> None:
    from prefect_flows import mapped

    spec = MarkerSpec(folder=str(tmp_path), name="model")
    with dask_cluster.client() as client:
        workers = set(client.run(os.getpid).values())
    assert len(workers) == 4

    started = time.perf_counter()
    results = mapped.with_options(task_runner=bound_runner(dask_cluster, spec))(spec, 100)
    elapsed = time.perf_counter() - started

    assert sorted(item for *_, item in results) == list(range(100))
    assert {pid for _, pid, _ in results} <= workers
    assert {node for node, _, _ in results} <= {"nodeA", "nodeB"}
    # Every worker, on both nodes, built the spec exactly once, whatever it ran.
    assert pids_by_event(tmp_path, "model", "built") == dict.fromkeys(workers, 1)
    # The runner stopped: its plugin was removed and every worker closed the spec...
    assert pids_by_event(tmp_path, "model", "closed") == dict.fromkeys(workers, 1)
    with dask_cluster.client() as client:
        # ...while the cluster, workers included, runs on for its other users.
        assert set(client.run(os.getpid).values()) == workers
        assert client.submit(sum, [1, 2], pure=False).result() == 3
        assert not any(name.startswith("handles-") for names in _plugins(client) for name in names)
    print(f"\n100 tasks on 2 nodes x 2 Dask workers: {elapsed:.1f} s; builds per worker = 1")


def _plugins(client: Any) -> list[list[str]]:
    """The names of the plugins each worker runs."""
    return list(client.run(lambda dask_worker: list(dask_worker.plugins)).values())


def test_a_worker_killed_mid_flow_is_replaced_and_the_replacement_builds_once(
    dask_cluster: DaskCluster, prefect_api: str, tmp_path: Path
) -> None:
    from prefect_flows import mapped_with_a_kill

    folder = tmp_path / "markers"
    folder.mkdir()
    spec = MarkerSpec(folder=str(folder), name="model")
    flag = tmp_path / "killed"
    with dask_cluster.client() as client:
        before = set(client.run(os.getpid).values())

    started = time.perf_counter()
    runner = bound_runner(dask_cluster, spec)
    results = mapped_with_a_kill.with_options(task_runner=runner)(
        spec, 100, 50, str(flag), workers=dask_cluster.size, dask=dask_cluster.address
    )
    elapsed = time.perf_counter() - started

    killed = int(flag.read_text())
    with dask_cluster.client() as client:
        after = set(client.run(os.getpid).values())
    assert killed in before
    assert killed not in after
    (replacement,) = after - before  # the nanny started one process in its place
    assert after == (before - {killed}) | {replacement}
    # The flow completed: every item once, the killed one retried on a live worker.
    assert sorted(item for *_, item in results) == list(range(100))
    assert {pid for _, pid, item in results if item == 50} <= after
    # One build in each process: survivors were never rebuilt, the replacement built once...
    assert pids_by_event(folder, "model", "built") == dict.fromkeys(before | {replacement}, 1)
    # ...and every live worker closed it when the runner stopped (the killed one could not).
    assert pids_by_event(folder, "model", "closed") == dict.fromkeys(after, 1)
    print(f"\n100 tasks, one worker SIGKILLed at task 50: {elapsed:.1f} s; replacement builds = 1")
