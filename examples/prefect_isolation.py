"""SERIALIZABLE isolation: two concurrent task runs with the same spec compute once.

    python examples/prefect_isolation.py
    HANDLES_TEST_REDIS_URL=redis://127.0.0.1:6379/15 python examples/prefect_isolation.py

A slow task (a sqlite query, then one second of "work") is submitted twice at
once with the same `SqliteSpec` and the same arguments, under
`SPEC_INPUTS + TASK_SOURCE` with persisted results:

1. default isolation (READ_COMMITTED): neither run finds a cache record when it
   starts, so usually both compute;
2. `SERIALIZABLE` with Prefect's `MemoryLockManager`: the second run waits for
   the first one's lock on the cache key, then reads its result: one computation.
   A memory lock only reaches the threads of one process;
3. across processes (`ProcessPoolTaskRunner`), `prefect_redis.RedisLockManager`
   does the same through Redis. Runs when HANDLES_TEST_REDIS_URL is set;
   `FileSystemLockManager` is the choice for processes on one machine.

Prefect's temporary server is started once (15-40 s) for this process and the
workers (examples/_prefect_setup.py). Its database and the results live in a
temporary PREFECT_HOME, the sales databases and cache records in a temporary
folder; both are removed at exit. Your other PREFECT_* settings are kept.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # spawned workers import this file as __mp_main__
    import _prefect_setup

    _prefect_setup.prepare()  # before Prefect is imported: it reads its settings then

from prefect import flow, task
from prefect.cache_policies import TASK_SOURCE
from prefect.locking.memory import MemoryLockManager
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from handles import SqliteSpec
from handles.integrations.prefect import SPEC_INPUTS


# --8<-- [start:policy]
def cache_policy(folder: Path, lock_manager: Any = None) -> Any:
    """SPEC_INPUTS + TASK_SOURCE; SERIALIZABLE when given a lock manager."""
    policy = (SPEC_INPUTS + TASK_SOURCE).configure(key_storage=folder / "cache-records")
    if lock_manager is None:
        return policy  # Prefect's default isolation: READ_COMMITTED
    return policy.configure(isolation_level="SERIALIZABLE", lock_manager=lock_manager)


@task(persist_result=True)
def busiest_region(db: SqliteSpec, ledger: str) -> str:
    """One line in `ledger` per real computation, whichever process runs it."""
    with open(ledger, "a", encoding="utf-8") as out:
        out.write(f"{os.getpid()}\n")
    conn = db.get()
    (region,) = conn.execute(
        "select region from sales group by region order by sum(amount) desc limit 1"
    ).fetchone()
    time.sleep(1.0)  # the expensive part: the other run starts while this one works
    return str(region)


# --8<-- [end:policy]


def make_flow(policy: Any, runner: Any) -> Any:
    """A flow that submits `busiest_region` twice at once under `policy`."""
    compute = busiest_region.with_options(cache_policy=policy)

    @flow(task_runner=runner)
    def twice_at_once(db: SqliteSpec, ledger: str) -> list[str]:
        futures = [compute.submit(db, ledger) for _ in range(2)]
        for future in futures:
            future.wait()
        return sorted(str(future.state.name) for future in futures)

    return twice_at_once


def run_twice(label: str, policy: Any, runner: Any, db: SqliteSpec, ledger: Path) -> int:
    states = make_flow(policy, runner)(db, str(ledger))
    computed = len(ledger.read_text(encoding="utf-8").splitlines())
    print(f"{label}: task states {states}, computed {computed}x")
    return computed


def redis_lock_manager() -> Any:
    """A RedisLockManager for HANDLES_TEST_REDIS_URL, or None (with the reason printed)."""
    url = os.environ.get("HANDLES_TEST_REDIS_URL")
    if not url:
        print("3. skipped: set HANDLES_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379/15)")
        return None
    try:
        from prefect_redis.locking import RedisLockManager
    except ImportError:
        print('3. skipped: needs prefect-redis (pip install "prefect-redis")')
        return None
    return RedisLockManager(connection_url=url)


def make_database(path: Path) -> SqliteSpec:
    with sqlite3.connect(path) as conn:
        conn.execute("create table sales (region text, amount integer)")
        rows = [("north", 120), ("south", 80), ("north", 30), ("east", 55)]
        conn.executemany("insert into sales values (?, ?)", rows)
    conn.close()
    return SqliteSpec(path=path, read_only=True)


def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="handles-prefect-data-") as tmp,
        _prefect_setup.one_server(),
    ):
        run_demo(Path(tmp))


def run_demo(folder: Path) -> None:
    threads = ThreadPoolTaskRunner(max_workers=2)
    # Each part gets its own database file, so its cache key is new: no part
    # can be served from an earlier part's cache.
    db = make_database(folder / "sales-1.db")
    run_twice("1. default isolation", cache_policy(folder), threads, db, folder / "ledger-1")

    policy = cache_policy(folder, MemoryLockManager())
    db = make_database(folder / "sales-2.db")
    computed = run_twice("2. SERIALIZABLE, memory lock", policy, threads, db, folder / "ledger-2")
    assert computed == 1, "the second run waited for the first one's result"

    manager = redis_lock_manager()
    if manager is not None:
        policy = cache_policy(folder, manager)
        db = make_database(folder / "sales-3.db")
        runner = ProcessPoolTaskRunner(max_workers=2)
        label = "3. SERIALIZABLE, Redis lock, 2 processes"
        computed = run_twice(label, policy, runner, db, folder / "ledger-3")
        assert computed == 1, "the second process waited for the first one's result"


if __name__ == "__main__":
    main()
