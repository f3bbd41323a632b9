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
from cluster_flows import S3_KEY_ENV, S3_SECRET_ENV
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


# What only node a has: the S3 credentials its FileSpecs' secrets name (the flow's
# own environment has other values, which must not reach any worker).
NODE_SECRETS = {"nodeA": {S3_KEY_ENV: "node-a-key", S3_SECRET_ENV: "node-a-secret"}}
# No node may find credentials anywhere but in its spec's secrets.
NO_AMBIENT_AWS = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/handles-test",
    "AWS_CONFIG_FILE": "/nonexistent/handles-test",
}


@pytest.fixture(scope="module")
def node_secrets() -> dict[str, dict[str, str]]:
    return {name: {**NO_AMBIENT_AWS, **NODE_SECRETS.get(name, {})} for name in NODES}


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback: the object store every node shares."""
    pytest.importorskip("s3fs", reason="the S3 test needs s3fs")
    server_module = pytest.importorskip("moto.server", reason="the S3 test needs moto[server]")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


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
