"""The per-process registry: builds each spec's live object once and hands it out.

Scopes
    process: one object per process, shared by its threads, built single-flight.
    thread:  one object per thread (sqlite3 connections and other thread-bound
             objects), closed by that thread: when it ends, or at its next call.

The one promise: `get()` returns a working object, never None and never one that
has been torn down. Eviction, `close()` and the `max_entries` bound *retire* an
entry: the registry forgets it at once (the next `get()` builds anew), and its
teardown runs only once nobody can still be using the object:

- nobody holds it: no open `use()` block, and no reference outside the registry
  (a task's local variable, a running statement), checked with `sys.getrefcount`;
- for thread scope, in its own thread: another thread may be inside the object
  (a SQLite statement runs without the GIL), so it is never closed from outside.

An object still in use when retired is torn down at a later safe point: the end
of the last `use()` block, the owning thread's next call or its end, or the next
build, `evict()` or `close()` in the process. At interpreter exit, objects still
in use by other threads are left to the operating system.

The warm path lives in `Spec.get()`: a spec instance remembers its entry, so a
hit is a few attribute reads and a counter increment, with no lock. It reads the
value *before* checking that the entry is still live, and retiring sets the entry
not-live *before* counting references: so a caller that saw "live" already holds
a reference the teardown will see (both orders hold under the GIL, which runs
bytecodes one at a time).

Fork: see `handles._fork`. Every registry gives its forked child a fresh, empty
state; the parent's objects stay referenced in the child and are never closed
there.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import os
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

from handles import _fork
from handles.exceptions import BuildError, MissingDependencyError

if TYPE_CHECKING:
    from handles._spec import Spec

__all__ = ["KeyStats", "Registry", "override", "registry"]

logger = logging.getLogger("handles")
T = TypeVar("T")

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


class _Counters:
    __slots__ = ("build_seconds", "builds", "cache_key", "errors", "kind", "live", "retired_hits")

    def __init__(self, kind: str, cache_key: str) -> None:
        self.kind = kind
        self.cache_key = cache_key
        self.builds = 0
        self.errors = 0
        self.build_seconds = 0.0
        self.retired_hits = 0
        self.live = 0  # entries of this key the registry holds


class _Entry:
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
        "cache_key",
        "counters",
        "hits",
        "key",
        "leases",
        "live",
        "loop",
        "nbytes",
        "ok",
        "own_refs",
        "recency",
        "seen_hits",
        "seq",
        "spec",
        "thread",
        "value",
    )

    def __init__(
        self,
        spec: Spec[Any],
        value: Any,
        *,
        key: str,
        cache_key: str,
        counters: _Counters,
        seq: int,
    ) -> None:
        self.spec = spec
        self.value = value
        self.key = key
        self.cache_key = cache_key
        self.counters = counters
        self.seq = seq
        self.recency = seq  # the build count when it was last seen used
        self.hits = 0
        self.seen_hits = 0
        self.leases = 0  # open `use()` blocks
        self.thread: _ThreadRecord | None = None  # the owner, for thread scope
        self.loop: _LoopRecord | None = None  # the owner, for loop scope
        self.nbytes: dict[str, int] = {}  # device -> bytes, as the kind reports them
        self.ok = True
        self.live = True
        self.own_refs = 2


class _NoEntry:
    """What a spec remembers before it has an entry: never ok, never live."""

    __slots__ = ()
    ok = False
    live = False
    value = None


NO_ENTRY: Any = _NoEntry()


class _Pending:
    """A build in flight: waiters block on it instead of building again."""

    __slots__ = ("done", "entry", "error", "thread")

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.done = threading.Event()
        self.entry: _Entry | None = None
        self.error: BuildError | None = None


class _ThreadRecord:
    """One thread's objects: its entries, and those retired but not yet closed."""

    __slots__ = ("entries", "finalizer", "ident", "retired")

    def __init__(self) -> None:
        self.ident = threading.get_ident()
        self.entries: dict[str, _Entry] = {}
        self.retired: list[_Entry] = []
        self.finalizer: weakref.finalize[Any, Any] | None = None


