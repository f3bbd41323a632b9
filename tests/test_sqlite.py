"""SqliteSpec on real SQLite files: paths, threads, pragmas, read-only, memory, engine, load."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import handles
from handles import SqliteSpec
from handles.specs._paths import absolute
from support.forking import run_in_fork


def test_relative_path_resolves_where_the_spec_is_made(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    spellings = ["app.db", "./app.db", "sub/../app.db", str(tmp_path / "app.db"), Path("app.db")]
    specs = [SqliteSpec(path=p) for p in spellings]
    assert {s.path for s in specs} == {str(tmp_path / "app.db")}
    assert len({s.cache_key() for s in specs}) == 1
    assert json.loads(specs[0].model_dump_json())["path"] == str(tmp_path / "app.db")

    # A worker with another working directory still reaches the same file.
    monkeypatch.chdir(tmp_path / "sub")
    specs[0].get().execute("create table t (x)")
    assert (tmp_path / "app.db").exists()
    assert not (tmp_path / "sub" / "app.db").exists()
    assert SqliteSpec(path="app.db").cache_key() != specs[0].cache_key()


def test_key_follows_the_database_not_how_to_connect(tmp_path):
    base = SqliteSpec(path=tmp_path / "a.db")
    same_db = [base.replace(read_only=True), base.replace(pragmas={"synchronous": "normal"})]
    assert {s.cache_key() for s in same_db} == {base.cache_key()}
    assert SqliteSpec(memory="a").cache_key() != SqliteSpec(memory="b").cache_key()
    assert sorted(SqliteSpec.identity_fields) == ["memory", "path"]


@pytest.mark.skipif(os.name != "posix", reason="pinned keys of POSIX absolute paths")
def test_keys_are_pinned():
    # Pinned: a change here silently invalidates every cache users persisted.
    from handles.specs.sqlite import _engine_spec, _SqliteMemoryKeeper, _SqliteWriterLock

    db = SqliteSpec(path="/data/app.db")
    pinned = {
        db: "2cc30e3e7dbf9f96f6e20f7f419215addfe20c7f3cb9e5019bfeeec48b1ce558",
        SqliteSpec(path=Path("/data/p.db"), read_only=True, pragmas={"synchronous": 1}): (
            "5ce0bef503beb4b9a00fe686f21511d0e86e3ea997ab02ad36794db1de7e3eef"
        ),
        SqliteSpec(memory="cache"): (
            "aafb1151bbf17975325d3891c98815a2118e4178911e58ca3089e96deed8819b"
        ),
        _engine_spec(db): "418437f38d533cbab4e035894803e46f8f884031592e6ce513bf6e297eb3aad9",
        _SqliteMemoryKeeper(name="cache"): (
            "34d240670e81fb6d1f42ec1fb34af4abfc53b18fbb24f1d3b186e7067c5778a2"
        ),
        _SqliteWriterLock(path="/data/app.db"): (
            "d989b7186d5d752ee1b2a325ea827c4af4de2435dbd84fc2d7e8f8075258ec5d"
        ),
    }
    assert {spec: spec.cache_key() for spec in pinned} == pinned


@pytest.mark.parametrize("name", ["_SqliteMemoryKeeper", "_SqliteWriterLock", "_SqliteEngine"])
def test_pickles_naming_the_internal_specs_here_still_load(name: str):
    # The internal specs moved to handles.specs._sqlite_*; a pickle made before
    # names them handles.specs.sqlite.<name>, which must still resolve.
    import handles.specs.sqlite as here

    cls = getattr(here, name)
    db = SqliteSpec(path="/data/app.db")
    spec = {
        "_SqliteMemoryKeeper": lambda: cls(name="cache"),
        "_SqliteWriterLock": lambda: cls(path=db.path),
        "_SqliteEngine": lambda: cls(database=db),
    }[name]()
    old = pickle.dumps(spec, protocol=0).replace(
        f"c{cls.__module__}\n".encode(), b"chandles.specs.sqlite\n"
    )
    assert b"chandles.specs.sqlite\n" + name.encode() in old
    loaded = pickle.loads(old)
    assert type(loaded) is cls
    assert loaded == spec
    assert loaded.cache_key() == spec.cache_key()


def test_the_path_rule_is_the_one_every_kind_shares(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spelling in ["a.db", "./x/../a.db", "~/a.db", str(tmp_path / "a.db")]:
        assert SqliteSpec(path=spelling).path == absolute(spelling)


def test_shared_connection_fails_but_spec_gives_each_thread_its_own(tmp_path):
    # The failure this kind exists for: a connection made in one thread, used in another.
    shared = sqlite3.connect(tmp_path / "raw.db")
    with (
        ThreadPoolExecutor(1) as pool,
        pytest.raises(sqlite3.ProgrammingError, match="same thread"),
    ):
        pool.submit(shared.execute, "select 1").result()
    shared.close()

    spec = SqliteSpec(path=tmp_path / "app.db")
    with spec.transaction() as conn:
        conn.execute("create table t (thread integer, i integer)")

    def work(i: int) -> int:
        with spec.transaction() as conn:
            conn.execute("insert into t values (?, ?)", (threading.get_ident(), i))
        return id(spec.get())

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(work, range(200)))
    assert spec.get().execute("select count(*) from t").fetchone() == (200,)
    assert len(ids) <= 8
    assert id(spec.get()) not in ids, "the main thread has a connection of its own"


def test_close_leaves_a_running_threads_connection_to_that_thread(tmp_path):
    # Closing a connection another thread may be inside crashes the interpreter
    # (SQLite runs statements without the GIL): the owner closes it, at its end.
    spec = SqliteSpec(path=tmp_path / "app.db")
    got: list[sqlite3.Connection] = []
    ready, release = threading.Event(), threading.Event()
    after_close: list[object] = []

    def hold() -> None:
        got.append(spec.get())
        ready.set()
        release.wait()
        after_close.append(got[0].execute("select 1").fetchone())
        after_close.append(spec.get() is not got[0])  # retired: a new one is built

    worker = threading.Thread(target=hold)
    worker.start()
    ready.wait()
    handles.registry().close()  # from the main thread, while the worker still runs
    release.set()
    worker.join()
    assert after_close == [(1,), True]
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        got[0].execute("select 1")


def test_default_pragmas_make_a_file_safe_to_share(tmp_path):
    conn = SqliteSpec(path=tmp_path / "app.db").get()
    assert conn.execute("pragma journal_mode").fetchone() == ("wal",)
    assert conn.execute("pragma busy_timeout").fetchone() == (5000,)
    assert conn.execute("pragma foreign_keys").fetchone() == (1,)


def test_pragmas_merge_over_defaults_and_none_leaves_sqlites_default(tmp_path):
    spec = SqliteSpec(
        path=tmp_path / "app.db",
        pragmas={"Synchronous": 1, "journal_mode": None, "busy_timeout": 250},
    )
    assert spec.pragmas == {
        "busy_timeout": 250,
        "foreign_keys": True,
        "journal_mode": None,
        "synchronous": "normal",
    }
    assert SqliteSpec.model_validate_json(spec.model_dump_json()) == spec
    conn = spec.get()
    assert conn.execute("pragma synchronous").fetchone() == (1,)
    assert conn.execute("pragma journal_mode").fetchone() == ("delete",)
    assert conn.execute("pragma busy_timeout").fetchone() == (250,)


def test_foreign_keys_are_enforced(tmp_path):
    spec = SqliteSpec(path=tmp_path / "app.db")
    with spec.transaction() as conn:
        conn.execute("create table parent (id integer primary key)")
        conn.execute("create table child (parent integer references parent(id))")
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"), spec.transaction() as conn:
        conn.execute("insert into child values (42)")


def test_read_only_reads_and_refuses_writes(tmp_path):
    writer = SqliteSpec(path=tmp_path / "app.db")
    with writer.transaction() as conn:
        conn.execute("create table t (x)")
        conn.execute("insert into t values (1)")
    reader = writer.replace(read_only=True)
    with reader.transaction() as conn:
        assert conn.execute("select x from t").fetchall() == [(1,)]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.get().execute("insert into t values (2)")


def _insert_then_fail(spec: SqliteSpec, value: str) -> None:
    with spec.transaction() as conn:
        conn.execute("insert into t values (?)", (value,))
        raise KeyError(value)


def test_transaction_commits_rolls_back_and_nests(tmp_path):
    spec = SqliteSpec(path=tmp_path / "app.db")
    with spec.transaction() as conn:
        conn.execute("create table t (x)")
    with pytest.raises(KeyError):
        _insert_then_fail(spec, "rolled back")
    with spec.transaction() as conn:
        conn.execute("insert into t values ('outer')")
        with pytest.raises(KeyError):
            _insert_then_fail(spec, "inner, rolled back")
        with spec.transaction():
            conn.execute("insert into t values ('inner, kept')")
    rows = spec.get().execute("select x from t order by rowid").fetchall()
    assert rows == [("outer",), ("inner, kept",)]
    assert not spec.get().in_transaction


def test_writers_queue_on_a_lock_file_next_to_the_database(tmp_path):
    spec = SqliteSpec(path=tmp_path / "app.db")
    with spec.transaction() as conn:
        conn.execute("create table t (x)")
    assert (tmp_path / "app.db-lock").exists()
    with spec.replace(read_only=True).transaction() as conn:
        assert conn.execute("select count(*) from t").fetchone() == (0,)


def test_one_thread_writing_through_two_connections_fails_instead_of_hanging(tmp_path):
    first = SqliteSpec(path=tmp_path / "app.db", pragmas={"busy_timeout": 50})
    second = first.replace(pragmas={"busy_timeout": 50, "synchronous": "normal"})
    with first.transaction() as conn:
        conn.execute("create table t (x)")
    with first.transaction(), pytest.raises(sqlite3.OperationalError, match="locked"):
        _insert(second, 1)


def _insert(spec: SqliteSpec, value: object) -> None:
    with spec.transaction() as conn:
        conn.execute("insert into t values (?)", (value,))


def test_memory_database_is_shared_by_threads_and_outlives_them():
    spec = SqliteSpec(memory="shared")

    def create() -> None:
        with spec.transaction() as conn:
            conn.execute("create table t (x)")
            conn.execute("insert into t values (1)")

    worker = threading.Thread(target=create)
    worker.start()
    worker.join()  # its connection is closed when the thread ends ...
    del worker
    # ... but the database lives on for the process.
    assert spec.get().execute("select x from t").fetchall() == [(1,)]
    assert SqliteSpec(memory="other").get().execute(
        "select count(*) from sqlite_master"
    ).fetchone() == (0,)

    handles.registry().close()
    tables = spec.get().execute("select name from sqlite_master").fetchall()
    assert tables == [], "closing the registry ends the in-memory database"


def test_engine_is_one_per_process_with_the_same_pragmas(tmp_path):
    from sqlalchemy import text

    spec = SqliteSpec(path=tmp_path / "app.db", pragmas={"synchronous": "off"})
    engine = spec.engine()
    assert spec.engine() is engine
    assert SqliteSpec(path=tmp_path / "app.db", pragmas={"synchronous": "off"}).engine() is engine
    with spec.transaction() as conn:
        conn.execute("create table t (x)")
        conn.execute("insert into t values (1)")

    def read(_: int) -> tuple[object, ...]:
        with engine.connect() as conn:
            return (
                conn.execute(text("pragma foreign_keys")).scalar_one(),
                conn.execute(text("pragma synchronous")).scalar_one(),
                conn.execute(text("select x from t")).scalar_one(),
            )

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(read, range(20))) == {(1, 0, 1)}
    kinds = {s.kind: s for s in handles.registry().stats().values()}
    assert kinds["sqlite-engine"].builds == 1
    handles.registry().close()
    assert spec.engine() is not engine, "close() disposed the engine; a new one is built"


def test_engine_on_a_memory_database_sees_the_threads_data():
    from sqlalchemy import text

    spec = SqliteSpec(memory="engine-shared")
    with spec.transaction() as conn:
        conn.execute("create table t (x)")
        conn.execute("insert into t values (7)")
    with spec.engine().connect() as conn:
        assert conn.execute(text("select x from t")).scalar_one() == 7


def _child_uses_engines(spec: SqliteSpec, inherited: Any) -> bool:
    from sqlalchemy import text

    own = spec.engine()
    with own.begin() as conn:
        conn.execute(text("insert into t values ('child')"))
    # An engine carried over from the parent drops the parent's connections.
    with inherited.begin() as conn:
        conn.execute(text("insert into t values ('child via inherited')"))
    return own is not inherited


def test_forked_child_builds_its_own_engine(tmp_path):
    from sqlalchemy import text

    spec = SqliteSpec(path=tmp_path / "app.db")
    engine = spec.engine()
    with engine.begin() as conn:
        conn.execute(text("create table t (x)"))
        conn.execute(text("insert into t values ('parent')"))
    assert run_in_fork(_child_uses_engines, spec, engine) is True
    with engine.connect() as conn:
        rows = conn.execute(text("select x from t order by rowid")).scalars().all()
    assert rows == ["parent", "child", "child via inherited"]


def test_importing_and_making_specs_imports_no_sqlalchemy(run_python):
    script = (
        "import sys, handles\n"
        "from handles import SqliteSpec, DatabaseSpec\n"
        "SqliteSpec(memory='x').get()\n"
        "DatabaseSpec(url='postgresql+psycopg://u@h/db', password='env:PW')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'psycopg')))\n"
    )
    out = run_python(script)
    assert out == "[]"


# -- load: 4 processes x 4 threads x 500 single-row transactions into one file ----

PROCESSES, THREADS, ROWS = 4, 4, 500


def _insert_rows(spec: SqliteSpec, proc: int, start: object, results: object) -> None:
    errors: list[str] = []

    def insert(thread: int) -> None:
        for seq in range(ROWS):
            try:
                with spec.transaction() as conn:
                    conn.execute("insert into events values (?, ?, ?)", (proc, thread, seq))
            except sqlite3.Error as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    start.wait()  # type: ignore[attr-defined]
    threads = [threading.Thread(target=insert, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put((proc, errors))  # type: ignore[attr-defined]


@pytest.mark.slow
def test_load_four_processes_four_threads_no_lost_rows_no_locks(tmp_path):
    spec = SqliteSpec(path=tmp_path / "load.db")
    with spec.transaction() as conn:
        conn.execute("create table events (proc, thread, seq, primary key (proc, thread, seq))")
    handles.registry().close()  # the parent holds no connection during the run

    # spawn, as Prefect's process pool does: each worker gets the pickled spec.
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES + 1)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_insert_rows, args=(spec, p, start, results)) for p in range(PROCESSES)
    ]
    for w in workers:
        w.start()
    try:
        start.wait(timeout=120)
        began = time.perf_counter()
        reports = [results.get(timeout=280) for _ in workers]
        seconds = time.perf_counter() - began
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
    errors = [e for _, errs in reports for e in errs]
    rows = (
        spec.get()
        .execute("select count(*), count(distinct proc || '.' || thread || '.' || seq) from events")
        .fetchone()
    )
    total = PROCESSES * THREADS * ROWS
    print(
        f"\nSqliteSpec load: {PROCESSES} processes x {THREADS} threads x {ROWS} transactions = "
        f"{total} rows in {seconds:.2f} s: {total / seconds:.0f} transactions/s, "
        f"{len(errors)} errors"
    )
    assert [w.exitcode for w in workers] == [0] * PROCESSES
    assert errors == []
    assert rows == (total, total)


@pytest.mark.skipif(os.sep != "/", reason="a backslash is a separator on Windows")
def test_a_backslash_is_part_of_a_file_name_on_posix(tmp_path, monkeypatch):
    # The path rule normalizes separators only where the system has two: the key
    # (and the file opened) must stay what it was before the rule was shared.
    monkeypatch.chdir(tmp_path)
    spec = SqliteSpec(path="a\\b.db")
    assert spec.path == f"{tmp_path.as_posix()}/a\\b.db"
    spec.get().execute("create table t (x)")
    assert (tmp_path / "a\\b.db").is_file()
