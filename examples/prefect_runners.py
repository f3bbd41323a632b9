"""One flow, unchanged, on Prefect's process pool and on Dask: a spaCy pipeline per worker.

    python examples/prefect_runners.py

The flow submits 8 tasks that each take a `SpacySpec` and call `.get()`. It runs
twice, changing only the task runner:

- `ProcessPoolTaskRunner(max_workers=2)`, with `warm_up` as the worker
  initializer so each worker loads the pipeline before its first task;
- prefect-dask's `DaskTaskRunner` on a LocalCluster of 2 worker processes (2
  threads each), with the `SpecWarmUp` worker plugin doing the same.

The script prints, per worker process, how many tasks it ran and how many times
it loaded the pipeline: once, whatever the number of tasks or threads.

The demo starts Prefect's temporary server once (15-40 s) and hands its URL to
the workers (examples/_prefect_setup.py): a worker process given no API URL
would start a server of its own. The server's database lives in a temporary
PREFECT_HOME and the pipeline in a temporary folder; both are removed at exit.
Your other PREFECT_* settings are kept.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # spawned workers import this file as __mp_main__
    import _prefect_setup

    _prefect_setup.prepare()  # before Prefect is imported: it reads its settings then

from prefect import flow, task
from prefect.task_runners import ProcessPoolTaskRunner
from prefect_dask import DaskTaskRunner

import handles
from handles import SpacySpec
from handles.integrations.dask import SpecWarmUp
from handles.integrations.prefect import warm_up

TEXTS = [
    "Ada Lovelace met Charles Babbage in London.",
    "Grace Hopper worked on the Harvard Mark I.",
    "Alan Turing visited Manchester.",
    "Ada Lovelace wrote the first program.",
] * 2
PEOPLE = ["Ada Lovelace", "Charles Babbage", "Grace Hopper", "Alan Turing"]


# --8<-- [start:flow]
@task
def people_in(nlp: SpacySpec, text: str) -> dict[str, Any]:
    """The PERSON entities in `text`, and what this worker's registry did."""
    loaded_before = nlp in handles.registry()
    names = [ent.text for ent in nlp.get()(text).ents if ent.label_ == "PERSON"]
    loads = handles.registry().stats()[nlp.cache_key()].builds
    return {"people": names, "pid": os.getpid(), "loads": loads, "warm": loaded_before}


@flow
def tag_people(nlp: SpacySpec, texts: list[str]) -> list[dict[str, Any]]:
    futures = [people_in.submit(nlp, text) for text in texts]
    return [future.result() for future in futures]


# --8<-- [end:flow]


def save_pipeline(folder: Path) -> SpacySpec:
    """A small rule-based English pipeline, saved like a trained one would be."""
    import spacy

    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "PERSON", "pattern": p} for p in PEOPLE])  # type: ignore[attr-defined]
    nlp.meta["name"] = "demo_people"
    nlp.to_disk(folder / "people-ner")
    return SpacySpec(path=str(folder / "people-ner"))


def report(label: str, rows: list[dict[str, Any]]) -> None:
    by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_pid[row["pid"]].append(row)
    print(f"{label}:")
    for pid, runs in sorted(by_pid.items()):
        loads = max(run["loads"] for run in runs)
        warm = all(run["warm"] for run in runs)
        print(f"  pid {pid}: {len(runs)} tasks, pipeline loaded {loads}x, already warm: {warm}")
        assert loads == 1, f"pid {pid} loaded the pipeline {loads} times"
    assert rows[0]["people"] == ["Ada Lovelace", "Charles Babbage"], rows[0]


# --8<-- [start:runners]
def runners_for(nlp: SpacySpec) -> dict[str, Any]:
    """Both runners load the pipeline in each worker before its first task."""
    return {
        "ProcessPoolTaskRunner, 2 workers": ProcessPoolTaskRunner(
            max_workers=2, initializer=warm_up, initargs=(nlp,)
        ),
        "DaskTaskRunner, LocalCluster of 2 processes": DaskTaskRunner(
            cluster_kwargs={
                "n_workers": 2,
                "processes": True,
                "threads_per_worker": 2,
                "dashboard_address": None,  # no web dashboard, no extra port
                "plugins": {SpecWarmUp(nlp)},
            }
        ),
    }


def run_on_each(nlp: SpacySpec) -> None:
    for label, runner in runners_for(nlp).items():
        rows = tag_people.with_options(task_runner=runner)(nlp, TEXTS)  # the flow, unchanged
        report(label, rows)


# --8<-- [end:runners]


def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="handles-prefect-data-") as folder,
        _prefect_setup.one_server(),
    ):
        run_on_each(save_pipeline(Path(folder)))


if __name__ == "__main__":
    main()
