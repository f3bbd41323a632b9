"""Async Prefect tasks on one AsyncDatabaseSpec (pool_size 2), against the real PostgreSQL:
bound runners (one event loop per worker) against Prefect's own (one loop per task run).

    python bench/bench_prefect_async.py [--json results.json] [--tasks 100] [--rounds 5] [--quick]

Needs HANDLES_TEST_POSTGRES_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test).
Four variants, each one flow run of `--tasks` async task runs, each task run one query on
the spec's engine (`await db.aget()`):

    threads            ThreadPoolTaskRunner(4)
    threads, bound     bind_to_workers(ThreadPoolTaskRunner(4), db)
    processes          ProcessPoolTaskRunner(2)
    processes, bound   bind_to_workers(ProcessPoolTaskRunner(2), db)

and, counted once (`--cluster-tasks`, 20 by default; 0 skips them), a bound DaskTaskRunner
(a LocalCluster of 2 worker processes) and a bound RayTaskRunner (a local Ray with 2 CPUs),
whose runners give every async task run a loop of its own.

Counted in every run: engines built (registry stats, in the flow's process for threads
and summed over worker processes for processes), distinct server connections (each
task reads its session's pid and start time from pg_stat_activity), and the sessions
left on the server once the flow has returned. Timed: calling the flow to its return,
so starting workers (and, bound, building each worker's engine) is included. The
variants run `--rounds` times (5 by default) interleaved, in alternating order; each
bound/unbound ratio is taken per round and judged on the median, with the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

POOL_SIZE = 2
WORKERS = {"threads": 4, "processes": 2}
VARIANTS = ["threads", "threads, bound", "processes", "processes, bound"]


async def one_query(db: Any, i: int) -> dict[str, Any]:
    from sqlalchemy import text

    import handles

    engine = await db.aget()
    sql = "select pid, backend_start::text from pg_stat_activity where pid = pg_backend_pid()"
    async with engine.connect() as conn:
        pid, started = (await conn.execute(text(sql))).one()
    return {
        "i": i,
        "pid": os.getpid(),
        "connection": f"{pid}@{started}",
        "builds": handles.registry().stats()[db.cache_key()].builds,
    }


TASK: Any = None  # the Prefect task, made in main() once Prefect is configured


def runner_for(variant: str, db: Any) -> Any:
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    from handles.integrations.prefect import bind_to_workers

    kind = variant.split(",", maxsplit=1)[0]
    runner: Any
    if kind == "threads":
        runner = ThreadPoolTaskRunner(max_workers=WORKERS[kind])
    elif kind == "processes":
        runner = ProcessPoolTaskRunner(max_workers=WORKERS[kind])
    elif kind == "dask":
        from prefect_dask import DaskTaskRunner

        cluster = {"n_workers": 2, "processes": True, "threads_per_worker": 2}
        runner = DaskTaskRunner(cluster_kwargs=cluster)
    else:
        from prefect_ray import RayTaskRunner

        runner = RayTaskRunner(init_kwargs={"num_cpus": 2, "include_dashboard": False})
    return bind_to_workers(runner, db) if variant.endswith("bound") else runner


def run_variant(variant: str, db: Any, tasks: int) -> dict[str, Any]:
    from prefect import flow

    import handles

    @flow(name="bench-prefect-async", task_runner=runner_for(variant, db))
    def fan_out(db: Any, n: int) -> list[dict[str, Any]]:
        return [f.result() for f in TASK.map(db, range(n))]

    def builds_here() -> int:
        stats = handles.registry().stats().get(db.cache_key())
        return 0 if stats is None else stats.builds

    before = builds_here()
    started = time.perf_counter()
    rows = fan_out(db, tasks)
    seconds = time.perf_counter() - started
    if variant.startswith("threads"):
        engines = builds_here() - before
    else:
        per_worker: dict[int, int] = {}
        for row in rows:
            per_worker[row["pid"]] = max(row["builds"], per_worker.get(row["pid"], 0))
        engines = sum(per_worker.values())
    assert sorted(row["i"] for row in rows) == list(range(tasks))
    return {
        "seconds": seconds,
        "engines": engines,
        "connections": len({row["connection"] for row in rows}),
        "left": sessions(db, settle=True),
    }


def sessions(db: Any, *, settle: bool) -> int:
    """Server sessions with the spec's application_name (waits up to 10 s for 0 to settle)."""
    from sqlalchemy import make_url, text

    from handles import DatabaseSpec

    tag = make_url(db.url).query["application_name"]
    monitor = DatabaseSpec(url=os.environ["HANDLES_TEST_POSTGRES_URL"], pool_size=1)
    sql = text("select count(*) from pg_stat_activity where application_name = :tag")
    deadline = time.monotonic() + 10
    while True:
        with monitor.get().connect() as conn:
            count = int(conn.execute(sql, {"tag": tag}).scalar_one())
        if not settle or count == 0 or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


