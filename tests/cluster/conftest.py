"""Clusters users already run, simulated on loopback: two "nodes", each its own cwd, HOME and env.

The Dask cluster is `dask scheduler` plus, per node, `dask worker --nanny
--nworkers 2`; the Ray cluster is `ray start --head` on node a and `ray start
--address` on node b. Both are started apart from the test, as separate
processes, and stopped by the fixtures whatever happens (see nodes.py). Each
cluster is shared by the tests of one module; every test uses its own marker
folder, so tests only read what they caused.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodes import DaskCluster, Node, RayCluster, node_env

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

NODES = ("nodeA", "nodeB")


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prefect's temporary server for the session (in this process); yields its URL."""
    pytest.importorskip("prefect", reason="the flow tests need prefect installed")
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_HOME", str(home))
        with (
            temporary_settings(
                updates={PREFECT_HOME: home, PREFECT_SERVER_ANALYTICS_ENABLED: False}
            ),
            prefect_test_harness(server_startup_timeout=120),
        ):
            yield str(PREFECT_API_URL.value())


def make_nodes(root: Path, extra: dict[str, dict[str, str]] | None = None) -> list[Node]:
    nodes = []
    for name in NODES:
        env = node_env({"HANDLES_TEST_NODE": name, **(extra or {}).get(name, {})})
        nodes.append(Node(name, root / name, env))
    return nodes


@pytest.fixture(scope="module")
def node_secrets() -> dict[str, dict[str, str]]:
    """Variables only some nodes have (a module overrides this to give its own)."""
    return {}


@pytest.fixture(scope="module")
def dask_cluster(
    tmp_path_factory: pytest.TempPathFactory, node_secrets: dict[str, dict[str, str]]
) -> Iterator[DaskCluster]:
    pytest.importorskip("distributed", reason="needs dask[distributed]")
    root = tmp_path_factory.mktemp("dask")
    scheduler = Node("scheduler", root / "scheduler", node_env())
    cluster = DaskCluster(scheduler, make_nodes(root, node_secrets), nworkers=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def ray_cluster(
    tmp_path_factory: pytest.TempPathFactory, node_secrets: dict[str, dict[str, str]]
) -> Iterator[RayCluster]:
    pytest.importorskip("ray", reason="needs ray")
    cluster = RayCluster(make_nodes(tmp_path_factory.mktemp("ray"), node_secrets), cpus=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
