"""What must hold on any cluster whose nodes differ; each engine's tests run these on its cluster.

`run_on(node, function, *args)` runs `function(*args)` in a worker of `node`
and returns its result.
"""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cluster_flows import S3_KEY_ENV, S3_SECRET_ENV, read_with_key, try_build

from handles import BuildError
from handles.specs.file import FileSpec

RunOn = Callable[..., Any]


def check_node_local_path(run_on: RunOn, nodes: dict[str, Path], shared: Path) -> None:
    """One key everywhere; a file only node a has fails on node b, naming node b and the path.

    `/proc/self/cwd/...` is one absolute path whose file is each process's own
    (its working directory's): the same spec, as a node-local path on two hosts.
    """
    (nodes["nodeA"] / "input.csv").write_text("a,b\n")
    local = FileSpec(url="/proc/self/cwd/input.csv")
    shared.write_text("x\n")
    common = FileSpec(url=str(shared))

    on_a, on_b = run_on("nodeA", try_build, local), run_on("nodeB", try_build, local)
    assert on_a["cwd"] != on_b["cwd"]
    assert on_a["home"] != on_b["home"]
    assert on_a["key"] == on_b["key"] == local.cache_key()
    assert on_a["ok"] == "LocalFileSystem"
    error = on_b["error"]  # the BuildError itself, sent back by the worker
    assert isinstance(error, BuildError)
    assert error.kind == "FileSpec"
    assert "no such file: /proc/self/cwd/input.csv" in str(error)
    where = "".join(traceback.format_exception(error))
    assert f"process {on_b['pid']}" in where  # and the host, as every note has it
    # A path both nodes see (shared storage) builds on both, under one key.
    for node in nodes:
        built = run_on(node, try_build, common)
        assert (built.get("ok"), built["key"]) == ("LocalFileSystem", common.cache_key())


def check_secrets_resolve_on_the_worker(
    run_on: RunOn, endpoint: str, monkeypatch: pytest.MonkeyPatch, nodes: dict[str, Path]
) -> None:
    """`env:` and `file:` secrets are read on the worker: the flow's environment is not shipped.

    The same S3 object (moto's server stands for object storage) is read from
    every node, each with the credentials that node holds.
    """
    s3fs = pytest.importorskip("s3fs")
    bucket = f"handles-{uuid.uuid4().hex[:12]}"
    admin = s3fs.S3FileSystem(key="admin", secret="admin", endpoint_url=endpoint)
    admin.mkdir(bucket)
    admin.pipe(f"{bucket}/shared.txt", b"from object storage")
    # The flow's process has the variables too, with other values: never used there.
    monkeypatch.setenv(S3_KEY_ENV, "flow-key")
    monkeypatch.setenv(S3_SECRET_ENV, "flow-secret")
    spec = FileSpec(
        url=f"s3://{bucket}/shared.txt",
        storage_options={"endpoint_url": endpoint},
        secrets={"key": f"env:{S3_KEY_ENV}", "secret": f"env:{S3_SECRET_ENV}"},
    )
    on_a, on_b = run_on("nodeA", read_with_key, spec), run_on("nodeB", read_with_key, spec)
    assert on_a["data"] == b"from object storage"
    assert on_a["access_key"] == "node-a-key"  # node a's own variable, not the flow's
    error = on_b["error"]  # node b has no such variable, whatever the flow has
    assert isinstance(error, BuildError)
    assert f"environment variable {S3_KEY_ENV} is not set" in str(error)
    assert "flow-secret" not in repr(on_b) + str(error)
    assert on_a["key"] == on_b["key"] == spec.cache_key()

    # `file:` references, read from each node's own file: /proc/self/cwd is the
    # worker's working directory, so one path names a different file per node.
    for node, root in nodes.items():
        (root / "s3-key").write_text(f"{node}-file-key\n")
        (root / "s3-secret").write_text(f"{node}-file-secret\n")
    by_file = spec.replace(
        secrets={"key": "file:/proc/self/cwd/s3-key", "secret": "file:/proc/self/cwd/s3-secret"}
    )
    for node in nodes:
        read = run_on(node, read_with_key, by_file)
        assert (read["data"], read["access_key"]) == (b"from object storage", f"{node}-file-key")
