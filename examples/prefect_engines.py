"""One flow on four task runners: `.map` with a spec, and specs bound to each worker's life.

    python examples/prefect_engines.py

The flow maps a task over eight texts with `people_in.map(names, texts)`: every
run gets the spec `names` whole and one text. It runs on Prefect's thread pool,
its process pool, prefect-dask's DaskTaskRunner and prefect-ray's RayTaskRunner,
each given to `bind_to_workers(runner, names)`: each worker builds the spec's
object as it starts, and closes it as it stops.

The kind here (examples/_names_kind.py), a list of names read from a file, notes
every build and every teardown in a journal with the process that made it. After
each flow the script prints, per worker process: tasks run, builds, and teardowns
(one each, the teardown done by the time the flow returned). Dask and Ray are
skipped, saying so, where their packages are not installed.

Prefect's temporary server is started once and handed to the workers
(examples/_prefect_setup.py); the Ray cluster is a local one with 2 CPUs, started
and shut down by the runner. Everything is written to temporary folders, removed
at exit. Takes about a minute after the server is up.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # spawned workers import this file as __mp_main__
    import _prefect_setup

    _prefect_setup.prepare()  # before Prefect is imported: it reads its settings then

from _names_kind import NamesSpec  # a kind of our own, imported by name in every worker
from prefect import flow, task
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from handles.integrations.prefect import bind_to_workers

TEXTS = [
    "Ada Lovelace met Charles Babbage in London.",
    "Grace Hopper worked on the Harvard Mark I.",
    "Alan Turing visited Manchester.",
    "Ada Lovelace wrote the first program.",
] * 2
PEOPLE = ["Ada Lovelace", "Charles Babbage", "Grace Hopper", "Alan Turing"]


# --8<-- [start:map]
@task
def people_in(names: NamesSpec, text: str) -> dict[str, Any]:
    return {"pid": os.getpid(), "people": names.get().find(text)}


@flow
def tag_people(names: NamesSpec, texts: list[str]) -> list[dict[str, Any]]:
    futures = people_in.map(names, texts)  # one run per text, each with the whole spec
    return [future.result() for future in futures]


# --8<-- [end:map]


def runners(ray_folder: str) -> dict[str, Any]:
    """Every runner available here, unbound: bind_to_workers() is applied in run_on()."""
    found: dict[str, Any] = {
        "ThreadPoolTaskRunner(4)": ThreadPoolTaskRunner(max_workers=4),
        "ProcessPoolTaskRunner(2)": ProcessPoolTaskRunner(max_workers=2),
    }
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        print("DaskTaskRunner: skipped, prefect-dask is not installed (handle-specs[dask])")
    else:
        found["DaskTaskRunner, 2 processes"] = DaskTaskRunner(
            cluster_kwargs={"n_workers": 2, "processes": True, "dashboard_address": None}
        )
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        print("RayTaskRunner: skipped, prefect-ray is not installed (handle-specs[ray])")
    else:
        found["RayTaskRunner, local Ray, 2 CPUs"] = RayTaskRunner(
            init_kwargs={"num_cpus": 2, "include_dashboard": False, "_temp_dir": ray_folder}
        )
    return found


# --8<-- [start:bind]
def run_on(runner: Any, names: NamesSpec) -> list[dict[str, Any]]:
    """The flow, unchanged, on `runner`: each worker builds `names` as it starts."""
    bound = bind_to_workers(runner, names)  # and closes it as it stops
    return tag_people.with_options(task_runner=bound)(names, TEXTS)


# --8<-- [end:bind]


# --8<-- [start:ray]
def ray_without_prefect(names: NamesSpec, ray_folder: str) -> list[dict[str, Any]]:
    """The same on plain Ray: WorkerSpecs gives ray.init the hook and stops the workers."""
    import ray

    from handles.integrations.ray import WorkerSpecs

    @ray.remote
    def find(names: NamesSpec, text: str) -> dict[str, Any]:
        return {"pid": os.getpid(), "people": names.get().find(text)}

    workers = WorkerSpecs(names)
    env = workers.runtime_env()  # its setup hook: each worker builds `names` as it starts
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_folder, runtime_env=env)
    try:
        with workers:  # leaving the block: every worker closes it
            rows: list[dict[str, Any]] = ray.get([find.remote(names, t) for t in TEXTS])
    finally:
        ray.shutdown()
    return rows


# --8<-- [end:ray]


def report(label: str, rows: list[dict[str, Any]], journal: Path) -> None:
    notes = [line.split() for line in journal.read_text(encoding="utf-8").splitlines()]
    built = Counter(int(pid) for event, pid in notes if event == "built")
    closed = Counter(int(pid) for event, pid in notes if event == "closed")
    tasks = Counter(row["pid"] for row in rows)
    print(f"{label}:")
    for pid in sorted(built | tasks):
        print(f"  pid {pid}: {tasks[pid]} tasks, built {built[pid]}x, closed {closed[pid]}x")
        assert built[pid] == closed[pid] == 1, f"pid {pid}: {built[pid]} builds, {closed[pid]}"
    assert rows[0]["people"] == ["Ada Lovelace", "Charles Babbage"], rows[0]
    journal.unlink()


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="handles-engines-"))
    # Ray's sockets live under its folder: keep the path short.
    ray_folder = tempfile.mkdtemp(prefix="ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        (folder / "people.txt").write_text("\n".join(PEOPLE), encoding="utf-8")
        journal = folder / "journal.txt"
        names = NamesSpec(path=str(folder / "people.txt"), journal=str(journal))
        with _prefect_setup.one_server():
            for label, runner in runners(ray_folder).items():
                report(label, run_on(runner, names), journal)
        if importlib.util.find_spec("ray") is not None:
            report("Ray without Prefect", ray_without_prefect(names, ray_folder), journal)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(ray_folder, ignore_errors=True)


if __name__ == "__main__":
    main()
