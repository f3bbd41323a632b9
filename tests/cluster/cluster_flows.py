"""Task code the cluster tests send to Dask and Ray workers (importable there: nodes' PYTHONPATH).

Every function returns where it ran (`here()`), so a test can tell nodes and
worker processes apart without reading worker logs.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import handles
from handles import BuildError
from support.markers import MarkerSpec

S3_KEY_ENV, S3_SECRET_ENV = "HANDLES_TEST_S3_KEY", "HANDLES_TEST_S3_SECRET"


def here() -> tuple[str, int]:
    """(node name, pid): the node name is the only variable that differs between nodes."""
    return os.environ.get("HANDLES_TEST_NODE", "?"), os.getpid()


def builds_here() -> int:
    """How many objects this worker's registry has built in its life."""
    return handles.registry().totals().builds


def use_marker(spec: MarkerSpec, item: int) -> tuple[str, int, int]:
    """A task body: the spec must be built and whole before the task starts (warm-up)."""
    assert spec in handles.registry(), f"{spec.name} was not built before task {item}"
    marked = spec.get()
    assert marked.pid == os.getpid()
    return (*here(), item)


def use_marker_or_die(spec: MarkerSpec, item: int, kill_at: int, flag: str) -> tuple[str, int, int]:
    """`use_marker`, but the first run of item `kill_at` ends its worker with SIGKILL.

    The flag file makes it happen exactly once: the run Dask or Ray retries on
    another worker (or the replacement) finds it and completes.
    """
    if item == kill_at and not Path(flag).exists():
        Path(flag).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return use_marker(spec, item)


def try_build(spec: handles.Spec[Any]) -> dict[str, Any]:
    """Build `spec` here and say what happened: no exception crosses the wire."""
    node, pid = here()
    result: dict[str, Any] = {"node": node, "pid": pid, "key": spec.cache_key(), "cwd": os.getcwd()}
    result["home"] = os.path.expanduser("~")
    try:
        value = spec.get()
    except BuildError as exc:
        result["error"] = exc
        return result
    result["ok"] = type(value).__name__
    return result


def read_with_key(spec: Any) -> dict[str, Any]:
    """A FileSpec's content read here, and the access key its secrets resolved to here."""
    result = try_build(spec)
    if "ok" in result:
        with spec.open() as f:
            result["data"] = f.read()
        result["access_key"] = spec.get().key
    return result
