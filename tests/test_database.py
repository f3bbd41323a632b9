"""DatabaseSpec: engines, secrets, the connection budget, fork, and the real PostgreSQL.

PostgreSQL tests read HANDLES_TEST_POSTGRES_URL (set by .ci/run) and skip, saying
so, where it is unset.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import pickle
import queue
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytest.importorskip("sqlalchemy", reason="DatabaseSpec needs handles[sql]")

from sqlalchemy import Engine, text

import handles
from handles import DatabaseSpec, SpecError
from support.cases_sql import postgres_url, tagged
from support.forking import run_in_fork

SECRET = "s3cret-Pa55"


def sqlite_url(tmp_path: Any, name: str = "app.db") -> str:
    return f"sqlite:///{(tmp_path / name).as_posix()}"


def test_get_is_one_engine_and_transaction_commits_or_rolls_back(tmp_path):
    spec = DatabaseSpec(url=sqlite_url(tmp_path))
    engine = spec.get()
    assert isinstance(engine, Engine)
    assert spec.get() is engine
    with spec.transaction() as conn:
        conn.execute(text("create table t (x integer)"))
        conn.execute(text("insert into t values (1)"))
    with pytest.raises(KeyError):
        _insert_then_fail(spec)
    with engine.connect() as conn:
        assert conn.execute(text("select x from t")).scalars().all() == [1]
    handles.registry().close()
    assert spec.get() is not engine, "close() disposed it; the next get() builds again"


def _insert_then_fail(spec: DatabaseSpec) -> None:
    with spec.transaction() as conn:
        conn.execute(text("insert into t values (2)"))
        raise KeyError("rolled back")


def test_keys_are_pinned():
    # Pinned: a change here silently invalidates every cache users persisted.
    pinned = {
        DatabaseSpec(url="postgresql+psycopg://app@db.internal:5432/sales"): (
            "f2682bbb9936a33d5d90dcb5bfcd2e9469d7c958f00fa81b53178616edfae53b"
        ),
        DatabaseSpec(url="postgresql+psycopg://app:s3cret@db.internal:5432/sales", pool_size=3): (
            "141b683350de0bc44f437ef82b39fdbf9056cc3fbb8b168b43b8a3fcea6aca00"
        ),
        DatabaseSpec(
            url="postgresql+psycopg://app@db/sales", password="env:PG", max_connections=8, workers=4
        ): "a34b60341aa8afcf70ad7c6afb0215a83ffff199172c70d6022f64b29eefd9cd",
        DatabaseSpec(url="sqlite:////tmp/x.db", connect_args={"timeout": 3}): (
            "2e1c2e4397e0e08eb63abebd75c44a1d05e256fbe0b1c32e04a34f409e100c35"
        ),
    }
    assert {spec: spec.cache_key() for spec in pinned} == pinned


def test_plain_password_is_masked_everywhere_but_the_pickle(caplog):
    url = f"postgresql+psycopg://app:{SECRET}@db.invalid:5432/sales"
    spec = DatabaseSpec(url=url, check_connection=False)
    caplog.set_level(logging.DEBUG, logger="handles")
    engine = spec.get()
    shown = [repr(spec), str(spec), spec.model_dump_json(), json.dumps(spec.model_dump())]
    shown += [json.dumps(spec.identity()), spec.cache_key(), repr(engine), caplog.text]
    assert all(SECRET not in text_ for text_ in shown)
    assert "app:***@db.invalid" in spec.model_dump_json()
    # The pickle is how a worker gets the spec, so it must carry the password.
    assert pickle.loads(pickle.dumps(spec)).url == url
    assert engine.url.password == SECRET
    assert spec.replace(pool_size=2).url == url


def test_a_masked_password_from_json_asks_for_a_secret_reference():
    spec = DatabaseSpec(url=f"postgresql+psycopg://app:{SECRET}@db.invalid/sales")
    for load in (DatabaseSpec.model_validate_json, handles.spec_from_json):
        with pytest.raises(SpecError, match="secret reference") as info:
            load(spec.model_dump_json())
        assert "DatabaseSpec" in str(info.value)
        assert "url" in str(info.value)


def test_secret_reference_is_read_in_build_and_never_shown(monkeypatch, tmp_path):
    monkeypatch.setenv("HANDLES_TEST_DB_PASSWORD", SECRET)
    # The worker lets specs from JSON use this secret, and send it to this host only.
    monkeypatch.setenv("HANDLES_ALLOW_SECRETS", "env:HANDLES_TEST_DB_PASSWORD")
    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "db.invalid")
    spec = DatabaseSpec(
        url="postgresql+psycopg://app@db.invalid/sales",
        password="env:HANDLES_TEST_DB_PASSWORD",
        check_connection=False,
    )
    assert json.loads(spec.model_dump_json())["password"] == {"env": "HANDLES_TEST_DB_PASSWORD"}
    assert DatabaseSpec.model_validate_json(spec.model_dump_json()) == spec
    assert SECRET not in repr(spec) + spec.model_dump_json() + repr(spec.get())
    assert spec.get().url.password == SECRET
    # Where the secret lives is placement: moving it keeps the key.
    secret_file = tmp_path / "pw"
    secret_file.write_text(SECRET + "\n")
    moved = spec.replace(password=f"file:{secret_file}")
    assert moved.cache_key() == spec.cache_key()
    assert moved.get().url.password == SECRET


@pytest.mark.parametrize(
    ("budget", "limits"),
    [
        ({}, (5, 10)),
        ({"max_connections": 8, "workers": 4}, (2, 0)),
        ({"max_connections": 40, "workers": 4}, (5, 5)),
        ({"max_connections": 100, "workers": 2}, (5, 10)),
        ({"max_connections": 7, "workers": 2, "pool_size": 1}, (1, 2)),
    ],
)
def test_budget_splits_connections_over_workers(budget, limits, tmp_path):
    spec = DatabaseSpec(url=sqlite_url(tmp_path), **budget)
    assert spec.pool_limits() == limits
    assert spec.connections_per_process() == sum(limits)
    assert spec.get().pool.size() == limits[0]


def test_budget_caps_one_process_pool(tmp_path):
    spec = DatabaseSpec(url=sqlite_url(tmp_path), max_connections=4, workers=2, pool_timeout=0.2)
    engine = spec.get()
    held = [engine.connect() for _ in range(2)]
    with pytest.raises(Exception, match="QueuePool limit"):
        engine.connect()
    for conn in held:
        conn.close()


# -- the real PostgreSQL ---------------------------------------------------------


def pg_spec(tag: str, **options: Any) -> DatabaseSpec:
    return DatabaseSpec(url=tagged(postgres_url(), tag), **options)


def count_connections(monitor: DatabaseSpec, tag: str) -> int:
    with monitor.get().connect() as conn:
        sql = text("select count(*) from pg_stat_activity where application_name = :tag")
        return int(conn.execute(sql, {"tag": tag}).scalar_one())


@pytest.fixture
def monitor() -> DatabaseSpec:
    return pg_spec("handles-test-monitor", pool_size=1, max_overflow=0)


@pytest.fixture
def pg_table(monitor: DatabaseSpec):
    name = f"handles_test_{uuid.uuid4().hex[:12]}"
    with monitor.transaction() as conn:
        columns = "proc int, thread int, seq int, primary key (proc, thread, seq)"
        conn.execute(text(f"create table {name} ({columns})"))
    yield name
    with monitor.transaction() as conn:
        conn.execute(text(f"drop table if exists {name}"))


WORKERS, THREADS, ROWS = 4, 4, 50


def _pg_worker(spec: DatabaseSpec, proc: int, table: str, results: Any, release: Any) -> None:
    try:

        def write_and_read(thread: int) -> int:
            insert = text(f"insert into {table} values (:p, :t, :s)")
            for seq in range(ROWS):
                with spec.transaction() as conn:
                    conn.execute(insert, {"p": proc, "t": thread, "s": seq})
            count = text(f"select count(*) from {table} where proc = :p and thread = :t")
            with spec.get().connect() as conn:
                return int(conn.execute(count, {"p": proc, "t": thread}).scalar_one())

        with ThreadPoolExecutor(THREADS) as pool:
            read_back = list(pool.map(write_and_read, range(THREADS)))
        results.put((proc, read_back))
    except BaseException as exc:
        results.put((proc, repr(exc)))
    release.wait(timeout=120)  # keep the pool's connections open until counted


def run_pg_workers(
    spec: DatabaseSpec, monitor: DatabaseSpec, tag: str, table: str
) -> dict[str, Any]:
    """4 spawned workers write and read back; returns what pg_stat_activity showed."""
    ctx = multiprocessing.get_context("spawn")
    results, release = ctx.Queue(), ctx.Event()
    workers = [
        ctx.Process(target=_pg_worker, args=(spec, p, table, results, release))
        for p in range(WORKERS)
    ]
    for w in workers:
        w.start()
    reports, peak = [], 0
    try:
        while len(reports) < WORKERS:
            peak = max(peak, count_connections(monitor, tag))
            with contextlib.suppress(queue.Empty):
                reports.append(results.get(timeout=0.02))
        settled = count_connections(monitor, tag)  # every worker done, pools still open
    finally:
        release.set()
        for w in workers:
            w.join(timeout=60)
            if w.is_alive():
                w.kill()
    return {
        "reports": sorted(reports),
        "peak": max(peak, settled),
        "settled": settled,
        "exitcodes": [w.exitcode for w in workers],
    }


def test_postgres_four_workers_stay_within_the_budget(monitor, pg_table):
    tag = f"handles-budget-{uuid.uuid4().hex[:8]}"
    budget = 8
    spec = pg_spec(tag, max_connections=budget, workers=WORKERS)
    seen = run_pg_workers(spec, monitor, tag, pg_table)
    with monitor.transaction() as conn:
        conn.execute(text(f"delete from {pg_table}"))
    free = pg_spec(tag + "-free")  # no budget: up to pool_size + max_overflow each
    unbudgeted = run_pg_workers(free, monitor, tag + "-free", pg_table)
    print(
        f"\nDatabaseSpec on PostgreSQL, {WORKERS} workers x {THREADS} threads: "
        f"max_connections={budget} -> peak {seen['peak']} connections "
        f"({seen['settled']} open when done); no budget -> peak {unbudgeted['peak']}"
    )
    assert seen["exitcodes"] == [0] * WORKERS
    assert seen["reports"] == [(p, [ROWS] * THREADS) for p in range(WORKERS)]
    assert seen["peak"] <= budget
    assert unbudgeted["exitcodes"] == [0] * WORKERS


def _child_after_fork(spec: DatabaseSpec, inherited: Engine) -> tuple[bool, int, int]:
    own = spec.get()
    with own.connect() as conn:
        own_pid = conn.execute(text("select pg_backend_pid()")).scalar_one()
    with inherited.connect() as conn:  # a global carried over fork
        inherited_pid = conn.execute(text("select pg_backend_pid()")).scalar_one()
    return own is not inherited, own_pid, inherited_pid


def test_postgres_fork_child_never_touches_the_parents_pool():
    spec = pg_spec(f"handles-fork-{uuid.uuid4().hex[:8]}", pool_size=1, max_overflow=0)
    engine = spec.get()
    with engine.connect() as conn:
        parent_pid = conn.execute(text("select pg_backend_pid()")).scalar_one()
    result = run_in_fork(_child_after_fork, spec, engine)
    separate, own_pid, inherited_pid = result
    assert separate
    assert parent_pid not in (own_pid, inherited_pid)
    with engine.connect() as conn:  # the parent's one pooled connection survived
        assert conn.execute(text("select pg_backend_pid()")).scalar_one() == parent_pid


def test_postgres_close_disposes_every_connection(monitor):
    tag = f"handles-close-{uuid.uuid4().hex[:8]}"
    spec = pg_spec(tag)
    engine = spec.get()
    held = [engine.connect() for _ in range(3)]
    for conn in held:
        conn.close()
    assert count_connections(monitor, tag) == 3
    del engine, held, conn  # the engine is torn down once nobody holds it
    handles.registry().evict(spec)
    remaining = count_connections(monitor, tag)
    for _ in range(500):  # the server notices a closed socket a moment later
        if remaining == 0:
            break
        time.sleep(0.01)
        remaining = count_connections(monitor, tag)
    assert remaining == 0


def test_postgres_warns_with_the_arithmetic_when_workers_could_exceed_the_server():
    spec = pg_spec(f"handles-warn-{uuid.uuid4().hex[:8]}", workers=50)
    with pytest.warns(RuntimeWarning, match=r"50 processes x 15 connections .* = 750") as info:
        spec.get()
    assert "max_connections" in str(info[0].message)
    capped = pg_spec(f"handles-warn-{uuid.uuid4().hex[:8]}", workers=50, max_connections=50)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        capped.get()
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
