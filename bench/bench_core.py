"""Core costs, measured side by side in one run: warm get() vs hand-written lru_cache loaders,
pickled spec size, cache_key() cost, and warm get() with 10,000 live entries.

    python bench/bench_core.py [--json results.json] [--quick]

Timings interleave the contenders over several rounds and keep each one's best round,
so a noisy neighbour hurts all of them alike. Ratios are what to read, not nanoseconds.
Each goal is printed as met or MISSED and recorded in the results' "met".
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pickle
import platform
import statistics
import timeit
from typing import Annotated, Literal

import handles
from handles import Identity, Placement, Spec

LOOPS = 200_000
ROUNDS = 7
GOALS = {  # ratio name -> (comparison, bound)
    "warm get / lru_cache no-arg": ("<=", 2.0),
    "warm get / lru_cache keyed, median of rounds": ("<=", 1.8),
}


class Table:
    """Reference data loaded from a path: the shape of most real loaders."""

    def __init__(self, path: str) -> None:
        self.path = path


class TableSpec(Spec[Table]):
    kind: Literal["bench-table"] = "bench-table"
    path: Annotated[str, Identity]
    timeout: Annotated[float, Placement] = 5.0

    def build(self) -> Table:
        return Table(self.path)

    def noop(self) -> None:
        """The floor: any method call on a pydantic model instance."""


class ThreadTableSpec(TableSpec):
    kind: Literal["bench-thread-table"] = "bench-thread-table"  # type: ignore[assignment]
    scope = "thread"


@functools.cache
def load_table() -> Table:
    return Table("/data/table.csv")


@functools.cache
def load_table_at(path: str) -> Table:
    return Table(path)


def best_ns(contenders: dict[str, object]) -> dict[str, float]:
    return {name: min(times) for name, times in round_ns(contenders).items()}


def round_ns(contenders: dict[str, object]) -> dict[str, list[float]]:
    """ns per call of each contender in each of ROUNDS interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(ROUNDS):
        for name, stmt in contenders.items():
            seconds = timeit.timeit(stmt, number=LOOPS, globals=globals())  # type: ignore[arg-type]
            times[name].append(seconds / LOOPS * 1e9)
    return times


def median_ratio(times: dict[str, list[float]], top: str, bottom: str) -> tuple[float, float]:
    """Median and spread (max - min) of the per-round ratio top/bottom."""
    ratios = sorted(a / b for a, b in zip(times[top], times[bottom], strict=True))
    return statistics.median(ratios), ratios[-1] - ratios[0]


def compare(value: float, goal: tuple[str, float]) -> bool:
    op, bound = goal
    return value <= bound if op == "<=" else value >= bound


def main() -> None:  # noqa: PLR0915  (one report, read top to bottom)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="fewer calls: checks the script")
    args = parser.parse_args()
    global LOOPS, ROUNDS
    if args.quick:
        LOOPS, ROUNDS = 20_000, 2

    global spec, thread_spec, path
    path = "/data/table.csv"
    spec = TableSpec(path=path)
    thread_spec = ThreadTableSpec(path=path)
    spec.get(), thread_spec.get(), load_table(), load_table_at(path)

    # Each statement is what user code writes at the call site.
    per_round = round_ns(
        {
            "lru_cache loader, no arguments": "load_table()",
            "lru_cache loader, keyed by path": "load_table_at(path)",
            "spec.get(), process scope": "spec.get()",
            "spec.get(), thread scope": "thread_spec.get()",
            "empty method on the spec (pydantic floor)": "spec.noop()",
            "os.getpid()": "os.getpid()",
        }
    )
    ns = {name: min(times) for name, times in per_round.items()}
    keyed_median, keyed_spread = median_ratio(
        per_round, "spec.get(), process scope", "lru_cache loader, keyed by path"
    )
    lru0 = ns["lru_cache loader, no arguments"]
    lru1 = ns["lru_cache loader, keyed by path"]
    warm = ns["spec.get(), process scope"]

    # cache_key(): cold (new instance each time: dump + canonical JSON + SHA-256) and cached.
    cold_key = (
        min(
            timeit.repeat(
                "TableSpec(path=path).cache_key()", number=2000, repeat=5, globals=globals()
            )
        )
        / 2000
        * 1e9
    )
    construct = (
        min(timeit.repeat("TableSpec(path=path)", number=2000, repeat=5, globals=globals()))
        / 2000
        * 1e9
    )

    # 10,000 live entries: the warm path must not depend on how much is cached.
    many = [TableSpec(path=f"/data/{i}.csv") for i in range(10_000)]
    for s in many:
        s.get()
    globals()["probe"] = many[5_000]
    crowded = best_ns({"crowded": "probe.get()", "alone": "spec.get()"})

    sizes = {
        "TableSpec pickle": len(pickle.dumps(spec)),
        "TableSpec JSON": len(spec.model_dump_json()),
    }
    try:
        sqlite_spec = handles.SqliteSpec(path="/tmp/bench.db")
        sizes["SqliteSpec pickle"] = len(pickle.dumps(sqlite_spec))
    except Exception as exc:  # the kind may be missing in a minimal install
        print(f"(SqliteSpec size skipped: {exc})")

    results = {
        "title": "Core: warm get(), keys, sizes",
        "command": "python bench/bench_core.py",
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "ns": {
            **ns,
            "cache_key() cold (incl. construction)": cold_key,
            "spec construction": construct,
        },
        "ratios": {
            "warm get / lru_cache no-arg": warm / lru0,
            "warm get / lru_cache keyed by path": warm / lru1,
            "warm get / lru_cache keyed, median of rounds": keyed_median,
            "  spread of that ratio over rounds": keyed_spread,
            "empty pydantic method / lru_cache no-arg": ns[
                "empty method on the spec (pydantic floor)"
            ]
            / lru0,
            "warm get at 10,000 entries / at 1": crowded["crowded"] / crowded["alone"],
        },
        "bytes": sizes,
    }
    ratios = results["ratios"]
    results["goals"] = {name: f"{op} {bound}" for name, (op, bound) in GOALS.items()}
    results["met"] = {name: compare(ratios[name], goal) for name, goal in GOALS.items()}
    if args.quick:
        results["mode"] = "quick (--quick): a check that the script runs, not a measurement"
    print(f"machine: {results['machine']}")
    print(f"(best of {ROUNDS} interleaved rounds of {LOOPS:,} calls)")
    print(f"{'operation':45} {'ns/call':>9}")
    for name, value in results["ns"].items():
        print(f"{name:45} {value:9.1f}")
    print(f"\n{'ratio':45} {'value':>9}  goal")
    for name, value in ratios.items():
        verdict = ""
        if name in GOALS:
            op, bound = GOALS[name]
            verdict = f"  {op} {bound}  {'met' if results['met'][name] else 'MISSED'}"
        print(f"{name:45} {value:9.2f}{verdict}")
    print(f"\n{'size':45} {'bytes':>9}")
    for name, value in sizes.items():
        print(f"{name:45} {value:9d}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