class _LoopRecord:
    """One event loop's objects, and the async generator that closes them with the loop.

    `asyncio.run()` (and any loop that calls `shutdown_asyncgens()` before closing)
    closes every async generator that has started on the loop while the loop
    still runs: the keeper's `finally` then awaits each object's async teardown
    on its own loop.
    """

    __slots__ = ("entries", "keeper", "loop", "pending", "retired")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = weakref.ref(loop)
        self.entries: dict[str, _Entry] = {}
        self.pending: dict[str, asyncio.Future[None]] = {}
        self.retired: list[_Entry] = []
        self.keeper: Any = None


class _ThreadMarker:
    """Lives in a thread's local storage; its finalizer closes the thread's objects."""

    __slots__ = ("__weakref__", "record")

    def __init__(self, record: _ThreadRecord) -> None:
        self.record = record


class Registry:
    """This process's live objects. Get it with `handles.registry()`."""

    def __init__(self, max_entries: int | None = None) -> None:
        self._reset()
        self._max_entries = max_entries
        self._max_bytes: int | None = None
        self._max_device_bytes: dict[str, int] = {}
        _registries.add(self)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # process scope
        self._pending: dict[str, _Pending] = {}
        self._counters: dict[str, _Counters] = {}  # keys with live objects or builds in flight
        self._retired_counters: OrderedDict[str, _Counters] = OrderedDict()
        self._totals = _Counters("*", "")
        self._overrides: dict[str, list[Any]] = {}
        self._local = threading.local()
        self._threads: dict[int, _ThreadRecord] = {}
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopRecord] = (
            weakref.WeakKeyDictionary()
        )
        self._deferred: list[_Entry] = []  # process scope, retired while in use
        self._holders: dict[int, int] = {}  # id(object) -> entries holding it, not torn down
        self._seq = itertools.count()
        self._builds = 0  # the clock of the LRU order

    def _outside_references(self, entry: _Entry) -> int:
        """References to `entry.value` from outside the registry (0: nobody uses it)."""
        others = self._holders.get(id(entry.value), 1) - 1
        return sys.getrefcount(entry.value) - entry.own_refs - others

    # -- getting -------------------------------------------------------------

    def get(self, spec: Spec[T]) -> T:
        """The live object for `spec`, building it if this process (or thread) has none."""
        return self.lookup(spec)[0]  # type: ignore[no-any-return]

    def lookup(self, spec: Spec[Any]) -> tuple[Any, Any]:
        """(live object, entry a caller may remember for its next call)."""
        if self._overrides:
            stack = self._overrides.get(spec.cache_key())
            if stack:
                return stack[-1], NO_ENTRY
        key = spec._instance_key()
        if spec.scope == "thread":
            return self._get_for_thread(spec, key)
        if spec.scope == "loop":
            return self._get_for_loop(spec, key), NO_ENTRY
        while True:
            entry = self._entries.get(key)
            built = False
            if entry is None:
                entry, built = self._build_once(spec, key)
            value = entry.value  # before the live check: see the module docstring
            if entry.live:
                if not built:
                    entry.hits += 1
                return value, entry
            # Retired between the lookup and now (and maybe torn down): ask again.

    def _get_for_thread(self, spec: Spec[Any], key: str) -> tuple[Any, _Entry]:
        record = self._thread_record()
        if record.retired:
            self._close_ready()
        entry = record.entries.get(key)
        if entry is not None:
            entry.hits += 1
            return entry.value, entry
        # Only this thread can build this thread's object: no single-flight needed.
        entry = self._build(spec, key)
        with self._lock:
            entry.ok = not self._overrides
            entry.thread = record
            record.entries[key] = entry
        return entry.value, entry

    def _thread_record(self) -> _ThreadRecord:
        try:
            return self._local.marker.record  # type: ignore[no-any-return]
        except AttributeError:
            pass
        record = _ThreadRecord()
        marker = _ThreadMarker(record)
        token = next(self._seq)
        # Runs when the thread's local storage dies: at thread end, in that thread,
        # or in a forked child, where it must do nothing (see handles._fork).
        record.finalizer = weakref.finalize(marker, self._thread_ended, token, os.getpid())
        record.finalizer.atexit = False  # close() handles interpreter exit
        with self._lock:
            self._threads[token] = record
        self._local.marker = marker
        return record

    def _thread_ended(self, token: int, pid: int) -> None:
        if not _fork.created_here(pid):
            return
        with self._lock:
            record = self._threads.pop(token, None)
            if record is None:
                return
            entries = [*record.retired, *record.entries.values()]
            record.retired.clear()
            self._retire(list(record.entries.values()))
            record.entries.clear()
        # The thread is gone: nobody can be inside its objects any more.
        self._teardown(entries)

    def _build_once(self, spec: Spec[Any], key: str) -> tuple[_Entry, bool]:
        """(entry, whether this call built it)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                return entry, False
            pending = self._pending.get(key)
            owner = pending is None
            if pending is None:
                pending = self._pending[key] = _Pending()
        if not owner:
            return self._wait(spec, pending), False
        try:
            entry = self._build(spec, key)
        except BaseException as exc:
            pending.error = exc if isinstance(exc, BuildError) else BuildError.for_spec(spec, exc)
            if pending.error is not exc:
                pending.error.__cause__ = exc
            with self._lock:
                del self._pending[key]
            pending.done.set()
            raise
        with self._lock:
            entry.ok = not self._overrides
            self._entries[key] = entry
            del self._pending[key]
            self._evict_over_limit(keep=entry)
        pending.entry = entry
        pending.done.set()
        self._close_ready()
        return entry, True

    def _wait(self, spec: Spec[Any], pending: _Pending) -> _Entry:
        if pending.thread == threading.get_ident():
            raise BuildError.about(
                spec,
                f"{spec!r} asked for itself while being built (a build that calls its own get())",
            )
        pending.done.wait()
        if pending.error is not None:
            raise pending.error.again()
        assert pending.entry is not None
        return pending.entry

    def _build(self, spec: Spec[Any], key: str) -> _Entry:
        cache_key = spec.cache_key()
        counters = self._counters_for(spec, cache_key)
        started = perf_counter()
        try:
            value = spec.build()
        except BaseException as exc:
            error = self._build_failed(spec, counters, exc)
            if error is exc:
                raise
            raise error from exc
        return self._new_entry(spec, value, key, counters, perf_counter() - started)

    async def _abuild(self, spec: Spec[Any], key: str) -> _Entry:
        cache_key = spec.cache_key()
        counters = self._counters_for(spec, cache_key)
        started = perf_counter()
        try:
            value = await spec.abuild()
        except BaseException as exc:
            error = self._build_failed(spec, counters, exc)
            if error is exc:
                raise
            raise error from exc
        return self._new_entry(spec, value, key, counters, perf_counter() - started)

    def _build_failed(
        self, spec: Spec[Any], counters: _Counters, exc: BaseException
    ) -> BaseException:
        """The error a failed build raises (counted; the cause chained)."""
        self._count_error(counters)
        if isinstance(exc, BuildError | MissingDependencyError) or not isinstance(exc, Exception):
            return exc  # already ours, or KeyboardInterrupt and the like
        return BuildError.for_spec(spec, exc)

    def _new_entry(
        self, spec: Spec[Any], value: Any, key: str, counters: _Counters, seconds: float
    ) -> _Entry:
        cache_key = counters.cache_key
        nbytes = _measure(spec, value)
        with self._lock:
            counters.builds += 1
            counters.build_seconds += seconds
            counters.live += 1
            # A failed build of the same key may have retired these counters meanwhile.
            self._retired_counters.pop(cache_key, None)
            self._counters[cache_key] = counters
            self._totals.builds += 1
            self._totals.build_seconds += seconds
            self._builds += 1
            entry = _Entry(
                spec, value, key=key, cache_key=cache_key, counters=counters, seq=next(self._seq)
            )
            entry.recency = self._builds
            entry.nbytes = nbytes
            # What getrefcount(entry.value) reads while nobody else holds it: the
            # entry, the call's argument, and the object's own references to itself
            # (a sqlite3 connection's statement cache holds two). Minus the caller's
            # `value` and ours, and minus other entries holding the same object
            # (FileSpecs share one filesystem), which are counted apart.
            holders = self._holders.get(id(value), 0)
            entry.own_refs = sys.getrefcount(value) - 2 - holders
            self._holders[id(value)] = holders + 1
        logger.info("built %s %s in %.3fs", spec.kind, cache_key[:12], seconds)
        return entry

    def _counters_for(self, spec: Spec[Any], cache_key: str) -> _Counters:
        with self._lock:
            counters = self._counters.get(cache_key)
            if counters is None:
                counters = self._retired_counters.pop(cache_key, None) or _Counters(
                    spec.kind, cache_key
                )
                self._counters[cache_key] = counters
            return counters

    def _count_error(self, counters: _Counters) -> None:
        with self._lock:
            counters.errors += 1
            self._totals.errors += 1
            self._drop_counters_if_idle(counters)

    def _drop_counters_if_idle(self, counters: _Counters) -> None:
        # Lock held. A key with no live object moves to the bounded list of
        # retired keys; a build that succeeds later puts it back (see _build).
        if counters.live or self._counters.get(counters.cache_key) is not counters:
            return
        del self._counters[counters.cache_key]
        self._retired_counters[counters.cache_key] = counters
        while len(self._retired_counters) > RETIRED_KEYS_KEPT:
            self._retired_counters.popitem(last=False)  # its counts live on in totals()

    # -- bounding and closing -------------------------------------------------

    @property
    def max_entries(self) -> int | None:
        """Bound on process-scoped entries; the least recently used are retired beyond it."""
        return self._max_entries

    @max_entries.setter
    def max_entries(self, value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError("max_entries must be at least 1, or None for no bound")
        self._rebound("_max_entries", value)

    @property
    def max_bytes(self) -> int | None:
        """Budget for host memory of process-scoped objects, in bytes (None: no budget).

        Counted from what each kind reports (`Spec.nbytes`); objects of kinds that
        report nothing count as 0. Least recently used idle objects are retired
        until a new one fits; one larger than the whole budget is still built.
        """
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int | None) -> None:
        if value is not None and value < 0:
            raise ValueError("max_bytes must be at least 0, or None for no budget")
        self._rebound("_max_bytes", value)

    @property
    def max_device_bytes(self) -> dict[str, int]:
        """Budgets for accelerator memory by device, e.g. {"cuda:0": 8 * 2**30} (a copy)."""
        return dict(self._max_device_bytes)

    @max_device_bytes.setter
    def max_device_bytes(self, value: dict[str, int]) -> None:
        budgets = dict(value)
        for device, limit in budgets.items():
            if not isinstance(limit, int) or limit < 0:
                raise ValueError(f"max_device_bytes[{device!r}] must be a number of bytes >= 0")
        self._rebound("_max_device_bytes", budgets)

    def _rebound(self, attribute: str, value: Any) -> None:
        # A new bound or budget applies at once.
        with self._lock:
            setattr(self, attribute, value)
            self._evict_over_limit(keep=None)
        self._close_ready()

    def _over_budget(self) -> set[str]:
        """Devices ("cpu" for host memory) whose budget the live objects exceed (lock held)."""
        budgets = dict(self._max_device_bytes)
        if self._max_bytes is not None:
            budgets["cpu"] = self._max_bytes
        if not budgets:
            return set()
        used: dict[str, int] = {}
        for entry in self._entries.values():
            for device, size in entry.nbytes.items():
                used[device] = used.get(device, 0) + size
        return {d for d, limit in budgets.items() if used.get(d, 0) > limit}

    def _evict_over_limit(self, keep: _Entry | None) -> list[_Entry]:
        """Retire least recently used entries beyond the bound (lock held).

        Recency is tracked at the resolution of builds, so that a hit stays a
        counter increment: an entry whose hit count changed since the last look
        was used after every build so far. Entries in a `use()` block, and the
        entry just built (`keep`), are never chosen; an entry some caller still
        holds is chosen only when nothing else can go, and is then closed when
        that caller is done.
        """
        over_count = self._max_entries is not None and len(self._entries) > self._max_entries
        if not over_count and not self._over_budget():
            return []
        now = self._builds
        for entry in self._entries.values():
            if entry.hits != entry.seen_hits:
                entry.seen_hits = entry.hits
                entry.recency = now
        candidates = [e for e in self._entries.values() if e is not keep and not e.leases]
        # Idle ones first, then least recently used, then oldest build.
        candidates.sort(key=lambda e: (self._outside_references(e) > 0, e.recency, e.seq))
        evicted: list[_Entry] = []
        for entry in candidates:
            if self._max_entries is None or len(self._entries) <= self._max_entries:
                break
            del self._entries[entry.key]
            evicted.append(entry)
            logger.info("evicted %s %s", entry.spec.kind, entry.cache_key[:12])
        # Bytes: only idle objects go, since retiring one still in use frees nothing.
        over = self._over_budget()
        for entry in candidates:
            if not over:
                break
            if entry in evicted or self._outside_references(entry) > 0:
                continue
            if not over & set(entry.nbytes):
                continue
            del self._entries[entry.key]
            evicted.append(entry)
            logger.info(
                "evicted %s %s to fit the memory budget", entry.spec.kind, entry.cache_key[:12]
            )
            over = self._over_budget()
        if over:
            logger.warning(
                "live objects exceed the memory budget of %s%s",
                ", ".join(sorted(over)),
                " (the one just built is larger than the whole budget)"
                if keep is not None and len(self._entries) == 1
                else " (the others are in use)",
            )
        self._retire(evicted)
        return evicted

    def evict(self, spec: Spec[Any]) -> bool:
        """Retire this process's object for `spec` (this thread's, for thread scope).

        It is torn down now if nobody uses it, else when its last user is done.
        """
        key = spec._instance_key()
        with self._lock:
            if spec.scope == "thread":
                entry = self._thread_record().entries.pop(key, None)
            elif spec.scope == "loop":
                loop = _running_loop()
                loop_record = None if loop is None else self._loops.get(loop)
                entry = None if loop_record is None else loop_record.entries.pop(key, None)
            else:
                entry = self._entries.pop(key, None)
            if entry is None:
                return False
            self._retire([entry])
        logger.info("evicted %s %s", entry.spec.kind, entry.cache_key[:12])
        self._close_ready()
        return True

    def close(self) -> None:
        """Retire every object in this process and tear down those nobody uses, newest first.

        Objects in use are torn down when their last user is done (see the module
        docstring); other threads' objects are closed by their own threads. A
        failing teardown is logged and the others still run. The registry stays
        usable: the next `get()` builds again. Stats are kept.
        """
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
            for record in self._threads.values():
                entries.extend(record.entries.values())
                record.entries.clear()
            for loop_record in list(self._loops.values()):
                entries.extend(loop_record.entries.values())
                loop_record.entries.clear()
            self._retire(entries)
        self._close_ready()

    def _retire(self, entries: list[_Entry], *, schedule: bool = True) -> None:
        # Lock held. Not live first: from here on no warm path hands the value out.
        for entry in entries:
            entry.ok = entry.live = False
        loops: dict[int, _LoopRecord] = {}
        for entry in entries:
            counters = entry.counters
            counters.retired_hits += entry.hits
            self._totals.retired_hits += entry.hits
            entry.hits = entry.seen_hits = 0
            counters.live -= 1
            self._drop_counters_if_idle(counters)
            if entry.loop is not None:
                entry.loop.retired.append(entry)
                loops[id(entry.loop)] = entry.loop
            elif entry.thread is not None:
                entry.thread.retired.append(entry)
            else:
                self._deferred.append(entry)
        if schedule:
            for loop_record in loops.values():
                self._schedule_loop_cleanup(loop_record)

    def _close_ready(self) -> None:
        """Tear down, newest first, the retired objects nobody uses that this thread may close.

        Rounds, because one object may hold another (FileSpecs hold their shared
        filesystem): closing the first frees the next.
        """
        while True:
            with self._lock:
                ready = self._take_ready()
            if not ready:
                return
            self._teardown(sorted(ready, key=lambda e: e.seq, reverse=True))

    def _take_ready(self) -> list[_Entry]:
        # Lock held. Other threads' retired objects wait for their own thread.
        pools = [self._deferred]
        marker = getattr(self._local, "marker", None)
        if marker is not None:
            pools.append(marker.record.retired)
        ready: list[_Entry] = []
        for pool in pools:
            waiting: list[_Entry] = []
            for entry in pool:
                busy = entry.leases or self._outside_references(entry) > 0
                (waiting if busy else ready).append(entry)
            pool[:] = waiting
        return ready

    def _teardown(self, entries: list[_Entry]) -> None:
        for entry in entries:
            try:
                entry.spec.teardown(entry.value)
            except Exception:
                logger.exception("closing %r failed", entry.spec)
            finally:
                self._forget_value(entry)

    def _forget_value(self, entry: _Entry) -> None:
        with self._lock:
            ident = id(entry.value)
            left = self._holders.get(ident, 1) - 1
            if left > 0:
                self._holders[ident] = left
            else:
                self._holders.pop(ident, None)
            # Safe: the entry is not live, and any caller that saw it live
            # already held the value (see the module docstring).
            entry.value = None

    # -- leases ----------------------------------------------------------------

    @contextmanager
    def use(self, spec: Spec[T]) -> Iterator[T]:
        """The live object for `spec`, never torn down before the block ends."""
        while True:
            value, entry = self.lookup(spec)
            if entry is NO_ENTRY:  # an override: nothing to hold
                yield value
                return
            with self._lock:
                if entry.live:
                    entry.leases += 1
                    break
        try:
            yield value
        finally:
            del value
            with self._lock:
                entry.leases -= 1
                retired_and_free = not (entry.live or entry.leases)
            if retired_and_free:
                self._close_ready()

    # -- async ------------------------------------------------------------------

    async def aget(self, spec: Spec[T]) -> T:
        """`get()` for coroutines: builds never block the event loop.

        Process scope: the same object as `get()`, built in a worker thread (single-
        flight with every other thread and coroutine). Thread scope: this thread's
        object, built here (connections open quickly). Loop scope: this event
        loop's object, built on the loop with the kind's `abuild()`.
        """
        if self._overrides:
            stack = self._overrides.get(spec.cache_key())
            if stack:
                return stack[-1]  # type: ignore[no-any-return]
        key = spec._instance_key()
        if spec.scope == "loop":
            return await self._aget_for_loop(spec, key)  # type: ignore[no-any-return]
        if spec.scope == "thread" or key in self._entries:
            return self.get(spec)
        return await asyncio.to_thread(self.get, spec)

    def _get_for_loop(self, spec: Spec[Any], key: str) -> Any:
        loop = _running_loop()
        if loop is None:
            raise BuildError.about(
                spec,
                f"{spec!r} is bound to an event loop: call `await spec.aget()` inside a "
                "coroutine (no event loop runs in this thread)",
            )
        loop_record = self._loops.get(loop)
        entry = None if loop_record is None else loop_record.entries.get(key)
        if entry is None:
            raise BuildError.about(
                spec,
                f"{spec!r} has no object in this event loop yet: its build is asynchronous, "
                "so call `await spec.aget()` (later `get()` calls in this loop then work)",
            )
        value = entry.value
        if not entry.live:
            return self._get_for_loop(spec, key)
        entry.hits += 1
        return value

    async def _aget_for_loop(self, spec: Spec[Any], key: str) -> Any:
        loop = asyncio.get_running_loop()
        loop_record = await self._loop_record(loop)
        while True:
            entry = loop_record.entries.get(key)
            if entry is not None:
                value = entry.value
                if entry.live:
                    entry.hits += 1
                    return value
                continue
            pending = loop_record.pending.get(key)
            if pending is not None:
                # Single-flight among this loop's coroutines.
                try:
                    await asyncio.shield(pending)
                except BuildError as exc:
                    raise exc.again() from exc.__cause__
                continue
            pending = loop_record.pending[key] = loop.create_future()
            try:
                entry = await self._abuild(spec, key)
            except BaseException as exc:
                error = exc if isinstance(exc, BuildError) else BuildError.for_spec(spec, exc)
                if error is not exc:
                    error.__cause__ = exc
                pending.set_exception(error)
                pending.exception()  # retrieved: no "never retrieved" warning without waiters
                del loop_record.pending[key]
                raise
            with self._lock:
                entry.loop = loop_record
                loop_record.entries[key] = entry
                del loop_record.pending[key]
            pending.set_result(None)
            return entry.value

    async def _loop_record(self, loop: asyncio.AbstractEventLoop) -> _LoopRecord:
        with self._lock:
            loop_record = self._loops.get(loop)
            if loop_record is not None:
                return loop_record
            loop_record = self._loops[loop] = _LoopRecord(loop)
        keeper = _loop_keeper(self, loop_record)
        loop_record.keeper = keeper
        await keeper.__anext__()  # started here, so the loop closes it at shutdown
        return loop_record

    async def _close_loop(self, loop_record: _LoopRecord, *, ending: bool) -> None:
        """Tear down a loop's retired objects on that loop (all of them when it ends)."""
        with self._lock:
            if ending:
                self._retire(list(loop_record.entries.values()), schedule=False)
                loop_record.entries.clear()
            ready = [
                e
                for e in loop_record.retired
                if ending or not (e.leases or self._outside_references(e) > 0)
            ]
            loop_record.retired[:] = [e for e in loop_record.retired if e not in ready]
        for entry in sorted(ready, key=lambda e: e.seq, reverse=True):
            try:
                await entry.spec.ateardown(entry.value)
            except asyncio.CancelledError:
                if not ending:  # the loop is shutting down: its keeper finishes the job
                    with self._lock:
                        loop_record.retired.append(entry)
                raise
            except Exception:
                logger.exception("closing %r failed", entry.spec)
            self._forget_value(entry)

    def _schedule_loop_cleanup(self, loop_record: _LoopRecord) -> None:
        # Lock held. Async teardown must run on the object's own loop.
        loop = loop_record.loop()
        if loop is None or loop.is_closed() or not loop.is_running():
            return  # the loop's shutdown (or garbage collection) takes care of it
        coro = self._close_loop(loop_record, ending=False)
        if loop is _running_loop():
            loop.create_task(coro)
        else:
            asyncio.run_coroutine_threadsafe(coro, loop)

    # -- introspection --------------------------------------------------------

    def stats(self) -> dict[str, KeyStats]:
        """Per cache key: builds, hits, errors, build seconds and live objects.

        Keys with a live object are always here; of keys whose objects are all
        gone, the most recent 1024 are kept. `totals()` counts everything.
        """
        with self._lock:
            hits = {key: c.retired_hits for key, c in self._counters.items()}
            memory: dict[str, dict[str, int]] = {}
            for entry in self._live_entries():
                hits[entry.cache_key] = hits.get(entry.cache_key, 0) + entry.hits
                sizes = memory.setdefault(entry.cache_key, {})
                for device, size in entry.nbytes.items():
                    sizes[device] = sizes.get(device, 0) + size
            result = {
                key: KeyStats(c.kind, c.builds, c.retired_hits, c.errors, c.build_seconds, 0)
                for key, c in self._retired_counters.items()
            }
            for key, c in self._counters.items():
                sizes = memory.get(key, {})
                result[key] = KeyStats(
                    c.kind,
                    c.builds,
                    hits[key],
                    c.errors,
                    c.build_seconds,
                    c.live,
                    nbytes=sizes.get("cpu", 0),
                    device_nbytes={d: n for d, n in sizes.items() if d != "cpu"},
                )
            return result

    def totals(self) -> KeyStats:
        """Builds, hits, errors and build seconds of every key since the process started."""
        with self._lock:
            live = self._live_entries()
            return KeyStats(
                "*",
                self._totals.builds,
                self._totals.retired_hits + sum(e.hits for e in live),
                self._totals.errors,
                self._totals.build_seconds,
                len(live),
            )

    def __len__(self) -> int:
        """Live objects in this process, all threads included."""
        with self._lock:
            return (
                len(self._entries)
                + sum(len(r.entries) for r in self._threads.values())
                + sum(len(r.entries) for r in list(self._loops.values()))
            )

    def __contains__(self, spec: object) -> bool:
        instance_key = getattr(spec, "_instance_key", None)
        if instance_key is None:
            return False
        try:
            key = instance_key()
        except Exception:  # a spec whose key cannot be computed was never built
            return False
        scope = getattr(spec, "scope", None)
        if scope == "thread":
            return key in self._thread_record().entries
        if scope == "loop":
            loop = _running_loop()
            loop_record = None if loop is None else self._loops.get(loop)
            return loop_record is not None and key in loop_record.entries
        return key in self._entries

    def __repr__(self) -> str:
        return f"<Registry pid={os.getpid()} live={len(self)} max_entries={self._max_entries}>"

    # -- overrides ------------------------------------------------------------

    def _push_override(self, cache_key: str, value: Any) -> None:
        with self._lock:
            self._overrides.setdefault(cache_key, []).append(value)
            for entry in self._live_entries():
                entry.ok = False

    def _pop_override(self, cache_key: str) -> None:
        with self._lock:
            stack = self._overrides[cache_key]
            stack.pop()
            if not stack:
                del self._overrides[cache_key]
            if not self._overrides:
                for entry in self._live_entries():
                    entry.ok = True

    def _live_entries(self) -> list[_Entry]:
        entries = list(self._entries.values())
        for record in self._threads.values():
            entries.extend(record.entries.values())
        for loop_record in list(self._loops.values()):
            entries.extend(loop_record.entries.values())
        return entries

    # -- fork -----------------------------------------------------------------

    def _before_fork(self) -> None:
        self._lock.acquire()

    def _after_fork_in_parent(self) -> None:
        self._lock.release()

    def _after_fork_in_child(self) -> None:
        # Everything here is the parent's: keep it referenced, never close it.
        inherited: list[Any] = [*self._live_entries(), *self._deferred]
        for loop_record in list(self._loops.values()):
            inherited.extend(loop_record.retired)
            inherited.append(loop_record)
        for record in self._threads.values():
            inherited.extend(record.retired)
            inherited.append(record)
            if record.finalizer is not None:
                record.finalizer.detach()
        for entry in inherited:
            if isinstance(entry, _Entry):
                entry.ok = entry.live = False
        overrides, max_entries = self._overrides, self._max_entries
        self._reset()
        self._overrides, self._max_entries = overrides, max_entries
        _fork.keep_forever(inherited)


