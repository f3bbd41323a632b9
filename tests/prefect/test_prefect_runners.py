"""One flow, unchanged, under Prefect's thread pool, process pool and Dask task runners.

Each task reports this process's registry counts; the tests assert each process
built each process-scoped spec once and each thread its thread-scoped spec once,
and that Prefect never failed to hash or serialize a spec.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from spec_flows import fan_out, run_logs, serialization_errors

from handles import Spec
from support.kinds import EchoSpec, ThreadEchoSpec

pytestmark = pytest.mark.usefixtures("prefect_server")


def run_fan_out(runner: Any, specs: list[Spec[Any]], n: int) -> tuple[list[dict[str, Any]], Any]:
    state = fan_out.with_options(task_runner=runner)(specs, n, return_state=True)
    assert state.is_completed(), state
    return state.result(), state.state_details.flow_run_id


def assert_built_once(results: list[dict[str, Any]], spec: Spec[Any]) -> None:
    """Process scope: one build per process. Thread scope: one per thread that ran a task."""
    key = spec.cache_key()
    by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        by_pid[result["pid"]].append(result)
    for pid, rows in by_pid.items():
        threads = {row["thread"] for row in rows}
        if spec.scope == "process":
            assert {row["builds"][key] for row in rows} == {1}, f"pid {pid} built {spec} again"
        else:
            for thread in threads:
                fresh = [row["fresh"][key] for row in rows if row["thread"] == thread]
                assert fresh.count(True) == 1, f"thread {thread} in pid {pid} built {fresh}"
            # The latest snapshot in a process counts every build made there.
            assert max(row["builds"][key] for row in rows) == len(threads)


def assert_clean_logs(flow_run_id: Any, captured: str) -> None:
    lines = [log.message for log in run_logs(flow_run_id)] + captured.splitlines()
    assert serialization_errors(lines) == []


def test_thread_pool_shares_process_specs_and_builds_per_thread(tmp_path, capfd):
    process_spec = EchoSpec(name=str(tmp_path / "shared"))
    thread_spec = ThreadEchoSpec(name=str(tmp_path / "per-thread"))
    results, run_id = run_fan_out(
        ThreadPoolTaskRunner(max_workers=3), [process_spec, thread_spec], n=9
    )
    assert len({r["pid"] for r in results}) == 1
    assert_built_once(results, process_spec)
    assert_built_once(results, thread_spec)
    assert_clean_logs(run_id, capfd.readouterr().err)


def test_process_pool_builds_once_per_worker(tmp_path, capfd):
    process_spec = EchoSpec(name=str(tmp_path / "shared"))
    thread_spec = ThreadEchoSpec(name=str(tmp_path / "per-thread"))
    results, run_id = run_fan_out(
        ProcessPoolTaskRunner(max_workers=2), [process_spec, thread_spec], n=8
    )
    assert 1 <= len({r["pid"] for r in results}) <= 2
    assert_built_once(results, process_spec)
    assert_built_once(results, thread_spec)
    assert_clean_logs(run_id, capfd.readouterr().err)


def test_dask_builds_once_per_worker_process(tmp_path, capfd):
    prefect_dask = pytest.importorskip("prefect_dask", reason="needs prefect-dask")
    runner = prefect_dask.DaskTaskRunner(
        cluster_kwargs={"n_workers": 2, "processes": True, "threads_per_worker": 2}
    )
    process_spec = EchoSpec(name=str(tmp_path / "shared"))
    thread_spec = ThreadEchoSpec(name=str(tmp_path / "per-thread"))
    results, run_id = run_fan_out(runner, [process_spec, thread_spec], n=8)
    assert 1 <= len({r["pid"] for r in results}) <= 2
    assert_built_once(results, process_spec)
    assert_built_once(results, thread_spec)
    assert_clean_logs(run_id, capfd.readouterr().err)
