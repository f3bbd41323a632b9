"""What the registry keeps per live object and per cache key.

An `Entry` is one live object in one bucket (the process's, a thread's or an
event loop's). `Counters` are per cache key, shared by every entry of that key,
and `Ledger` keeps them bounded: a key whose objects are all gone moves to a
list of the most recent retired keys, and older ones live on only in the totals.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from handles._registry.buckets import Bucket
    from handles._spec import Spec

__all__ = ["NO_ENTRY", "RETIRED_KEYS_KEPT", "Counters", "Entry", "KeyStats", "Ledger"]

# Per-key counters kept after a key's last object is gone; older ones are folded
# into `totals()`, so stats stay bounded whatever the churn of distinct specs.
RETIRED_KEYS_KEPT = 1024


@dataclass(frozen=True)
class KeyStats:
    """What the registry did for one cache key (all placements and threads together)."""

    kind: str
    builds: int
    hits: int
    errors: int
    build_seconds: float
    live: int
    nbytes: int = 0
    """Host memory of the key's live objects, as their kind reports it (0: unknown)."""
    device_nbytes: dict[str, int] = field(default_factory=dict)
    """Accelerator memory of the key's live objects, by device ("cuda:0": bytes)."""
    evictions: int = 0
    """Objects of this key retired by `evict()` or a bound (not by `close()` or an ending)."""


class Counters:
    __slots__ = (
        "build_seconds",
        "builds",
        "cache_key",
        "errors",
        "evictions",
        "kind",
        "live",
        "retired_hits",
    )

    def __init__(self, kind: str, cache_key: str) -> None:
        self.kind = kind
        self.cache_key = cache_key
        self.builds = 0
        self.errors = 0
        self.evictions = 0
        self.build_seconds = 0.0
        self.retired_hits = 0
        self.live = 0  # entries of this key the registry holds


class Entry:
    """One live object.

    `ok`: the warm path may hand out `value` (live, and no override active).
    `live`: the registry still holds it (not retired).

    `hits` is bumped without a lock. Under the GIL, `entry.hits += 1` on a slotted
    int attribute is four bytecodes (load, load, add, store) and CPython switches
    threads only at calls, backward jumps and function entry, none of which is
    among them, so no increment is lost. Without the GIL (free-threaded builds)
    increments may be lost: hits are statistics and the LRU order only asks
    whether the count changed, so neither correctness nor eviction depends on them.
    """

    __slots__ = (
        "bucket",
        "cache_key",
        "counters",
        "final",
        "hits",
        "key",
        "leases",
        "live",
        "nbytes",
        "ok",
        "own_refs",
        "recency",
        "seen_hits",
        "seq",
        "spec",
        "value",
    )

    def __init__(
        self, spec: Spec[Any], value: Any, *, key: str, counters: Counters, seq: int
    ) -> None:
        self.spec = spec
        self.value = value
        self.key = key
        self.cache_key = counters.cache_key
        self.counters = counters
        self.seq = seq
        self.recency = seq  # the build count when it was last seen used
        self.hits = 0
        self.seen_hits = 0
        self.leases = 0  # open `use()` blocks
        self.bucket: Bucket | None = None  # where it lives: the process, a thread or a loop
        self.nbytes: dict[str, int] = {}  # device -> bytes, as the kind reports them
        self.ok = True
        self.live = True
        self.final = False  # retired by close() or its thread's or loop's end
        self.own_refs = 2  # see handles._registry.refs


class _NoEntry:
    """What a spec remembers before it has an entry: never ok, never live."""

    __slots__ = ()
    ok = False
    live = False
    value = None
    leases = 0


NO_ENTRY: Any = _NoEntry()


class Ledger:
    """Counters by cache key, bounded, and the process's totals. Callers hold the registry lock."""

    def __init__(self) -> None:
        self.active: dict[str, Counters] = {}  # keys with live objects or builds in flight
        self.retired: OrderedDict[str, Counters] = OrderedDict()
        self.totals = Counters("*", "")
        self.builds = 0  # the clock of the LRU order
        self.seq = itertools.count()

    def counters_for(self, spec: Spec[Any], cache_key: str) -> Counters:
        counters = self.active.get(cache_key)
        if counters is None:
            counters = self.retired.pop(cache_key, None) or Counters(spec.kind, cache_key)
            self.active[cache_key] = counters
        return counters

    def built(self, counters: Counters, seconds: float) -> int:
        """Count a build; returns the LRU clock's new time."""
        counters.builds += 1
        counters.build_seconds += seconds
        counters.live += 1
        # A failed build of the same key may have retired these counters meanwhile.
        self.retired.pop(counters.cache_key, None)
        self.active[counters.cache_key] = counters
        self.totals.builds += 1
        self.totals.build_seconds += seconds
        self.builds += 1
        return self.builds

    def failed(self, counters: Counters) -> None:
        counters.errors += 1
        self.totals.errors += 1
        self._drop_if_idle(counters)

    def retired_entry(self, entry: Entry, *, evicted: bool) -> None:
        counters = entry.counters
        if evicted:
            counters.evictions += 1
            self.totals.evictions += 1
        counters.retired_hits += entry.hits
        self.totals.retired_hits += entry.hits
        entry.hits = entry.seen_hits = 0
        counters.live -= 1
        self._drop_if_idle(counters)

    def _drop_if_idle(self, counters: Counters) -> None:
        # A key with no live object moves to the bounded list of retired keys; a
        # build that succeeds later puts it back (see `built`).
        if counters.live or self.active.get(counters.cache_key) is not counters:
            return
        del self.active[counters.cache_key]
        self.retired[counters.cache_key] = counters
        while len(self.retired) > RETIRED_KEYS_KEPT:
            self.retired.popitem(last=False)  # its counts live on in totals

    def stats(self, live: list[Entry]) -> dict[str, KeyStats]:
        hits = {key: c.retired_hits for key, c in self.active.items()}
        memory: dict[str, dict[str, int]] = {}
        for entry in live:
            hits[entry.cache_key] = hits.get(entry.cache_key, 0) + entry.hits
            sizes = memory.setdefault(entry.cache_key, {})
            for device, size in entry.nbytes.items():
                sizes[device] = sizes.get(device, 0) + size
        result = {
            key: KeyStats(
                c.kind,
                c.builds,
                c.retired_hits,
                c.errors,
                c.build_seconds,
                0,
                evictions=c.evictions,
            )
            for key, c in self.retired.items()
        }
        for key, c in self.active.items():
            sizes = memory.get(key, {})
            result[key] = KeyStats(
                c.kind,
                c.builds,
                hits.get(key, 0),
                c.errors,
                c.build_seconds,
                c.live,
                nbytes=sizes.get("cpu", 0),
                device_nbytes={d: n for d, n in sizes.items() if d != "cpu"},
                evictions=c.evictions,
            )
        return result

    def total(self, live: list[Entry]) -> KeyStats:
        t = self.totals
        hits = t.retired_hits + sum(e.hits for e in live)
        nbytes = sum(e.nbytes.get("cpu", 0) for e in live)
        devices: dict[str, int] = {}
        for entry in live:
            for device, size in entry.nbytes.items():
                if device != "cpu":
                    devices[device] = devices.get(device, 0) + size
        return KeyStats(
            "*",
            t.builds,
            hits,
            t.errors,
            t.build_seconds,
            len(live),
            nbytes=nbytes,
            device_nbytes=devices,
            evictions=t.evictions,
        )