def _measure(spec: Spec[Any], value: Any) -> dict[str, int]:
    """The kind's report of `value`'s memory by device; {} when unknown or failing."""
    try:
        sizes = spec.nbytes(value)
    except Exception:  # accounting must never fail a build
        logger.exception("measuring %r failed", spec)
        return {}
    return {str(d): int(n) for d, n in (sizes or {}).items() if n}


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _loop_keeper(reg: Registry, loop_record: _LoopRecord) -> Any:
    # Suspended for the loop's whole life; closed by the loop's shutdown_asyncgens().
    try:
        yield
    finally:
        with reg._lock:
            current = reg._loops.get(loop_record.loop())  # type: ignore[arg-type]
            if current is loop_record:
                del reg._loops[loop_record.loop()]  # type: ignore[arg-type]
        await reg._close_loop(loop_record, ending=True)


_registries: weakref.WeakSet[Registry] = weakref.WeakSet()


def _before_fork() -> None:
    for reg in list(_registries):
        reg._before_fork()


def _after_fork_in_parent() -> None:
    for reg in list(_registries):
        reg._after_fork_in_parent()


def _after_fork_in_child() -> None:
    for reg in list(_registries):
        reg._after_fork_in_child()


_fork.before(_before_fork)
_fork.in_parent(_after_fork_in_parent)
_fork.in_child(_after_fork_in_child)

_registry = Registry()


def registry() -> Registry:
    """This process's registry."""
    return _registry


@contextmanager
def override(spec: Spec[T], value: T) -> Iterator[T]:
    """Inside the block, `spec.get()` (and any equal spec's) returns `value`.

    For tests: the override is process-wide, so tasks on thread pools see it too.
    Matching is by `cache_key()`, so placement does not matter. Nests.
    """
    key = spec.cache_key()
    _registry._push_override(key, value)
    try:
        yield value
    finally:
        _registry._pop_override(key)


def _close_at_exit() -> None:
    try:
        _registry.close()
    except Exception:  # pragma: no cover - close() logs teardown errors itself
        logger.exception("closing the registry at exit failed")


atexit.register(_close_at_exit)
