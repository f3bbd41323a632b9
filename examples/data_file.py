"""FileSpec without Prefect: worker processes share nothing but small specs.

    python examples/data_file.py

1. Four workers write compressed CSV shards; each write is atomic, so a crashed
   worker leaves the previous shard (or none), never half of one.
2. Readers sum the shards. With content tracking, `cache_key()` follows the data,
   so a memo keyed by it recomputes only the shard that changed.
3. The same spec shape reaches fsspec's memory filesystem (or S3, given
   storage_options and secrets): only the URL changes.
"""

from __future__ import annotations

import csv
import tempfile
from concurrent.futures import ProcessPoolExecutor

from handles import FileSpec


def write_shard(spec: FileSpec, rows: int) -> None:
    with spec.open() as f:  # a temp file beside the target, renamed on success
        csv.writer(f).writerows((i, i * i) for i in range(rows))


def total(spec: FileSpec) -> int:
    # spec.get() (inside open) builds this worker's filesystem once, then reuses it.
    with spec.open() as f:
        return sum(int(square) for _, square in csv.reader(f))


def tracked(spec: FileSpec) -> FileSpec:
    """A reading spec whose cache key includes the file's current version."""
    return spec.replace(mode="r", track_content=True)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        shards = [
            FileSpec(url=f"{folder}/shard-{n}.csv.gz", mode="w", compression="infer")
            for n in range(4)
        ]
        with ProcessPoolExecutor(max_workers=2) as pool:
            list(pool.map(write_shard, shards, [1000] * len(shards)))
            readers = [tracked(s) for s in shards]
            memo = {
                r.cache_key(): t for r, t in zip(readers, pool.map(total, readers), strict=True)
            }
            print(f"totals: {sorted(memo.values())}")

            write_shard(shards[0], 10)  # one shard changes
            again = [tracked(s) for s in shards]  # fresh specs see the new versions
            stale = [r for r in again if r.cache_key() not in memo]
            print(f"changed shards: {[r.url.rsplit('/', 1)[1] for r in stale]}")
            memo.update(zip([r.cache_key() for r in stale], pool.map(total, stale), strict=True))
            print(f"totals now: {sorted(memo[r.cache_key()] for r in again)}")

    # Same code, another store: fsspec's memory filesystem (one per process).
    note = FileSpec(url="memory://example/notes.txt", mode="w")
    with note.open() as f:
        f.write("kept in memory\n")
    with note.replace(mode="r").open() as f:
        print(f"memory: {f.read().strip()!r}; key {note.cache_key()[:12]}")


if __name__ == "__main__":
    main()
