"""publish_stats: the registry as a Prefect table artifact, and one per worker of a bound runner."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from handles.integrations.prefect import bind_to_workers
from support.kinds import EchoSpec

pytestmark = pytest.mark.usefixtures("prefect_server")

COLUMNS = [
    "kind", "key", "builds", "hits", "errors", "live", "bytes", "build seconds", "host", "pid",
]  # fmt: skip


def tables(flow_run_id: Any) -> list[list[dict[str, Any]]]:
    """The table artifacts of a flow run (and its task runs), as row lists."""
    from prefect.client.orchestration import get_client

    # The clients send empty flow- and task-run filters, which the server joins on
    # (hiding artifacts of no task run): ask with the artifact filter alone.
    body = {
        "artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}},
        "sort": "CREATED_DESC",
        "limit": 50,
        "offset": 0,
    }
    with get_client(sync_client=True) as client:
        found = client.request("POST", "/artifacts/filter", json=body).json()
    return [json.loads(a["data"]) for a in found if a["type"] == "table"]


def rows_for(table: list[dict[str, Any]], spec: EchoSpec) -> list[dict[str, Any]]:
    return [row for row in table if row["key"] == spec.cache_key()[:12]]


def test_publish_stats_in_a_task_lists_this_process_registry():
    import stats_flows

    spec = EchoSpec(name=f"stats-{uuid.uuid4().hex[:8]}")
    state = stats_flows.publish_in_a_task(spec, return_state=True)
    assert state.result() != "None"
    (table,) = tables(state.state_details.flow_run_id)
    assert all(list(row) == COLUMNS for row in table)
    (row,) = rows_for(table, spec)
    assert (row["kind"], row["builds"], row["hits"], row["live"]) == ("test-echo", 1, 1, 1)
    assert (row["errors"], row["pid"]) == (0, os.getpid())


def test_a_bound_process_pool_publishes_one_table_per_worker():
    import stats_flows

    spec = EchoSpec(name=f"stats-{uuid.uuid4().hex[:8]}")
    runner = bind_to_workers(ProcessPoolTaskRunner(max_workers=2), spec)
    state = stats_flows.use_all.with_options(task_runner=runner)(spec, 4, return_state=True)
    task_pids = set(state.result())
    found = tables(state.state_details.flow_run_id)

    per_worker = {}
    for table in found:
        (row,) = rows_for(table, spec)  # the worker built it as it started, once
        assert (row["builds"], row["live"], row["errors"]) == (1, 1, 0)
        per_worker[row["pid"]] = row
    assert len(per_worker) == len(found), "one table per worker"
    assert task_pids <= set(per_worker), "every worker that ran a task published"
    assert os.getpid() not in per_worker
    assert 1 <= len(per_worker) <= 2
    assert sum(row["hits"] for row in per_worker.values()) == 4  # one get() per task


def test_a_bound_thread_pool_publishes_this_process_table():
    import stats_flows

    spec = EchoSpec(name=f"stats-{uuid.uuid4().hex[:8]}")
    runner = bind_to_workers(ThreadPoolTaskRunner(max_workers=2), spec)
    state = stats_flows.use_all.with_options(task_runner=runner)(spec, 3, return_state=True)
    assert set(state.result()) == {os.getpid()}
    (table,) = tables(state.state_details.flow_run_id)
    (row,) = rows_for(table, spec)
    assert (row["builds"], row["hits"], row["live"], row["pid"]) == (1, 3, 1, os.getpid())
