"""The sqlite seed scenario: one database queried from many tasks on Prefect's thread pool.

    python examples/prefect_sqlite_threads.py

1. The flow opens a sqlite3 connection and submits it to 12 tasks. The tasks run
   on the ThreadPoolTaskRunner's threads, not the flow's, so every one fails with
   "SQLite objects created in a thread can only be used in that same thread".
2. The same flow with a `SqliteSpec` instead: each pool thread opens its own
   connection on its first task and reuses it for the rest, so that error cannot
   happen. The script prints how many connections each thread opened.

Prefect's temporary server is started once for the runs (15-40 s;
examples/_prefect_setup.py). Its database lives in a temporary PREFECT_HOME and
the demo's data in a temporary folder; both are removed at exit. Your other
PREFECT_* settings are kept.
"""

from __future__ import annotations

import logging
import sqlite3
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

if __name__ == "__main__":
    import _prefect_setup

    _prefect_setup.prepare()  # before Prefect is imported: it reads its settings then

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

import handles
from handles import SqliteSpec

THRESHOLDS = list(range(0, 120, 10))  # one task per threshold: 12 tasks
THREADS = 4


# -- 1. the seed: a live connection ---------------------------------------------------


# NO_CACHE: Prefect's default policy would also try (and fail) to hash the
# connection for a cache key, which buries the error this part is about.
@task(cache_policy=NO_CACHE)
def count_with_connection(conn: sqlite3.Connection, threshold: int) -> int:
    (count,) = conn.execute("select count(*) from items where value >= ?", (threshold,)).fetchone()
    return int(count)


@flow(task_runner=ThreadPoolTaskRunner(max_workers=THREADS))
def query_with_a_connection(path: str, thresholds: list[int]) -> list[str]:
    conn = sqlite3.connect(path)  # opened in the flow's thread
    try:
        futures = [count_with_connection.submit(conn, t) for t in thresholds]
        for future in futures:
            future.wait()
        return [str(future.state.message or future.state.name) for future in futures]
    finally:
        conn.close()


# -- 2. the fix: a spec ----------------------------------------------------------------


# --8<-- [start:spec]
@task
def count_with_spec(db: SqliteSpec, threshold: int) -> dict[str, object]:
    opened_here = db not in handles.registry()  # thread scope: this thread's connection
    conn = db.get()
    (count,) = conn.execute("select count(*) from items where value >= ?", (threshold,)).fetchone()
    return {"count": count, "thread": threading.current_thread().name, "opened": opened_here}


@flow(task_runner=ThreadPoolTaskRunner(max_workers=THREADS))
def query_with_a_spec(db: SqliteSpec, thresholds: list[int]) -> list[dict[str, object]]:
    futures = [count_with_spec.submit(db, t) for t in thresholds]
    return [future.result() for future in futures]


# --8<-- [end:spec]


def make_database(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("create table items (value integer)")
        conn.executemany("insert into items values (?)", [(v,) for v in range(100)])
    conn.close()


def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="handles-prefect-data-") as folder,
        _prefect_setup.one_server(),
    ):
        path = Path(folder) / "items.db"
        make_database(path)
        run_demo(path)


@contextmanager
def without_task_tracebacks() -> Iterator[None]:
    """Mute Prefect's task-run logger: twelve tracebacks would bury the summary."""
    task_runs = logging.getLogger("prefect.task_runs")
    level = task_runs.level
    task_runs.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        task_runs.setLevel(level)


def run_demo(path: Path) -> None:
    print("1. a live sqlite3 connection submitted to 12 tasks on 4 threads")
    with without_task_tracebacks():
        messages = query_with_a_connection(str(path), THRESHOLDS)
    # Each message names both thread ids; the first sentence is the same for all.
    summary = Counter(m.split(" The object was created")[0] for m in messages)
    for message, times in summary.items():
        print(f"   {times} x {message}")
    assert all("can only be used in that same thread" in m for m in messages), messages

    print("2. a SqliteSpec submitted to the same 12 tasks")
    db = SqliteSpec(path=path, read_only=True)
    rows = query_with_a_spec(db, THRESHOLDS)
    assert [row["count"] for row in rows] == [max(0, 100 - t) for t in THRESHOLDS]
    opened = Counter(str(row["thread"]) for row in rows if row["opened"])
    tasks = Counter(str(row["thread"]) for row in rows)
    for thread in sorted(tasks):
        print(f"   {thread}: {tasks[thread]} tasks, {opened[thread]} connection opened")
    assert all(opened[t] == 1 for t in tasks), "one connection per thread, reused after"
    print(f"   counts: {[row['count'] for row in rows]}")


if __name__ == "__main__":
    main()
