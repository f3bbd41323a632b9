"""The core in one screen: a spec is built once per worker process and reused by every task.

    python examples/quickstart.py

It defines a small kind of its own (a CSV lookup table, the kind of reference data
tasks load again and again), fans 40 tasks out over a spawn process pool, and prints
what each worker's registry did.
"""

from __future__ import annotations

import csv
import os
import pickle
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Annotated, Literal

import handles
from handles import Identity, Placement, Spec


class LookupTableSpec(Spec[dict[str, str]]):
    """A CSV file loaded into a dict, keyed by one column."""

    kind: Literal["example-lookup-table"] = "example-lookup-table"
    path: Annotated[str, Identity]
    key: Annotated[str, Identity] = "code"
    value: Annotated[str, Identity] = "name"
    encoding: Annotated[str, Placement] = "utf-8"

    def build(self) -> dict[str, str]:
        with open(self.path, newline="", encoding=self.encoding) as fh:
            return {row[self.key]: row[self.value] for row in csv.DictReader(fh)}


def lookup(table: LookupTableSpec, code: str) -> tuple[int, str, str, handles.KeyStats]:
    # Runs in a worker: the first call there loads the CSV, the rest reuse it.
    name = table.get()[code]
    key = table.cache_key()  # computed again here, in the worker
    return os.getpid(), name, key, handles.registry().stats()[key]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "places.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["code", "name"])
            writer.writerows((f"P{i:06d}", f"place number {i}") for i in range(200_000))

        table = LookupTableSpec(path=str(path))
        print(f"spec:       {table!r}")
        # The key hashes the kind, its schema version and the identity fields (path,
        # key, value), never encoding: equal specs give equal keys in every process,
        # machine and run. This run's path is a new temporary file, so a new key.
        print(
            f"cache key:  {table.cache_key()[:16]}… (from kind, schema version, path, key, value)"
        )
        table_bytes = len(pickle.dumps(table.get()))
        print(f"pickled:    {len(pickle.dumps(table))} bytes (the table: {table_bytes:,} bytes)")

        # Two spawn workers, as Prefect's ProcessPoolTaskRunner uses; each task gets the spec.
        with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
            codes = [f"P{i * 4999:06d}" for i in range(40)]
            results = list(pool.map(lookup, [table] * len(codes), codes))

        # Each result carries its worker's stats; the last one per worker is the total.
        stats = {pid: s for pid, _, _, s in results}
        keys = {key for _, _, key, _ in results}
        assert keys == {table.cache_key()}, "every worker computes the same key"

        print(f"tasks:      {len(results)} lookups, e.g. {codes[1]} -> {results[1][1]!r}")
        print(f"key in the workers: the same as here ({len(stats)} processes, 1 key)")
        for pid, s in sorted(stats.items()):
            print(
                f"worker {pid}: builds={s.builds} hits={s.hits} build_seconds={s.build_seconds:.3f}"
            )
        assert all(s.builds == 1 for s in stats.values()), "each worker builds the table once"

        here = handles.registry().stats()[table.cache_key()]
        print(f"this process: builds={here.builds} hits={here.hits}")


if __name__ == "__main__":
    main()
