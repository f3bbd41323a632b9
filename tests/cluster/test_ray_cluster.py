"""bind_to_workers on a Ray cluster that runs without the flow (`ray start`, head and one more).

Two nodes of 2 CPUs each, each its own cwd, HOME and environment. Load tests
(`nox -s load`): the cluster takes 20-60 s to start on a busy 2-core machine.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from node_checks import RunOn, check_node_local_path, check_secrets_resolve_on_the_worker
from nodes import RayCluster

from support.markers import MarkerSpec, markers

# The first test also waits for the cluster and Prefect's server to start.
pytestmark = [pytest.mark.load, pytest.mark.timeout(900)]

ray = pytest.importorskip("ray", reason="needs ray")
prefect_ray = pytest.importorskip("prefect_ray", reason="needs prefect-ray")


@pytest.fixture
def run_on(ray_cluster: RayCluster) -> Iterator[RunOn]:
    """Run a function on a worker of the named node (each node has a resource of its name)."""
    ray.init(address=ray_cluster.address, logging_level="WARNING")
    try:

        def run(node: str, function: Any, *args: Any) -> Any:
            remote = ray.remote(function).options(resources={node: 0.01}, max_retries=0)
            return ray.get(remote.remote(*args), timeout=180)

        yield run
    finally:
        ray.shutdown()


def test_nodes_differ_one_key_and_a_node_local_path_fails_where_missing(
    ray_cluster: RayCluster, run_on: RunOn, tmp_path: Path
) -> None:
    roots = {node.name: node.root for node in ray_cluster.nodes}
    check_node_local_path(run_on, roots, tmp_path / "shared.csv")


def test_secrets_resolve_from_the_workers_environment(
    ray_cluster: RayCluster, run_on: RunOn, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    roots = {node.name: node.root for node in ray_cluster.nodes}
    check_secrets_resolve_on_the_worker(run_on, moto_endpoint, monkeypatch, roots)


def bound_runner(cluster: RayCluster, *specs: Any) -> Any:
    from handles.integrations.prefect import bind_to_workers

    return bind_to_workers(prefect_ray.RayTaskRunner(address=cluster.address), *specs)


def pids_by_event(folder: Path, name: str, event: str) -> Counter[int]:
    return Counter(pid for pid, _thread in markers(folder, event, name))


def test_one_build_per_worker_over_100_tasks_and_a_teardown_from_each(
    ray_cluster: RayCluster, prefect_api: str, tmp_path: Path
) -> None:
    from prefect_flows import mapped

    spec = MarkerSpec(folder=str(tmp_path), name="model")
    started = time.perf_counter()
    results = mapped.with_options(task_runner=bound_runner(ray_cluster, spec))(spec, 100)
    elapsed = time.perf_counter() - started

    assert sorted(item for *_, item in results) == list(range(100))
    built = pids_by_event(tmp_path, "model", "built")
    assert {pid for _, pid, _ in results} <= set(built)  # each task's worker had built it
    assert set(built.values()) == {1}  # and no process built it twice
    # The runner stopped: every worker that built closed, before Ray let it go...
    assert pids_by_event(tmp_path, "model", "closed") == built
    # ...and the cluster, both nodes, runs on for its other users.
    assert ray_cluster.alive_nodes() == 2
    assert not ray.is_initialized()
    nodes = Counter(node for node, _, _ in results)
    print(
        f"\n100 tasks on a 2-node Ray cluster: {elapsed:.1f} s; {len(built)} worker processes "
        f"built once each; tasks per node {dict(nodes)}"
    )


def test_a_worker_killed_mid_flow_is_replaced_and_the_replacement_builds_once(
    ray_cluster: RayCluster, prefect_api: str, tmp_path: Path
) -> None:
    from prefect_flows import mapped_with_a_kill

    folder = tmp_path / "markers"
    folder.mkdir()
    spec = MarkerSpec(folder=str(folder), name="model")
    flag = tmp_path / "killed"

    started = time.perf_counter()
    runner = bound_runner(ray_cluster, spec)
    results = mapped_with_a_kill.with_options(task_runner=runner)(
        spec, 100, 50, str(flag), workers=4
    )
    elapsed = time.perf_counter() - started

    killed = int(flag.read_text())
    assert sorted(item for *_, item in results) == list(range(100))
    assert {pid for _, pid, item in results if item == 50} - {killed}  # retried elsewhere
    built = pids_by_event(folder, "model", "built")
    assert set(built.values()) == {1}
    assert killed in built
    # Workers Ray started after the kill built the spec once, like the others.
    killed_at = flag.stat().st_mtime_ns
    later = [pid for pid in built if _built_at(folder, pid) > killed_at]
    assert later, "no worker started after the kill"
    # Every worker but the killed one closed it when the runner stopped.
    assert pids_by_event(folder, "model", "closed") == {p: 1 for p in built if p != killed}
    assert ray_cluster.alive_nodes() == 2
    print(
        f"\n100 tasks, one Ray worker SIGKILLed at task 50: {elapsed:.1f} s; "
        f"{len(later)} worker(s) started after it, each built once"
    )


def _built_at(folder: Path, pid: int) -> int:
    (path,) = folder.glob(f"built-model-{pid}-*")
    return path.stat().st_mtime_ns
