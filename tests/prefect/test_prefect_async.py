"""Async Prefect tasks with AsyncDatabaseSpec on the real PostgreSQL: threads, processes, Dask.

Never "attached to a different loop"; after the flow, no connection is left behind.
"""

from __future__ import annotations

import time
import uuid

import pytest

pytest.importorskip("greenlet")
from async_flows import count_rows
from prefect import flow
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from sqlalchemy import make_url, text

import handles
from handles import AsyncDatabaseSpec, DatabaseSpec
from support.cases_sql import postgres_url, tagged

pytestmark = pytest.mark.usefixtures("prefect_server")


def async_spec(tag: str) -> AsyncDatabaseSpec:
    url = make_url(tagged(postgres_url(), tag)).set(drivername="postgresql+psycopg_async")
    return AsyncDatabaseSpec(url=url.render_as_string(hide_password=False), pool_size=2)


def connections(tag: str) -> int:
    monitor = DatabaseSpec(url=tagged(postgres_url(), "handles-async-monitor"), pool_size=1)
    with monitor.get().connect() as conn:
        sql = text("select count(*) from pg_stat_activity where application_name = :tag")
        return int(conn.execute(sql, {"tag": tag}).scalar_one())


def settled_connections(tag: str) -> int:
    # The server notices closed sockets a moment after the client closes them.
    for _ in range(200):
        left = connections(tag)
        if left == 0:
            return 0
        time.sleep(0.05)
    return left


def dask_runner() -> object:
    prefect_dask = pytest.importorskip("prefect_dask", reason="needs prefect-dask")
    return prefect_dask.DaskTaskRunner(cluster_kwargs={"n_workers": 2, "processes": True})


@pytest.mark.parametrize(
    "runner",
    [
        pytest.param(lambda: ThreadPoolTaskRunner(max_workers=3), id="threads"),
        pytest.param(lambda: ProcessPoolTaskRunner(max_workers=2), id="processes"),
        pytest.param(dask_runner, id="dask"),
    ],
)
def test_async_tasks_get_their_loops_engine_and_leave_no_connections(runner):
    tag = f"handles-prefect-async-{uuid.uuid4().hex[:8]}"
    db = async_spec(tag)

    @flow(task_runner=runner())
    def fan_out(db: AsyncDatabaseSpec) -> list[dict[str, int]]:
        return [f.result() for f in [count_rows.submit(db, n) for n in range(8)]]

    results = fan_out(db)
    assert sorted(r["n"] for r in results) == list(range(8))
    handles.registry().close()  # this process's engines, if the flow's loops outlive the run
    assert settled_connections(tag) == 0
