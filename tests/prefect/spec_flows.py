"""Tasks, flows and kinds the Prefect tests run.

A module of its own (not a test file) so that process-pool, Dask and task-worker
processes import the same tasks by name: conftest puts this folder on PYTHONPATH.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, task

import handles
from handles import Identity, Placement, SecretRef, Spec
from handles.integrations.prefect import AnySpec, preflight
from support.kinds import EchoSpec, Resource

HERE = Path(__file__).parent


def result_of(future: Any, timeout: float = 120) -> Any:
    """`future.result()` of a `.delay()` run, asked again while Prefect lacks its state.

    Prefect 3.8 raises RuntimeError("... has no state ...") when a delayed run is
    read while the server is still recording one of its state changes (seen on busy
    machines). The deadline bounds the wait.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return future.result(timeout=max(1.0, deadline - time.monotonic()))
        except RuntimeError as exc:
            if "has no state" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def worker_pythonpath() -> str:
    """PYTHONPATH for processes that must import the tests' kinds and these tasks."""
    paths = [str(HERE), str(HERE.parent), *[p for p in sys.path if p]]
    return os.pathsep.join(dict.fromkeys(paths))


# -- kinds used only by these tests ------------------------------------------------


class VaultSpec(Spec[Resource]):
    """A resource behind a secret token: the token is read in build(), on the worker."""

    kind: Literal["test-prefect-vault"] = "test-prefect-vault"
    name: Annotated[str, Identity]
    token: Annotated[SecretRef, Identity]

    def build(self) -> Resource:
        token = self.token.resolve(self.kind, "token")
        return Resource(f"{self.name}:{len(token)}")


class ModelSpec(Spec[Resource]):
    """Stands in for a model: which weights (identity) and where it runs (placement)."""

    kind: Literal["test-prefect-model"] = "test-prefect-model"
    weights: Annotated[str, Identity]
    device: Annotated[str, Placement] = "cpu"

    def build(self) -> Resource:
        return Resource(f"{self.weights}@{self.device}")


# -- what a task reports about the registry ----------------------------------------


def snapshot(
    specs: list[Spec[Any]], index: int, fresh: dict[str, bool], seconds: float = 0.0
) -> dict[str, Any]:
    stats = handles.registry().stats()
    return {
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        "index": index,
        "fresh": fresh,
        "builds": {s.cache_key(): stats[s.cache_key()].builds for s in specs},
        "seconds": seconds,  # spent in get(): printed by tests, never asserted on
    }


@task
def touch(specs: list[Spec[Any]], index: int) -> dict[str, Any]:
    """Get every spec; report whether this thread had it already, and the build counts."""
    fresh = {s.cache_key(): s not in handles.registry() for s in specs}
    started = time.perf_counter()
    for spec in specs:
        spec.get()
    return snapshot(specs, index, fresh, time.perf_counter() - started)


@flow
def fan_out(specs: list[AnySpec], n: int) -> list[dict[str, Any]]:
    """`n` concurrent tasks over the same specs (the runner comes from with_options)."""
    futures = [touch.submit(specs, i) for i in range(n)]
    return [f.result() for f in futures]


@task
def build_then_evict(first: Spec[Any], second: Spec[Any]) -> None:
    """Build `first`, then `second` with room for one entry: `first` is evicted."""
    first.get()
    registry = handles.registry()
    before = registry.max_entries
    registry.max_entries = 1
    try:
        second.get()
    finally:
        registry.max_entries = before


@flow
def evicting(first: AnySpec, second: AnySpec) -> None:
    build_then_evict(first, second)


# -- task.map with a spec ---------------------------------------------------------------


@task
def echo_item(spec: Spec[Any], item: int) -> dict[str, Any]:
    """What one mapped run received: the spec whole (its object's name) and its item."""
    return {"item": item, "spec": spec.get().ping(), "pid": os.getpid()}


checked_echo_item = preflight(echo_item)


def _mapped(task_: Any, *args: Any) -> list[dict[str, Any]] | str:
    """Every run's result, or the name of the error `.map()` or a run raised."""
    try:
        return [future.result() for future in task_.map(*args)]
    except Exception as exc:
        return type(exc).__name__


@flow
def map_over_items(spec: AnySpec, others: list[AnySpec], counts: list[int]) -> dict[str, Any]:
    """`.map(spec, items)` for each item count, through preflight and on the bare task."""
    from prefect import unmapped

    return {
        "preflight": [_mapped(checked_echo_item, spec, list(range(n))) for n in counts],
        "plain": [_mapped(echo_item, spec, list(range(n))) for n in counts],
        "explicit": _mapped(echo_item, unmapped(spec), list(range(counts[0]))),
        "one spec per run": _mapped(checked_echo_item, others, list(range(len(others)))),
    }


# -- seed scenarios ------------------------------------------------------------------


