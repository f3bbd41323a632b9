"""Prefect's cache across flow runs for a task that takes a spec: INPUTS vs SPEC_INPUTS.

    python examples/prefect_cache_two_runs.py

A task sums one region's sales from a sqlite database it receives as a
`SqliteSpec`. Its results are persisted to a temporary folder and its cache
records to another, and each policy runs the flow three times:

1. first run: computed;
2. the same spec, rebuilt from its JSON as a deployment would send it: cached,
   under both policies, because the spec's JSON and its `cache_key()` are stable;
3. the same database opened read-only (`read_only` is a placement field: how
   this process connects, not which data it reads): Prefect's INPUTS hashes
   every field and computes again; SPEC_INPUTS keys the spec by `cache_key()`,
   which leaves placement out, and stays cached. Moving a model between devices
   (`device=` of TorchModelSpec or HFPipelineSpec) is the same case.

It also prints the spec's `cache_key()` as computed here and in a new
interpreter with another hash seed: the same.

Prefect's temporary server is started once for the runs (15-40 s;
examples/_prefect_setup.py). Its database lives in a temporary PREFECT_HOME; the
sales database, results and cache records in a temporary folder. Both are
removed at exit. Your other PREFECT_* settings are kept.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    import _prefect_setup

    _prefect_setup.prepare()  # before Prefect is imported: it reads its settings then

from prefect import flow, task
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.filesystems import LocalFileSystem

import handles
from handles import SqliteSpec
from handles.integrations.prefect import SPEC_INPUTS

COMPUTED: list[str] = []  # one entry per real computation (tasks run in this process)


# --8<-- [start:policy]
@task(persist_result=True)
def regional_total(db: SqliteSpec, region: str) -> int:
    COMPUTED.append(region)
    conn = db.get()
    (total,) = conn.execute("select sum(amount) from sales where region = ?", (region,)).fetchone()
    return int(total)


def make_flow(policy: CachePolicy, records: Path, results: LocalFileSystem) -> Any:
    """A flow calling `regional_total` under `policy`, its cache records kept in `records`."""
    total = regional_total.with_options(
        cache_policy=policy.configure(key_storage=records), result_storage=results
    )

    @flow
    def report(db: SqliteSpec, region: str) -> tuple[int, str]:
        state = total(db, region, return_state=True)
        return state.result(), str(state.name)

    return report


# --8<-- [end:policy]


def make_database(path: Path) -> SqliteSpec:
    with sqlite3.connect(path) as conn:
        conn.execute("create table sales (region text, amount integer)")
        rows = [("north", 120), ("south", 80), ("north", 30), ("east", 55)]
        conn.executemany("insert into sales values (?, ?)", rows)
    conn.close()
    return SqliteSpec(path=path)


def key_in_a_new_process(db: SqliteSpec) -> str:
    """`cache_key()` computed by another interpreter, with another hash seed."""
    code = "import sys, handles; print(handles.spec_from_json(sys.stdin.read()).cache_key())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=db.model_dump_json(),
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="handles-prefect-data-") as tmp,
        _prefect_setup.one_server(),
    ):
        run_demo(Path(tmp))


def run_demo(folder: Path) -> None:
    db = make_database(folder / "sales.db")
    elsewhere = key_in_a_new_process(db)
    print(f"cache_key() here:             {db.cache_key()}")
    print(f"cache_key() in a new process: {elsewhere}")
    assert elsewhere == db.cache_key()

    runs = {
        "1. first run": db,
        "2. same spec, from JSON": handles.spec_from_json(db.model_dump_json()),
        "3. read_only=True": db.replace(read_only=True),
    }
    policies = {
        "INPUTS + TASK_SOURCE": INPUTS + TASK_SOURCE,
        "SPEC_INPUTS + TASK_SOURCE": SPEC_INPUTS + TASK_SOURCE,
    }
    # Prefect wants result storage saved as a block (here, in the demo's home).
    results = LocalFileSystem(basepath=str(folder / "results"))
    results.save("handles-demo-results", overwrite=True)
    summary: dict[str, list[str]] = {}
    for number, (label, policy) in enumerate(policies.items()):
        COMPUTED.clear()
        records = folder / f"cache-records-{number}"  # one file per cache key
        report = make_flow(policy, records, results)
        states = []
        for spec in runs.values():
            total, state = report(spec, "north")
            assert total == 150
            states.append(state)
        summary[label] = states
        keys = len(list(records.iterdir()))
        print(f"{label}: {len(COMPUTED)} computation(s), {keys} cache key(s)")
    print()
    print(f"{'run':26} " + " ".join(f"{label:>26}" for label in policies))
    for index, run in enumerate(runs):
        print(f"{run:26} " + " ".join(f"{summary[p][index]:>26}" for p in policies))
    assert summary["INPUTS + TASK_SOURCE"] == ["Completed", "Cached", "Completed"]
    assert summary["SPEC_INPUTS + TASK_SOURCE"] == ["Completed", "Cached", "Cached"]


if __name__ == "__main__":
    main()
