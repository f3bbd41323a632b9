"""Preflight: find the task inputs a runner cannot ship or Prefect cannot hash, before submitting.

    python examples/preflight.py

1. `check_inputs` on the live objects people pass to tasks: a lock, lambdas, a
   generator, a sqlite3 connection (alone and inside another object). Each
   finding names the path to the offending object and, for a known live
   resource, the spec to pass instead. No Prefect server is needed for this part.
2. The `preflight` decorator's four modes on a task called with a live sqlite3
   connection in a flow: raise, warn, skip and fallback.

Lambdas: Prefect and Dask send arguments with cloudpickle, which copies a lambda
by value (code, closure and the globals it uses), so a plain lambda is fine and
is not reported. Plain `pickle` (multiprocessing, concurrent.futures) can only
send functions by name, so with `pickler="pickle"` a lambda is reported. A lambda
that uses a lock is reported under either pickler, at the lock.

Part 2 runs a flow on Prefect's temporary server, started once (15-40 s;
examples/_prefect_setup.py). Its database lives in a temporary PREFECT_HOME and
the demo's data in a temporary folder; both are removed at exit. Your other
PREFECT_* settings are kept.
"""

from __future__ import annotations

import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    import _prefect_setup

    _prefect_setup.prepare()  # before Prefect is imported: it reads its settings then

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from handles.integrations.prefect import PreflightError, check_inputs, preflight

LOCK = threading.Lock()


def numbers() -> Iterator[int]:
    yield from range(3)


class Repository:
    """Application code often hides the connection one attribute down."""

    def __init__(self, path: Path) -> None:
        self.name = "sales"
        self.conn = sqlite3.connect(path)


# -- 1. what check_inputs finds ---------------------------------------------------------


def show(label: str, args: tuple[Any, ...], **options: Any) -> int:
    findings = check_inputs(args, **options)
    print(f"{label}:")
    for finding in findings:
        print(f"    {finding}")
    if not findings:
        print("    nothing to report")
    return len(findings)


def check_the_seed_objects(folder: Path) -> None:
    assert show("a lock", (threading.Lock(),)) == 1
    assert show("a lambda, sent with cloudpickle (Prefect, Dask)", (lambda x: x + 1,)) == 0
    assert show('a lambda, with pickler="pickle"', (lambda x: x + 1,), pickler="pickle") == 1
    assert show("a lambda that uses a lock", (lambda: not LOCK.locked(),)) == 1
    assert show("a generator", (numbers(),)) == 1
    conn = sqlite3.connect(folder / "sales.db")
    repo = Repository(folder / "sales.db")
    try:
        assert show("a sqlite3 connection", (conn,)) == 1
        assert show("an object holding a sqlite3 connection", (repo,)) == 1
    finally:
        conn.close()
        repo.conn.close()


# -- 2. the decorator's modes ---------------------------------------------------------


# --8<-- [start:modes]
@task
def count_rows(conn: sqlite3.Connection) -> int:
    return int(conn.execute("select count(*) from sales").fetchone()[0])


# The fallback: the same work without a cache key, so nothing needs hashing.
count_rows_uncached = count_rows.with_options(cache_policy=NO_CACHE)

CHECKED = {
    "raise": preflight(count_rows),
    "warn": preflight(count_rows, mode="warn"),
    "skip": preflight(count_rows, mode="skip"),
    "fallback": preflight(count_rows, mode="fallback", fallback=count_rows_uncached),
}
# --8<-- [end:modes]


@flow
def with_a_live_connection(path: str) -> dict[str, object]:
    """Calls each checked variant with a connection (made here: parameters must serialize)."""
    conn = sqlite3.connect(path)
    outcomes: dict[str, object] = {}
    try:
        for mode, checked in CHECKED.items():
            try:
                outcomes[mode] = checked(conn)
            except PreflightError as exc:
                outcomes[mode] = f"PreflightError: {exc.findings[0]}"
    finally:
        conn.close()
    return outcomes


def try_the_modes(folder: Path) -> None:
    outcomes = with_a_live_connection(str(folder / "sales.db"))
    print("the four modes, for count_rows(conn):")
    for mode, outcome in outcomes.items():
        print(f"  {mode:8} -> {outcome}")
    assert str(outcomes["raise"]).startswith("PreflightError")
    assert outcomes["warn"] == 3, "warn: logged, then the task ran (without a cache)"
    assert outcomes["skip"] is None, "skip: logged, the task never ran"
    assert outcomes["fallback"] == 3, "fallback: logged, then the fallback ran"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="handles-prefect-data-") as tmp:
        folder = Path(tmp)
        with sqlite3.connect(folder / "sales.db") as conn:
            conn.execute("create table sales (region text, amount integer)")
            conn.executemany("insert into sales values (?, ?)", [("n", 1), ("s", 2), ("e", 3)])
        conn.close()
        check_the_seed_objects(folder)
        with _prefect_setup.one_server():
            try_the_modes(folder)


if __name__ == "__main__":
    main()