@task
def count_rows(db: Spec[Any], threshold: int) -> dict[str, Any]:
    """Query a sqlite database through its spec (one connection per thread)."""
    fresh = db not in handles.registry()
    rows = db.get().execute("select count(*) from items where value >= ?", (threshold,))
    (count,) = rows.fetchone()
    return {**snapshot([db], threshold, {db.cache_key(): fresh}), "count": count}


@flow
def query_many(db: AnySpec, thresholds: list[int]) -> list[dict[str, Any]]:
    futures = [count_rows.submit(db, t) for t in thresholds]
    return [f.result() for f in futures]


@task
def entity_labels(nlp: Spec[Any], text: str) -> dict[str, Any]:
    """Run a spaCy pipeline through its spec."""
    fresh = nlp not in handles.registry()
    doc = nlp.get()(text)
    return {**snapshot([nlp], 0, {nlp.cache_key(): fresh}), "tokens": len(doc)}


@flow
def tag_texts(nlp: AnySpec, texts: list[str]) -> list[dict[str, Any]]:
    futures = [entity_labels.submit(nlp, t) for t in texts]
    return [f.result() for f in futures]


# -- caching ---------------------------------------------------------------------------


@task(persist_result=True)
def compute_once(spec: Spec[Any], ledger: str) -> str:
    """Appends one line to `ledger` per real computation, so cache hits are countable."""
    with open(ledger, "a", encoding="utf-8") as out:
        out.write(f"{os.getpid()}\n")
    return f"{spec.get().name}:{uuid.uuid4().hex}"


def computations(ledger: str | Path) -> int:
    path = Path(ledger)
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


@flow
def called_twice(spec: AnySpec, same: AnySpec, ledger: str) -> list[str]:
    """The same task called twice in one run (default cache policy); the state names."""
    first = compute_once(spec, ledger, return_state=True)
    second = compute_once(same, ledger, return_state=True)
    return [first.name, second.name]


def submitting_flow(compute: Any, runner: Any, calls: int) -> Any:
    """A flow submitting `calls` runs of `compute` (a variant of compute_once) at once.

    Built per test because the cache policy (lock folders, key storage, Redis
    URL) is only known there; the flow returns the task runs' state names.
    """

    @flow(task_runner=runner)
    def submit_all(spec: AnySpec, ledger: str) -> list[str]:
        futures = [compute.submit(spec, ledger) for _ in range(calls)]
        for future in futures:
            future.wait()
        return [future.state.name for future in futures]

    return submit_all


# -- parameters as a deployment sends them --------------------------------------------


@flow
def describe(db: EchoSpec, others: list[AnySpec], n: int = 1) -> dict[str, Any]:
    """What the flow received: each parameter's type and JSON."""
    return {
        "db": [type(db).__name__, db.model_dump_json()],
        "others": [[type(o).__name__, o.model_dump_json()] for o in others],
        "n": n,
    }


# -- secrets -----------------------------------------------------------------------------


@task(persist_result=True, result_serializer="json")  # readable bytes: a leak would show
def open_resource(spec: Spec[Any]) -> str:
    """Build the spec (reading its secret) and use it; logs the spec as users do."""
    from prefect.logging import get_run_logger

    get_run_logger().info("opening %r (%s)", spec, spec.model_dump_json())
    value = spec.get()
    if hasattr(value, "connect"):  # a SQLAlchemy Engine
        with value.connect() as conn:
            conn.exec_driver_sql("select 1")
        return f"{spec.kind}:connected"
    return str(value.name)


@flow
def secret_flow(spec: AnySpec) -> str:
    return open_resource(spec)


# -- reading what Prefect stored ----------------------------------------------------


def run_logs(flow_run_id: Any) -> list[Any]:
    """Every log line the API holds for a flow run and its task runs, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)  # lines still queued in this process
    logs: list[Any] = []
    with get_client(sync_client=True) as client:
        while True:  # the API pages at 200; the sync client needs limit and offset
            page = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=200,
                offset=len(logs),
                sort=LogSort.TIMESTAMP_ASC,
            )
            logs += page
            if len(page) < 200:
                return logs


def serialization_errors(lines: list[str]) -> list[str]:
    """The lines that show Prefect failing to hash or serialize a task's inputs."""
    markers = ("HashError", "could not be serialized", "Error encountered when computing cache key")
    return [line for line in lines if any(m in line for m in markers)]


# -- background tasks (task worker) ---------------------------------------------------


@task
def remote_touch(spec: Spec[Any], index: int) -> dict[str, Any]:
    """Served by a task worker: echoes the spec it received and the registry's counts."""
    fresh = spec not in handles.registry()
    spec.get()
    stats = handles.registry().stats()[spec.cache_key()]
    return {
        "pid": os.getpid(),
        "index": index,
        "fresh": fresh,
        "builds": stats.builds,
        "hits": stats.hits,
        "spec": spec.model_dump_json(),
        "type": type(spec).__name__,
    }


def serve_remote_touch() -> None:
    """Entry point of the task worker process."""
    from prefect.task_worker import serve

    serve(remote_touch)