@contextmanager
def warm_prefect() -> Iterator[None]:
    """A temporary Prefect server and home, so the benchmark leaves nothing behind."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with tempfile.TemporaryDirectory(prefix="bench-prefect-home-") as home:
        os.environ["PREFECT_HOME"] = home
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=120):
            yield


def the_spec() -> Any:
    from sqlalchemy import make_url

    from handles import AsyncDatabaseSpec

    url = os.environ.get("HANDLES_TEST_POSTGRES_URL")
    if not url:
        sys.exit("set HANDLES_TEST_POSTGRES_URL, e.g. postgresql+psycopg://postgres@127.0.0.1/test")
    tag = f"handles-bench-async-{uuid.uuid4().hex[:8]}"
    tagged = make_url(url).update_query_dict({"application_name": tag})
    return AsyncDatabaseSpec(url=tagged.render_as_string(hide_password=False), pool_size=POOL_SIZE)


def measure(tasks: int, rounds: int, cluster_tasks: int) -> dict[str, Any]:
    global TASK
    from prefect import task

    TASK = task(one_query, name="one_query")
    db = the_spec()
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
    with warm_prefect():
        run_variant("processes", db, 4)  # the server and the import caches, warm
        for round_ in range(rounds):
            for variant in VARIANTS if round_ % 2 == 0 else list(reversed(VARIANTS)):
                runs[variant].append(run_variant(variant, db, tasks))
                print(f"round {round_ + 1} {variant:17} {runs[variant][-1]}", flush=True)
        # Dask and Ray, bound, once: counts only (their runners make a loop per task run).
        clusters = {}
        for variant in ("dask, bound", "ray, bound") if cluster_tasks else ():
            clusters[variant] = run_variant(variant, db, cluster_tasks)
            print(f"{variant:17} {clusters[variant]}", flush=True)

    ratios, spreads, counts = {}, {}, {}
    for kind in WORKERS:
        per_round = [
            bound["seconds"] / plain["seconds"]
            for bound, plain in zip(runs[f"{kind}, bound"], runs[kind], strict=True)
        ]
        name = f"{kind}: bound / unbound wall time"
        ratios[name] = statistics.median(per_round)
        spreads[name] = f"{min(per_round):.3f} to {max(per_round):.3f} over {rounds} rounds"
    for variant, rows in runs.items():
        counts[f"{variant}: engines built (most in a round)"] = max(r["engines"] for r in rows)
        counts[f"{variant}: distinct connections (most)"] = max(r["connections"] for r in rows)
        counts[f"{variant}: sessions left after the flow (most)"] = max(r["left"] for r in rows)
    for variant, row in clusters.items():
        counts[f"{variant}: engines built ({cluster_tasks} task runs)"] = row["engines"]
        counts[f"{variant}: distinct connections"] = row["connections"]
        counts[f"{variant}: sessions left after the flow"] = row["left"]
    goals = {}
    met = {}
    for kind, workers in WORKERS.items():
        engines = counts[f"{kind}, bound: engines built (most in a round)"]
        connections = counts[f"{kind}, bound: distinct connections (most)"]
        goals[f"{kind}, bound: engines built"] = f"<= {workers} workers"
        met[f"{kind}, bound: engines built"] = engines <= workers
        goals[f"{kind}, bound: distinct connections"] = f"<= {workers} x {POOL_SIZE}"
        met[f"{kind}, bound: distinct connections"] = connections <= workers * POOL_SIZE
    seconds = {
        f"{variant}, median round": statistics.median(r["seconds"] for r in rows)
        for variant, rows in runs.items()
    }
    return {
        "title": f"Prefect: {tasks} async task runs on one AsyncDatabaseSpec (pool_size 2)",
        "command": f"python bench/bench_prefect_async.py --tasks {tasks} --rounds {rounds} "
        f"--cluster-tasks {cluster_tasks}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "tasks": tasks,
        "seconds": seconds,
        "counts": counts,
        "ratios": ratios,
        "spread": spreads,
        "goals": goals,
        "met": met,
    }


def report(results: dict[str, Any]) -> None:
    print(f"machine: {results['machine']}; {results['tasks']} task runs per flow")
    print(f"\n{'variant':30} {'seconds':>8}")
    for name, value in results["seconds"].items():
        print(f"{name:30} {value:8.2f}")
    print()
    for name, value in results["counts"].items():
        print(f"{name:52} {value:5d}")
    print()
    for name, value in results["ratios"].items():
        print(f"{name:36} {value:6.3f}  (spread {results['spread'][name]})")
    print()
    for name, goal in results["goals"].items():
        print(f"{name:40} {goal:16} {'met' if results['met'][name] else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--tasks", type=int, default=100, help="async task runs per flow")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument(
        "--cluster-tasks",
        type=int,
        default=20,
        help="async task runs on a bound Dask and Ray runner, counted once (0: skip them)",
    )
    parser.add_argument("--quick", action="store_true", help="12 tasks, 1 round: checks it runs")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.rounds, args.cluster_tasks = 12, 1, 4
    results = measure(args.tasks, args.rounds, args.cluster_tasks)
    if args.quick:
        results["mode"] = "quick (--quick): a check that the script runs, not a measurement"
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    # Run as the module `bench_prefect_async`, not `__main__`, so that process-pool
    # workers import the task body by name.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_prefect_async

    bench_prefect_async.main()
