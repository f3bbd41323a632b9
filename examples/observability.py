"""See the registry where users look: OpenTelemetry metrics, and a table in the Prefect UI.

    python examples/observability.py

1. OpenTelemetry, with no collector or Grafana: `instrument()` on a MeterProvider
   whose reader prints to the console. A SQLite-backed `DatabaseSpec` is built,
   used eleven times (one build, ten hits) with one connection held open, and the
   script prints one line per data point: the registry's counters, its live
   objects and build durations, and the pool's `db.client.connection.*` metrics
   (used and idle connections, the pool's maximum, waits and use times).
2. Prefect: a flow on a two-process `ProcessPoolTaskRunner` bound to the spec
   with `bind_to_workers`. Each worker publishes its registry as a table artifact
   when the runner stops (the flow run's Artifacts tab in the UI); the script reads
   the tables back and prints one row per worker.
3. Forgiveness: the flow passes the live engine (`db.get()`) to a `preflight`
   task by mistake. The registry built it, so preflight sends the spec instead
   and logs it once; the task, in a worker process, receives that worker's own
   engine, and the flow prints which process served it.

The Prefect part starts Prefect's temporary server once (15-40 s; see
examples/_prefect_setup.py). Everything lives in temporary folders removed at exit.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # spawned workers import this file as __mp_main__
    import _prefect_setup

    _prefect_setup.prepare()  # before Prefect is imported: it reads its settings then

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricsData,
    PeriodicExportingMetricReader,
)
from prefect import flow, task
from prefect.task_runners import ProcessPoolTaskRunner
from sqlalchemy import Engine, text

import handles
from handles import DatabaseSpec
from handles.integrations.opentelemetry import instrument
from handles.integrations.prefect import bind_to_workers, preflight

HOUR_MS = 3_600_000  # export only when asked (force_flush), not on a timer


def one_line_per_point(data: MetricsData) -> str:
    """The console exporter's output, one `name {attributes} value` line per point."""
    lines = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attrs = ", ".join(f"{k}={v}" for k, v in sorted(point.attributes.items()))
                    value = getattr(point, "value", None)
                    if value is None:  # a histogram: how many, and their sum
                        value = f"count={point.count} sum={point.sum:.4f}{metric.unit}"
                    lines.append(f"  {metric.name} {{{attrs}}} {value}")
    return "\n".join(lines) + "\n"


def show_metrics(folder: Path) -> None:
    printed = io.StringIO()  # what the exporter prints, shown once (shutdown exports again)
    exporter = ConsoleMetricExporter(out=printed, formatter=one_line_per_point)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=HOUR_MS)
    provider = MeterProvider(metric_readers=[reader])
    metrics = instrument(provider)
    try:
        db = DatabaseSpec(url=f"sqlite:///{(folder / 'metrics.db').as_posix()}", pool_size=2)
        for _ in range(11):
            engine = db.get()  # one build, then ten hits
            with engine.connect() as conn:
                conn.execute(text("select 1"))
        with engine.connect() as held:  # one connection in use while the metrics print
            held.execute(text("select 1"))
            provider.force_flush()
            print(f"OpenTelemetry metrics (console exporter):\n{printed.getvalue()}", end="")
        stats = handles.registry().stats()[db.cache_key()]
        assert (stats.builds, stats.hits) == (1, 10), stats
    finally:
        metrics.close()
        provider.shutdown()
        handles.registry().close()


# --8<-- [start:forgive]
@preflight
@task
def count_rows(engine: Engine) -> dict[str, Any]:
    """Written for a live engine; preflight makes it this worker's own."""
    with engine.begin() as conn:
        conn.execute(text("create table if not exists seen (pid integer)"))
        conn.execute(text("insert into seen values (:pid)"), {"pid": os.getpid()})
        rows = conn.execute(text("select count(*) from seen")).scalar_one()
    return {"pid": os.getpid(), "rows": rows}


@flow
def observed(db: DatabaseSpec) -> list[dict[str, Any]]:
    engine = db.get()  # the flow's own engine, built by this process's registry
    futures = [count_rows.submit(engine) for _ in range(4)]  # the mistake, forgiven
    return [f.result() for f in futures]


# --8<-- [end:forgive]


def worker_tables(flow_run_id: Any) -> list[list[dict[str, Any]]]:
    from prefect.client.orchestration import get_client

    body = {
        "artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}},
        "sort": "CREATED_DESC",
        "limit": 50,
        "offset": 0,
    }
    with get_client(sync_client=True) as client:
        found = client.request("POST", "/artifacts/filter", json=body).json()
    return [json.loads(a["data"]) for a in found if a["type"] == "table"]


def show_prefect(folder: Path) -> None:
    db = DatabaseSpec(url=f"sqlite:///{(folder / 'flow.db').as_posix()}")
    runner = bind_to_workers(ProcessPoolTaskRunner(max_workers=2), db)
    state = observed.with_options(task_runner=runner)(db, return_state=True)
    results = state.result()
    pids = sorted({r["pid"] for r in results})
    assert os.getpid() not in pids, "the tasks ran in worker processes"
    print(f"\nforgiven: 4 tasks given the flow's live engine ran on worker processes {pids}")
    tables = worker_tables(state.state_details.flow_run_id)
    print(f"\nPrefect artifacts of the flow run: {len(tables)} registry tables, one per worker")
    for table in tables:
        for row in table:
            print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))
    assert set(pids) <= {row["pid"] for table in tables for row in table}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="handles-observability-") as folder:
        show_metrics(Path(folder))
        with _prefect_setup.one_server():
            show_prefect(Path(folder))
        handles.registry().close()  # before the folder goes: the engines hold its files


if __name__ == "__main__":
    main()
