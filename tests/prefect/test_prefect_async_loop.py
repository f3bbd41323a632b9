"""A bound runner's workers keep one event loop each for their async task runs.

On the real PostgreSQL: one engine per worker, Prefect's task-run semantics as
on Prefect's own runner (timeouts, cancellation, retries, wait_for, context,
logs, results), and the loop and its objects closed when the runner stops.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("greenlet")
from loop_flows import (
    LoopMarkerSpec,
    cancel_a_query,
    cancelled_run,
    flaky,
    probe,
    sleep_in_database,
)
from prefect import flow, tags
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import allow_failure
from spec_flows import run_logs
from sqlalchemy import make_url, text

from handles import AsyncDatabaseSpec, DatabaseSpec
from handles.integrations.prefect import bind_to_workers
from support.cases_sql import postgres_url, tagged

pytestmark = pytest.mark.usefixtures("prefect_server")


def async_spec(tag: str) -> AsyncDatabaseSpec:
    # The URL as SQLAlchemy's docs write it: create_async_engine picks psycopg's async dialect.
    url = make_url(tagged(postgres_url(), tag)).set(drivername="postgresql+psycopg")
    return AsyncDatabaseSpec(url=url.render_as_string(hide_password=False), pool_size=2)


def connections(tag: str, settle_to: int | None = None) -> int:
    """Server sessions named `tag`; with `settle_to`, waits (up to 60 s) for that count."""
    import time

    monitor = DatabaseSpec(url=tagged(postgres_url(), "handles-loop-monitor"), pool_size=1)
    sql = text("select count(*) from pg_stat_activity where application_name = :tag")
    deadline = time.monotonic() + 60
    while True:
        with monitor.get().connect() as conn:
            count = int(conn.execute(sql, {"tag": tag}).scalar_one())
        if settle_to is None or count == settle_to or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


@flow
def every_semantic(db: AsyncDatabaseSpec, marker: LoopMarkerSpec) -> dict[str, Any]:
    """Each kind of task-run ending, in order, on the runner given by with_options."""
    first = probe.submit(db, marker, 0)
    timed_out = sleep_in_database.with_options(timeout_seconds=1).submit(db, wait_for=[first])
    cancelled = cancel_a_query.submit(db, wait_for=[allow_failure(timed_out)])
    retried = flaky.submit(db, wait_for=[cancelled])
    with tags("after"):
        last = probe.submit(db, marker, 1, wait_for=[retried])
    # Last: what waiting for a cancelled run raises reaches whatever waits for it.
    crashed = cancelled_run.submit(wait_for=[last])
    futures = {
        "timed_out": timed_out,
        "cancelled": cancelled,
        "crashed": crashed,
        "retried": retried,
    }
    return {
        "states": {name: ending(future) for name, future in futures.items()},
        "first": first.result(),
        "cancelled": cancelled.result(),
        "retried": retried.result(),
        "last": last.result(),
    }


def ending(future: Any) -> str:
    """The state a task run ended in, or what waiting for it raised in the flow."""
    try:
        future.wait()
    except BaseException as exc:  # a cancelled run's CancelledError reaches the flow
        return f"raised {type(exc).__name__}"
    return str(future.state.name)


def run_semantics(runner: Any, tag: str, folder: Path) -> tuple[dict[str, Any], Any]:
    state = every_semantic.with_options(task_runner=runner)(
        async_spec(tag), LoopMarkerSpec(folder=str(folder)), return_state=True
    )
    return state.result(), state.state_details.flow_run_id


def test_a_pool_thread_runs_every_async_task_run_on_its_one_loop(tmp_path):
    plain_tag, bound_tag = (f"handles-loop-{uuid.uuid4().hex[:8]}" for _ in range(2))
    (tmp_path / "plain").mkdir()
    (tmp_path / "bound").mkdir()
    db = async_spec(bound_tag)
    marker = LoopMarkerSpec(folder=str(tmp_path / "bound"))
    plain, _ = run_semantics(ThreadPoolTaskRunner(max_workers=1), plain_tag, tmp_path / "plain")
    runner = bind_to_workers(ThreadPoolTaskRunner(max_workers=1), db, marker)
    bound, flow_run_id = run_semantics(runner, bound_tag, tmp_path / "bound")

    # Prefect's semantics hold: every ending is the one its own runner gives.
    assert bound["states"] == plain["states"]
    assert bound["states"]["timed_out"] == "TimedOut"
    assert bound["states"]["retried"] == "Completed"
    assert bound["retried"]["run_count"] == 2
    assert bound["cancelled"]["cancelled"] is True
    assert bound["last"]["tags"] == ["after"] == plain["last"]["tags"]

    # Unbound, each task run had a loop and an engine of its own.
    assert plain["first"]["loop"] != plain["last"]["loop"]
    assert plain["last"]["engine"] != plain["first"]["engine"]
    # Bound, one loop and one engine (built as the thread started) served them all,
    # through a timeout, a cancelled query and a cancelled task run.
    runs = [bound["first"], bound["cancelled"], bound["retried"], bound["last"]]
    assert {(r["thread"], r["loop"]) for r in runs} == {
        (bound["first"]["thread"], bound["first"]["loop"])
    }
    assert bound["first"]["engine"] == bound["retried"]["engine"] == bound["last"]["engine"]
    assert bound["last"]["builds"] == 1
    assert len({bound["first"]["backend"], bound["last"]["backend"]}) <= 2  # pool_size

    # Logs and context: each line belongs to its own task run.
    lines = [log for log in run_logs(flow_run_id) if log.message.startswith("probe ")]
    assert {str(log.task_run_id) for log in lines} == {
        bound["first"]["task_run"],
        bound["last"]["task_run"],
    }

    # The runner stopped: the thread closed its loop, the marker's ateardown ran
    # on it, and the engine was disposed there (no session left on the server).
    loop = bound["first"]["loop"]
    assert [p.name for p in (tmp_path / "bound").iterdir()] == [
        f"{bound['first']['pid']}-{bound['first']['thread']}-{loop}"
    ]
    assert connections(bound_tag, settle_to=0) == 0


@flow
def probes(db: AsyncDatabaseSpec, marker: LoopMarkerSpec, n: int) -> list[dict[str, Any]]:
    return [future.result() for future in probe.map(db, marker, range(n))]


def test_a_process_pool_worker_keeps_one_loop_and_engine_and_closes_them_at_exit(tmp_path):
    tag = f"handles-loop-{uuid.uuid4().hex[:8]}"
    db = async_spec(tag)
    marker = LoopMarkerSpec(folder=str(tmp_path))
    runner = bind_to_workers(ProcessPoolTaskRunner(max_workers=2), db, marker)
    results = probes.with_options(task_runner=runner)(db, marker, 8)

    assert sorted(r["n"] for r in results) == list(range(8))
    loops: dict[int, set[int]] = {}
    for r in results:
        loops.setdefault(r["pid"], set()).add(r["loop"])
        assert r["builds"] == 1  # built once in that worker, as it started
    assert 1 <= len(loops) <= 2
    assert all(len(per_worker) == 1 for per_worker in loops.values())
    assert len({r["backend"] for r in results}) <= 2 * 2  # workers x pool_size
    # Each worker closed its loop as it exited: its objects' ateardown ran there.
    closed = {int(p.name.split("-")[0]) for p in tmp_path.iterdir()}
    assert set(loops) <= closed
    assert connections(tag, settle_to=0) == 0
