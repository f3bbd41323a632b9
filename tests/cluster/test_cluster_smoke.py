"""What CI runs of the cluster tests: errors that cross the wire, and one small real Dask cluster.

The rest (two nodes, 100-task flows, kills, Ray) is marked `load`: `nox -s load`.
"""

from __future__ import annotations

import os
import pickle
import traceback
from pathlib import Path

import pytest
from nodes import DaskCluster, Node, node_env

from handles import BuildError, LockTimeout, MissingDependencyError, PreflightError, SpecError
from handles.specs.file import FileSpec
from support.markers import MarkerSpec, markers


def test_every_error_crosses_the_wire_whole() -> None:
    """Workers send errors back pickled: same class, message, fields and note."""
    spec = FileSpec(url="/data/x.csv")
    errors = [
        BuildError.about(spec, "could not build it"),
        SpecError("FileSpec", [("url", "no such file")]),
        LockTimeout("writer queue", kind="SqliteSpec", holder_pid=7),
        MissingDependencyError("torch", "torch", kind="TorchModelSpec"),
        PreflightError("task", []),
    ]
    for error in errors:
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error)
        assert str(back) == str(error)
        assert back.__dict__ == error.__dict__
    build = pickle.loads(pickle.dumps(errors[0]))
    assert build.spec == spec
    assert f"process {os.getpid()}" in "".join(traceback.format_exception(build))
    assert pickle.loads(pickle.dumps(errors[3])).name == "torch"  # ImportError's own field


def test_bound_runner_on_a_running_dask_cluster_builds_closes_and_leaves_it_running(
    tmp_path: Path,
) -> None:
    """A scheduler and one `dask worker --nanny`, started apart; the runner connects to them."""
    prefect_dask = pytest.importorskip("prefect_dask", reason="needs prefect-dask")
    from handles.integrations.prefect import bind_to_workers

    scheduler = Node("scheduler", tmp_path / "scheduler", node_env())
    node = Node("nodeA", tmp_path / "nodeA", node_env({"HANDLES_TEST_NODE": "nodeA"}))
    cluster = DaskCluster(scheduler, [node], nworkers=1)
    spec = MarkerSpec(folder=str(tmp_path), name="model")
    try:
        cluster.start()
        with cluster.client() as client:
            (worker,) = client.run(os.getpid).values()
            runner = bind_to_workers(prefect_dask.DaskTaskRunner(address=cluster.address), spec)
            with runner.duplicate():  # as Prefect enters it for a flow run
                assert [pid for pid, _ in markers(tmp_path, "built", "model")] == [worker]
                assert markers(tmp_path, "closed", "model") == []
            assert [pid for pid, _ in markers(tmp_path, "closed", "model")] == [worker]
            # The cluster and its worker run on, with no plugin of ours left.
            assert list(client.run(os.getpid).values()) == [worker]
            assert client.submit(sum, [1, 2], pure=False).result(timeout=60) == 3
            plugins = client.run(lambda dask_worker: list(dask_worker.plugins))
            assert not [name for names in plugins.values() for name in names if "handles" in name]
    finally:
        cluster.stop()


@pytest.mark.parametrize("address", ["ray://127.0.0.1:10001", None])
def test_ray_client_is_refused_by_name(
    address: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Ray Client jobs run no worker setup hook: bind_to_workers says so instead of not building."""
    prefect_ray = pytest.importorskip("prefect_ray", reason="needs prefect-ray")
    from handles.integrations.prefect import bind_to_workers

    monkeypatch.setenv("RAY_ADDRESS", "ray://head.example:10001")  # what address=None uses
    spec = MarkerSpec(folder=str(tmp_path), name="model")
    with pytest.raises(ValueError, match=r"Ray Client jobs do not run the worker setup hook"):
        bind_to_workers(prefect_ray.RayTaskRunner(address=address), spec)
