"""Specs as Prefect task inputs: a sqlite database and a spaCy pipeline on a process pool.

    python examples/prefect_specs.py

- tasks take `SqliteSpec` and `SpacySpec` and call `.get()`; `bind_to_workers`
  has each worker process open the database and load the pipeline once, as it
  starts, whatever the number of tasks (the two `built spacy` lines come before
  any task, even when Prefect hands every task to one worker);
- `.map(db, nlp, texts)` gives every run both specs whole and one text;
- `SPEC_INPUTS + TASK_SOURCE` keys the cache by the specs' identity, so a second
  run is served from the cache;
- `preflight` refuses a live sqlite3 connection before submission and says which
  spec to pass instead.

Prefect's temporary server is started once for this process and its workers
(examples/_prefect_setup.py): 15-40 s, the longest part of the demo. Its database
and the results live in a temporary PREFECT_HOME; your other PREFECT_* settings
are kept.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path

if __name__ == "__main__":  # spawned workers import this file as __mp_main__
    import _prefect_setup

    _prefect_setup.prepare()  # before Prefect is imported: it reads its settings then

from prefect import flow, task
from prefect.cache_policies import TASK_SOURCE
from prefect.task_runners import ProcessPoolTaskRunner

import handles
from handles import SpacySpec, SqliteSpec
from handles.integrations.prefect import SPEC_INPUTS, PreflightError, bind_to_workers, preflight

TEXTS = [
    "Ada Lovelace met Charles Babbage in London.",
    "Grace Hopper worked on the Harvard Mark I.",
    "Ada Lovelace wrote the first program.",
    "Alan Turing visited London and Manchester.",
]


# --8<-- [start:task]
@preflight
@task(cache_policy=SPEC_INPUTS + TASK_SOURCE, persist_result=True)
def known_people(db: SqliteSpec, nlp: SpacySpec, text: str) -> dict[str, object]:
    """People the pipeline finds in `text` that the database knows."""
    names = [ent.text for ent in nlp.get()(text).ents if ent.label_ == "PERSON"]
    conn = db.get()  # this worker's connection: built as the worker started
    known = [
        n for n in names if conn.execute("select 1 from people where name = ?", (n,)).fetchone()
    ]
    stats = handles.registry().stats()[nlp.cache_key()]
    return {"text": text, "known": known, "pid": os.getpid(), "loads": stats.builds}


# --8<-- [end:task]


# --8<-- [start:flow]
def make_flow(db: SqliteSpec, nlp: SpacySpec):
    # Each of the two workers opens `db` and loads `nlp` as it starts, and closes both
    # as it exits.
    runner = bind_to_workers(ProcessPoolTaskRunner(max_workers=2), db, nlp)

    @flow(task_runner=runner)
    def tag_people(db: SqliteSpec, nlp: SpacySpec, texts: list[str]) -> list[dict[str, object]]:
        futures = known_people.map(db, nlp, texts)  # every run: both specs whole, one text
        return [{**future.result(), "state": future.state.name} for future in futures]

    return tag_people


# --8<-- [end:flow]


def build_inputs(folder: Path) -> tuple[SqliteSpec, SpacySpec]:
    import spacy

    with sqlite3.connect(folder / "people.db") as conn:
        # WAL, the mode SqliteSpec's default pragmas ask for: the two workers' first
        # connections then find nothing to switch (a switch needs the database alone).
        conn.execute("pragma journal_mode = wal")
        conn.execute("create table people (name text primary key)")
        conn.executemany("insert into people values (?)", [("Ada Lovelace",), ("Alan Turing",)])
    conn.close()
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    people = ["Ada Lovelace", "Charles Babbage", "Grace Hopper", "Alan Turing"]
    ruler.add_patterns([{"label": "PERSON", "pattern": p} for p in people])  # type: ignore[attr-defined]
    nlp.meta["name"] = "demo_people"
    nlp.to_disk(folder / "people-ner")
    return SqliteSpec(path=str(folder / "people.db")), SpacySpec(path=str(folder / "people-ner"))


def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="handles-prefect-data-") as folder,
        _prefect_setup.one_server(),
    ):
        run_demo(Path(folder))


@flow
def with_a_live_connection(path: str, nlp: SpacySpec) -> str:
    """Submits the task with a live connection: preflight refuses it before Prefect sees it."""
    conn = sqlite3.connect(path)
    try:
        known_people.submit(conn, nlp, TEXTS[0])
    except PreflightError as exc:
        return str(exc)
    finally:
        conn.close()
    return "preflight let it through"


def run_demo(folder: Path) -> None:
    db, nlp = build_inputs(folder)
    tag_people = make_flow(db, nlp)

    print("first run: each task, the worker that ran it and its pipeline loads")
    first = tag_people(db, nlp, TEXTS)
    for row in first:
        print(f"  {row['text']!r}: {row['known']} (pid {row['pid']}, loads {row['loads']})")
    assert {row["loads"] for row in first} == {1}, "one load per worker process"
    tasks = Counter(row["pid"] for row in first)
    served = ", ".join(f"pid {pid}: {n} task(s)" for pid, n in sorted(tasks.items()))
    # Both workers loaded the pipeline as they started (the `built spacy` lines above,
    # logged outside any task run); Prefect decides which of them runs each task.
    print(f"  2 workers, each loaded the pipeline once as it started; tasks went to {served}")

    print("second run: a new pool, whose workers load again as they start; tasks from the cache")
    again = tag_people(db, nlp, TEXTS)
    print(f"second run, task states: {sorted({row['state'] for row in again})}")
    assert [row["known"] for row in again] == [row["known"] for row in first]

    refusal = with_a_live_connection(str(folder / "people.db"), nlp)
    print(f"a live sqlite3 connection instead of the spec: preflight refused it:\n{refusal}")
    assert "pass SqliteSpec(path=...) instead" in refusal


if __name__ == "__main__":
    main()
