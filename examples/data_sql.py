"""SQL handles without Prefect: one SQLite file and one SQLAlchemy database, used from
threads and from spawned worker processes that receive only the pickled spec.

    python examples/data_sql.py

DatabaseSpec uses HANDLES_TEST_POSTGRES_URL when it is set (for example
postgresql+psycopg://postgres@127.0.0.1:5432/test) and an SQLite file otherwise.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import text

import handles
from handles import DatabaseSpec, SqliteSpec

WORKERS = 2


def record_event(db: SqliteSpec, source: str, n: int) -> None:
    # db.get() inside transaction() is this thread's own connection.
    with db.transaction() as conn:
        conn.execute("insert into events (source, n) values (?, ?)", (source, n))


def worker_task(db: SqliteSpec, warehouse: DatabaseSpec, n: int) -> int:
    """Runs in a worker process: each spec builds its object there, once."""
    record_event(db, f"process-{os.getpid()}", n)
    with warehouse.transaction() as conn:
        conn.execute(text("insert into handles_example_sales (amount) values (:n)"), {"n": n})
    return os.getpid()


def warehouse_spec(folder: Path) -> DatabaseSpec:
    url = os.environ.get("HANDLES_TEST_POSTGRES_URL") or f"sqlite:///{folder / 'sales.db'}"
    # At most 6 connections over the parent and 2 workers (2 each), whatever their threads do.
    return DatabaseSpec(url=url, max_connections=6, workers=WORKERS + 1)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db = SqliteSpec(path=folder / "events.db")  # absolute from here on
        warehouse = warehouse_spec(folder)
        print("sqlite   ", db.cache_key()[:16], db.path)
        print("database ", warehouse.cache_key()[:16], warehouse.model_dump(mode="json")["url"])
        print("per-process connections:", warehouse.connections_per_process())

        with db.transaction() as conn:
            conn.execute("create table events (source text, n integer)")
        with warehouse.transaction() as conn:
            conn.execute(text("drop table if exists handles_example_sales"))
            conn.execute(text("create table handles_example_sales (amount integer)"))

        # Threads: each gets its own sqlite3 connection from the same spec.
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda n: record_event(db, "thread", n), range(20)))

        # Processes: spawned like Prefect's process pool; only the specs travel.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(WORKERS, mp_context=ctx) as pool:
            pids = set(pool.map(worker_task, [db] * 10, [warehouse] * 10, range(10)))

        rows = db.get().execute("select count(*) from events").fetchone()[0]
        with db.engine().connect() as conn:  # the same file through SQLAlchemy
            sources = conn.execute(text("select count(distinct source) from events")).scalar()
        with warehouse.get().connect() as conn:
            total = conn.execute(text("select sum(amount) from handles_example_sales")).scalar()
        print(f"events: {rows} rows from {sources} sources; {len(pids)} worker processes")
        print(f"sales total: {total}")
        with warehouse.transaction() as conn:
            conn.execute(text("drop table handles_example_sales"))

        for key, stats in handles.registry().stats().items():
            print(f"  {stats.kind:<18} {key[:12]} builds={stats.builds} hits={stats.hits}")
        handles.registry().close()  # before the folder goes away
        if (rows, total) != (30, sum(range(10))):
            raise SystemExit(f"unexpected result: {rows} rows, total {total}")


if __name__ == "__main__":
    main()
