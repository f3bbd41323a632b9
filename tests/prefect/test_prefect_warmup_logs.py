"""Warm-up before the first task (process-pool initializer, Dask worker plugin), and the
registry's build and eviction lines in Prefect's run logs."""

from __future__ import annotations

import logging
import uuid

import pytest
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from spec_flows import evicting, fan_out, run_logs

import handles
from handles.integrations._warm import warm
from handles.integrations.prefect import route_registry_logs, warm_up
from support.kinds import EchoSpec, ThreadEchoSpec

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def routed_logs():
    """route_registry_logs() in this process, undone afterwards."""
    handles_logger = logging.getLogger("handles")
    level, handlers = handles_logger.level, list(handles_logger.handlers)
    route_registry_logs()
    yield
    handles_logger.setLevel(level)
    handles_logger.handlers[:] = handlers


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def built_line(spec) -> str:
    return f"built {spec.kind} {spec.cache_key()[:12]}"


def report_first_tasks(label: str, results) -> None:
    firsts = {}
    for row in sorted(results, key=lambda r: r["index"]):
        firsts.setdefault(row["pid"], row["seconds"])
    print(f"{label}: seconds in get() in each worker's first task: {firsts}")


def test_process_pool_initializer_builds_before_the_first_task():
    warmed = EchoSpec(name=unique("warmed"), delay=0.3)
    later = EchoSpec(name=unique("later"))
    runner = ProcessPoolTaskRunner(max_workers=2, initializer=warm_up, initargs=(warmed,))
    state = fan_out.with_options(task_runner=runner)([warmed, later], 4, return_state=True)
    assert state.is_completed(), state
    results = state.result()
    report_first_tasks("warmed pool", results)

    for row in results:  # every task, each worker's first included, found it built
        assert row["fresh"][warmed.cache_key()] is False
        assert row["builds"][warmed.cache_key()] == 1
    # A spec built inside a task run is logged in that run (the initializer routed logs);
    # the warm-up itself ran outside any run and is not.
    logs = run_logs(state.state_details.flow_run_id)
    in_tasks = [log for log in logs if built_line(later) in log.message]
    assert in_tasks, [log.message for log in logs]
    assert all(log.task_run_id is not None for log in in_tasks)
    assert not [log for log in logs if built_line(warmed) in log.message]


@pytest.mark.usefixtures("routed_logs")
def test_builds_and_evictions_appear_in_the_run_logs():
    first, second = EchoSpec(name=unique("first")), EchoSpec(name=unique("second"))
    runner = ThreadPoolTaskRunner(max_workers=1)
    state = evicting.with_options(task_runner=runner)(first, second, return_state=True)
    assert state.is_completed(), state

    lines = [(log.message, log.task_run_id) for log in run_logs(state.state_details.flow_run_id)]
    wanted = [built_line(first), built_line(second), f"evicted test-echo {first.cache_key()[:12]}"]
    for text in wanted:
        found = [task_run for message, task_run in lines if text in message]
        assert found, f"{text!r} not in {[m for m, _ in lines]}"
        assert found[0] is not None, "logged in the task run"


def test_dask_worker_plugin_builds_before_the_first_task():
    prefect_dask = pytest.importorskip("prefect_dask", reason="needs prefect-dask")
    from handles.integrations.dask import SpecWarmUp

    warmed = EchoSpec(name=unique("dask-warmed"), delay=0.3)
    plugin = SpecWarmUp(warmed, prefect_logs=True)
    runner = prefect_dask.DaskTaskRunner(
        cluster_kwargs={
            "n_workers": 2,
            "processes": True,
            "threads_per_worker": 2,
            "plugins": {plugin},
        }
    )
    state = fan_out.with_options(task_runner=runner)([warmed], 6, return_state=True)
    assert state.is_completed(), state
    results = state.result()
    report_first_tasks("Dask with SpecWarmUp", results)
    for row in results:
        assert row["fresh"][warmed.cache_key()] is False
        assert row["builds"][warmed.cache_key()] == 1


def test_dask_plugin_refuses_thread_scoped_specs():
    pytest.importorskip("distributed", reason="needs distributed")
    from handles.integrations.dask import SpecWarmUp

    with pytest.raises(ValueError, match="thread-scoped"):
        SpecWarmUp(ThreadEchoSpec(name="t"))
    same = EchoSpec(name="same")
    assert SpecWarmUp(same).name == SpecWarmUp(same.replace()).name


def test_a_failed_warm_up_is_logged_and_retried_by_the_task(tmp_path, caplog):
    blocker = tmp_path / "blocker"
    blocker.touch()
    spec = EchoSpec(name=unique("flaky"), fail_if_exists=str(blocker))
    with caplog.at_level(logging.WARNING, logger="handles"):
        assert warm([spec]) == 0
    assert "warm-up of" in caplog.text
    assert spec not in handles.registry(), "nothing half-built is cached"
    blocker.unlink()
    assert spec.get().ping() == spec.name
