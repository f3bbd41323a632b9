"""Forgiveness: a live object this process's registry built, passed to a task by mistake, is
sent as its spec and arrives as the worker's own object, on thread and process pools."""

from __future__ import annotations

import os

import pytest
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

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
