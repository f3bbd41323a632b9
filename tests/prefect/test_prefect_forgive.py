"""Forgiveness: a live object this process's registry built, passed to a task by mistake, is
sent as its spec and arrives as the worker's own object, on thread and process pools."""

from __future__ import annotations

import os

import pytest
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from test_prefect_engines import ray_address  # noqa: F401  (a fixture: the Ray cluster)
from test_prefect_task_worker import loopback_server  # noqa: F401  (a fixture: a real server)

import handles
from handles import DatabaseSpec, SqliteSpec
from handles.integrations._forgive import AsLive
from handles.integrations._prefect_cache import SPEC_INPUTS

pytestmark = pytest.mark.usefixtures("prefect_server")


def run(runner, tmp_path):
    import forgive_flows
    from spec_flows import run_logs

    for checked in (forgive_flows.read_row, forgive_flows.engine_row):
        checked._told.clear()  # once per call site and process: these tests reuse the sites
    path = str(tmp_path / "rows.db")
    url = f"sqlite:///{(tmp_path / 'engine.db').as_posix()}"
    state = forgive_flows.forgiving.with_options(task_runner=runner)(path, url, return_state=True)
    out = state.result()
    lines = [log.message for log in run_logs(state.state_details.flow_run_id)]
    return out, path, url, lines


def told(lines):
    return [line for line in lines if "was given live objects" in line]


@pytest.mark.parametrize(
    "runner",
    [ThreadPoolTaskRunner(max_workers=2), ProcessPoolTaskRunner(max_workers=1)],
    ids=["threads", "processes"],
)
def test_a_live_object_arrives_as_the_workers_own(runner, tmp_path):
    out, path, url, lines = run(runner, tmp_path)
    flow_side = out["flow"]
    conn_key = SqliteSpec(path=path).cache_key()
    engine_key = DatabaseSpec(url=url).cache_key()
    for row in out["rows"]:
        # sqlite3 refuses a connection from another thread: a working one is the worker's own.
        assert (row["type"], row["key"], row["value"]) == ("Connection", conn_key, 10)
        assert row["thread"] != flow_side["thread"]
    for n, row in zip((2, 3), out["engines"], strict=True):
        assert (row["type"], row["key"], row["value"]) == ("Engine", engine_key, n + 1)
    if isinstance(runner, ProcessPoolTaskRunner):
        assert all(row["pid"] != os.getpid() for row in out["rows"] + out["engines"])
    else:
        assert all(row["pid"] == os.getpid() for row in out["rows"] + out["engines"])
    # The second submit of the same spec and input is served from the cache.
    assert out["states"] == ["Completed", "Cached"]
    # Logged once per call site: the submit line and the map line.
    assert len(told(lines)) == 2, told(lines)
    assert any("SqliteSpec(" in line for line in told(lines))


def test_a_rerun_is_a_cache_hit_keyed_by_the_spec(tmp_path):
    runner = ThreadPoolTaskRunner(max_workers=2)
    first, *_ = run(runner, tmp_path)
    handles.registry().close()  # a fresh object: the key is the spec's, not the object's
    again, *_ = run(runner, tmp_path)
    assert again["states"] == ["Cached", "Cached"]
    assert again["engine_states"] == ["Cached", "Cached"]
    assert again["rows"] == first["rows"]


def test_an_object_the_registry_did_not_build_is_refused(tmp_path):
    import forgive_flows

    out = forgive_flows.unforgiven(str(tmp_path / "own.db"))
    assert out.startswith("PreflightError")
    assert "SqliteSpec(path=...)" in out


def test_as_live_is_keyed_as_its_spec(tmp_path):
    spec = SqliteSpec(path=str(tmp_path / "k.db"))
    from handles.integrations._prefect_cache import _keyed

    assert _keyed(AsLive(spec)) == _keyed(spec)
    assert SPEC_INPUTS.exclude == []


def test_forgive_false_refuses_as_before(tmp_path):
    from prefect import flow, task

    from handles.integrations.prefect import PreflightError, preflight

    @preflight(forgive=False)
    @task
    def count(conn) -> int:
        return 1

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def passes_live() -> str:
        conn = SqliteSpec(path=str(tmp_path / "f.db")).get()
        try:
            count.submit(conn).result()
        except PreflightError as exc:
            return str(exc)
        return "let through"

    assert "sqlite3 connection" in passes_live()


@pytest.mark.load
@pytest.mark.parametrize("engine", ["dask", "ray"])
def test_a_live_object_arrives_as_the_workers_own_on_clusters(engine, request, tmp_path):
    from test_prefect_engines import runner_for

    out, path, url, lines = run(runner_for(engine, request), tmp_path)
    conn_key = SqliteSpec(path=path).cache_key()
    engine_key = DatabaseSpec(url=url).cache_key()
    for row in out["rows"]:
        assert (row["type"], row["key"], row["value"]) == ("Connection", conn_key, 10)
    for n, row in zip((2, 3), out["engines"], strict=True):
        assert (row["type"], row["key"], row["value"]) == ("Engine", engine_key, n + 1)
    assert all(row["pid"] != os.getpid() for row in out["rows"] + out["engines"])
    assert out["states"] == ["Completed", "Cached"]
    assert len(told(lines)) == 2, told(lines)


DELAY_CLIENT = """
import json, os, sys
from handles import SqliteSpec
from spec_flows import result_of
from forgive_flows import read_row
conn = SqliteSpec(path=sys.argv[1]).get()
future = read_row.delay(conn, 1)  # the live connection, forgiven
print(json.dumps({"client": os.getpid(), "row": result_of(future)}))
"""


@pytest.mark.load
def test_delay_forgives_and_the_task_worker_gets_its_own(request, tmp_path):
    import json
    import subprocess
    import sys

    from test_prefect_task_worker import start, stop

    env = request.getfixturevalue("loopback_server")
    log = tmp_path / "worker.log"
    serve = "import forgive_flows; forgive_flows.serve_read_row()"
    worker = start([sys.executable, "-c", serve], env, log)
    path = str(tmp_path / "delay.db")
    try:
        client = subprocess.run(
            [sys.executable, "-c", DELAY_CLIENT, path],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        stop(worker)
    assert client.returncode == 0, (client.stderr[-4000:], log.read_text(errors="replace")[-4000:])
    out = json.loads(client.stdout.strip().splitlines()[-1])
    row = out["row"]
    assert (row["type"], row["key"], row["value"]) == (
        "Connection",
        SqliteSpec(path=path).cache_key(),
        10,
    )
    assert row["pid"] != out["client"]


def test_wrapped_tasks_keep_distinct_keys_that_their_copies_share(tmp_path):
    from prefect import task

    from handles.integrations.prefect import preflight

    def make(where: str):
        space: dict[str, object] = {}
        exec(compile("def count(conn):\n    return 1\n", where, "exec"), space)
        return preflight(task(space["count"]))

    first, second = make("one.py"), make("two.py")
    # Same name, different functions: different keys, as Prefect gives unwrapped tasks.
    assert first.task.task_key != second.task.task_key
    # A copy (what a task worker serves) has the key of the task it copies.
    assert first.with_options(persist_result=True).task_key == first.task.task_key
    assert first.task.fn(AsLive(SqliteSpec(path=str(tmp_path / "k.db")))) == 1
