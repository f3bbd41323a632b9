"""The registry: builds each spec's live object once per bucket and hands it out.

The one promise: `get()` returns a working object, never None and never one that
has been torn down. Eviction, `close()` and the bounds *retire* an entry: the
registry forgets it at once (the next `get()` builds anew), and its teardown runs
only once nobody can still be using the object (handles._registry.refs): no open
`use()` block and no reference outside the registry. An object still in use when
retired is torn down at a later safe point: the end of the last `use()` block,
the owning thread's next call or its end, the loop's cleanup or end, or the next
build, `evict()` or `close()` in the process.

The warm path lives in `Spec.get()`: a spec instance remembers its entry, so a
hit is a few attribute reads and a counter increment, with no lock. It reads the
value *before* checking that the entry is still live, and retiring sets the entry
not-live *before* counting references: so a caller that saw "live" already holds
a reference the teardown will see (both orders hold under the GIL, which runs
bytecodes one at a time).

Where objects live is the stores' business (handles._registry.buckets and
.loops): one store per scope, one bucket per process, thread or loop. The code
here is the same for all of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import perf_counter
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from handles._registry import loops, refs
from handles._registry.buckets import Bucket, ProcessStore, Store, ThreadStore
from handles._registry.entries import NO_ENTRY, Entry, KeyStats, Ledger
from handles._registry.flight import Flight
from handles._registry.loops import LoopBucket, LoopStore
from handles._registry.policy import Bounds, choose_victims
from handles._secrets import scrubbed_for
from handles.exceptions import BuildError, MissingDependencyError

if TYPE_CHECKING:
    from handles._spec import Spec

__all__ = ["Registry", "all_registries"]

logger = logging.getLogger("handles")
T = TypeVar("T")
Listener = Callable[[str, str, str, float], None]
"""(event, kind, cache_key, seconds): see `Registry.subscribe`."""


class Registry:
    """This process's live objects. Get it with `handles.registry()`."""

    def __init__(self, max_entries: int | None = None) -> None:
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._process = ProcessStore()
        self._threads = ThreadStore()
        self._loops = LoopStore()
        self._stores: dict[str, Store] = {
            "process": self._process,
            "thread": self._threads,
            "loop": self._loops,
        }
        self._ledger = Ledger()
        self._overrides: dict[str, list[Any]] = {}
        self._max_entries = max_entries
        self._max_bytes: int | None = None
        self._max_device_bytes: dict[str, int] = {}
        self._listeners: tuple[Listener, ...] = ()
        _registries.add(self)  # every registry, not only the default one, is fork safe

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
        store = self._stores[spec.scope]
        if self._loops.by_loop:
            self._sweep_loops()
        bucket = store.bucket(self, spec)
        if bucket.retired:
            self._close_ready()
        while True:
            entry = bucket.entries.get(key)
            built = False
            if entry is None:
                if store.asynchronous:
                    raise _not_built_on_this_loop(spec)
                entry, built = self._build_once(spec, key, bucket)
                if entry is None:
                    continue  # the build it waited for was abandoned: ask again
            value = entry.value  # before the live check: see the module docstring
            if entry.live:
                if not built:
                    entry.hits += 1
                    if entry.spec is not spec and entry.cache_key != spec.cache_key():
                        self._attach(spec, value)  # a shared object (Spec.live_identity)
                return value, entry
            # Retired between the lookup and now (and maybe torn down): ask again.

    def _build_once(self, spec: Spec[Any], key: str, bucket: Bucket) -> tuple[Entry | None, bool]:
        """(entry, whether this call built it); entry None: the build was abandoned."""
        entry, flight, owner = self._lead_or_follow(bucket, key)
        if entry is not None:
            return entry, False
        if not owner:
            return flight.wait(spec), False
        try:
            entry = self._build(spec, key)
        except BaseException as exc:
            self._abandon(bucket, key, flight, spec, exc)
            raise
        self._install(entry, bucket, key)
        flight.landed(entry)
        self._close_ready()
        return entry, True

    def _attach(self, spec: Spec[Any], value: Any) -> None:
        """`spec.attached(value)`, failing as a build of `spec` would (counted, wrapped)."""
        try:
            spec.attached(value)
        except BaseException as exc:
            self._reraise(spec, self._counters(spec), exc)

    def _lead_or_follow(self, bucket: Bucket, key: str) -> tuple[Entry | None, Flight, bool]:
        """(the entry if built, else the build in flight, and whether this caller builds it)."""
        with self._lock:
            entry = bucket.entries.get(key)
            flight = bucket.pending.get(key)
            if entry is not None or flight is not None:
                return entry, flight or _NO_FLIGHT, False
            flight = bucket.pending[key] = Flight()
            return None, flight, True

    def _abandon(
        self, bucket: Bucket, key: str, flight: Flight, spec: Spec[Any], exc: BaseException
    ) -> None:
        """The build failed: nothing cached, and every waiter learns why."""
        with self._lock:
            bucket.pending.pop(key, None)
        flight.crashed(spec, exc)

    def _install(self, entry: Entry, bucket: Bucket, key: str) -> None:
        with self._lock:
            entry.ok = not self._overrides
            entry.bucket = bucket
            bucket.entries[key] = entry
            bucket.pending.pop(key, None)
            if bucket is self._process.only:
                self._enforce_bounds(keep=entry)

    def _build(self, spec: Spec[Any], key: str) -> Entry:
        counters = self._counters(spec)
        started = perf_counter()
        try:
            value = spec.build()
        except BaseException as exc:
            self._reraise(spec, counters, exc)
        return self._new_entry(spec, value, key, counters, perf_counter() - started)

    async def _abuild(self, spec: Spec[Any], key: str) -> Entry:
        counters = self._counters(spec)
        started = perf_counter()
        try:
            value = await spec.abuild()
        except BaseException as exc:
            self._reraise(spec, counters, exc)
        return self._new_entry(spec, value, key, counters, perf_counter() - started)

    def _counters(self, spec: Spec[Any]) -> Any:
        cache_key = spec.cache_key()
        with self._lock:
            return self._ledger.counters_for(spec, cache_key)

    def _reraise(self, spec: Spec[Any], counters: Any, exc: BaseException) -> NoReturn:
        """Raise what a failed build raises: `exc` if ours, else a BuildError from it."""
        error = self._build_failed(spec, counters, exc)
        if error is exc:
            raise exc
        raise error from exc

    def _build_failed(self, spec: Spec[Any], counters: Any, exc: BaseException) -> BaseException:
        """The error a failed build raises (counted; the cause chained)."""
        with self._lock:
            self._ledger.failed(counters)
        self._notify("error", spec.kind, counters.cache_key, 0.0)
        if isinstance(exc, BuildError | MissingDependencyError) or not isinstance(exc, Exception):
            return exc  # already ours, or KeyboardInterrupt and the like
        return BuildError.for_spec(spec, exc)

    def _new_entry(
        self, spec: Spec[Any], value: Any, key: str, counters: Any, seconds: float
    ) -> Entry:
        nbytes = _measure(spec, value)
        with self._lock:
            now = self._ledger.built(counters, seconds)
            entry = Entry(spec, value, key=key, counters=counters, seq=next(self._ledger.seq))
            entry.recency = now
            entry.nbytes = nbytes
            entry.own_refs = refs.baseline(value)
        logger.info("built %s %s in %.3fs", spec.kind, counters.cache_key[:12], seconds)
        self._notify("build", spec.kind, counters.cache_key, seconds)
        return entry

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
        if spec.scope == "thread" or key in self._process.only.entries:
            return self.get(spec)
        return await asyncio.to_thread(self.get, spec)

    async def _aget_for_loop(self, spec: Spec[Any], key: str) -> Any:
        if self._loops.by_loop:
            self._sweep_loops()
        bucket = await self._loops.abucket(self)
        while True:
            entry = bucket.entries.get(key)
            if entry is not None:
                value = entry.value
                if entry.live:
                    entry.hits += 1
                    return value
                continue
            built, flight, owner = self._lead_or_follow(bucket, key)
            if built is not None:
                continue
            if not owner:
                await flight.await_(spec)  # single-flight among this loop's coroutines
                continue
            try:
                entry = await self._abuild(spec, key)
            except BaseException as exc:
                self._abandon(bucket, key, flight, spec, exc)
                raise
            self._install(entry, bucket, key)
            flight.landed(entry)
            return entry.value

    async def _aclose_retired(self, bucket: LoopBucket, *, ending: bool) -> None:
        await loops.aclose_retired(self, bucket, ending=ending)

    def _sweep_loops(self, *, collected: bool = False) -> None:
        """Tear down, synchronously, the objects of loops closed without a shutdown."""
        loops.sweep(self, collected=collected)

    def _sweep_bucket(self, bucket: LoopBucket, *, include_closing: bool = False) -> None:
        loops.sweep_bucket(self, bucket, include_closing=include_closing)

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
            self._enforce_bounds(keep=None)
        self._close_ready()

    def _enforce_bounds(self, keep: Entry | None) -> None:
        """Retire least recently used process entries beyond the bounds (lock held).

        Recency is tracked at the resolution of builds, so that a hit stays a
        counter increment: an entry whose hit count changed since the last look
        was used after every build so far. Entries in a `use()` block, and the
        entry just built (`keep`), are never chosen (handles._registry.policy).
        """
        budgets = dict(self._max_device_bytes)
        if self._max_bytes is not None:
            budgets["cpu"] = self._max_bytes
        bounds = Bounds(self._max_entries, budgets)
        if not bounds:
            return
        entries = list(self._process.only.entries.values())
        now = self._ledger.builds
        for entry in entries:
            if entry.hits != entry.seen_hits:
                entry.seen_hits = entry.hits
                entry.recency = now
        choice = choose_victims(
            entries,
            bounds,
            size=lambda e: e.nbytes,
            in_use=self._held_outside,
            rank=lambda e: (e.recency, e.seq),
            keep=[e for e in entries if e is keep or e.leases],
        )
        for entry in choice.victims:
            logger.info("evicted %s %s", entry.spec.kind, entry.cache_key[:12])
        self._retire(choice.victims, evicted=True)
        if choice.over:
            alone = keep is not None and len(self._process.only.entries) == 1
            logger.warning(
                "live objects exceed the memory budget of %s%s",
                ", ".join(sorted(choice.over)),
                " (the one just built is larger than the whole budget)"
                if alone
                else " (the others are in use)",
            )

    def evict(self, spec: Spec[Any]) -> bool:
        """Retire this process's object for `spec` (this thread's or loop's, for those scopes).

        It is torn down now if nobody uses it, else when its last user is done.
        """
        key = spec._instance_key()
        store = self._stores[spec.scope]
        with self._lock:
            bucket = store.existing()
            entry = None if bucket is None else bucket.entries.get(key)
            if entry is None:
                return False
            self._retire([entry], evicted=True)
        logger.info("evicted %s %s", entry.spec.kind, entry.cache_key[:12])
        self._close_ready()
        return True

    def close(self) -> None:
        """Retire every object in this process and tear down those nobody uses, newest first.

        Objects in use are torn down when their last user is done (see the module
        docstring); other threads' objects are closed by their own threads, each
        loop's on its loop. A failing teardown is logged and the others still run.
        The registry stays usable: the next `get()` builds again. Stats are kept.
        """
        with self._lock:
            entries = [e for b in self._all_buckets() for e in b.entries.values()]
            self._retire(entries, final=True)
        self._sweep_loops()
        self._close_ready()

    def _retire(
        self,
        entries: list[Entry],
        *,
        final: bool = False,
        schedule: bool = True,
        evicted: bool = False,
    ) -> None:
        # Lock held. Not live first: from here on no warm path hands the value out.
        for entry in entries:
            entry.ok = entry.live = False
        touched: dict[int, Bucket] = {}
        for entry in entries:
            self._ledger.retired_entry(entry, evicted=evicted)
            if evicted:
                self._notify("evict", entry.spec.kind, entry.cache_key, 0.0)
            entry.final = entry.final or final
            bucket = entry.bucket
            if bucket is None:
                continue
            if bucket.entries.get(entry.key) is entry:
                del bucket.entries[entry.key]
            bucket.retired.append(entry)
            touched[id(bucket)] = bucket
        if schedule:
            for bucket in touched.values():
                if isinstance(bucket, LoopBucket):
                    self._loops.retired_into(self, bucket)

    def _busy(self, entry: Entry) -> bool:
        """Might someone still use this retired object? (lock held)"""
        if entry.leases:
            return True
        if not refs.EXACT:
            return not entry.final  # the conservative rule: see handles._registry.refs
        return refs.outside_references(entry.value, entry.own_refs) > 0

    def _held_outside(self, entry: Entry) -> bool:
        return refs.EXACT and refs.outside_references(entry.value, entry.own_refs) > 0

    def _close_ready(self) -> None:
        """Tear down, newest first, the retired objects nobody uses that this thread may close.

        Rounds, because one object may hold another: closing the first frees the next.
        """
        while True:
            with self._lock:
                ready: list[Entry] = []
                for store in (self._process, self._threads):
                    for bucket in store.closable_here():
                        waiting: list[Entry] = []
                        for entry in bucket.retired:
                            (waiting if self._busy(entry) else ready).append(entry)
                        bucket.retired[:] = waiting
                mine = self._loops.existing()
                if mine is not None and mine.retired:
                    self._loops.retired_into(self, mine)
            if not ready:
                return
            self._teardown(sorted(ready, key=lambda e: e.seq, reverse=True))

    def _teardown(self, entries: list[Entry]) -> None:
        for entry in entries:
            try:
                with scrubbed_for(entry.spec.__dict__):  # the log never shows a secret
                    entry.spec.teardown(entry.value)
            except Exception:
                logger.exception("closing %r failed", entry.spec)
            finally:
                # Safe: the entry is not live, and any caller that saw it live
                # already held the value (see the module docstring).
                entry.value = None

    def _thread_ended(self, store: ThreadStore, token: int, pid: int) -> None:
        with self._lock:
            bucket = store.ended(token, pid)
            if bucket is None:
                return
            self._retire(list(bucket.entries.values()), final=True)
            left, bucket.retired = bucket.retired, []
        # The thread is gone: nobody can be inside its objects any more.
        self._teardown(sorted(left, key=lambda e: e.seq, reverse=True))

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
                if retired_and_free and isinstance(entry.bucket, LoopBucket):
                    self._loops.retired_into(self, entry.bucket)
            if retired_and_free:
                self._close_ready()

    # -- introspection --------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event, kind, cache_key, seconds)` on each build, error and eviction.

        `event` is "build" (with the build's seconds), "error" (a failed build) or
        "evict" (`evict()` or a bound). Called in the thread where it happened,
        possibly under the registry's lock: a listener must be quick and must not
        call the registry (count, record, return). An exception in a listener is
        logged, never raised. Hits are not events (a warm `get()` stays a counter increment):
        read them from `stats()`. Returns a function that unsubscribes.
        """
        with self._lock:
            self._listeners = (*self._listeners, listener)

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = tuple(x for x in self._listeners if x is not listener)

        return unsubscribe

    def _notify(self, event: str, kind: str, cache_key: str, seconds: float) -> None:
        for listener in self._listeners:
            try:
                listener(event, kind, cache_key, seconds)
            except Exception:
                logger.exception("a registry listener failed on %s", event)

    def spec_of(self, value: object) -> Spec[Any] | None:
        """The spec whose live object `value` is, in any bucket of this process; None if none.

        For code that receives a live object where a spec belongs (a task argument):
        the spec travels instead and the receiver gets its own object.
        """
        with self._lock:
            for entry in self._live_entries():
                if entry.value is value:
                    return entry.spec
        return None

    def _all_buckets(self) -> list[Bucket]:
        return [b for store in self._stores.values() for b in store.buckets()]

    def _live_entries(self) -> list[Entry]:
        return [e for b in self._all_buckets() for e in b.entries.values()]

    def stats(self) -> dict[str, KeyStats]:
        """Per cache key: builds, hits, errors, build seconds and live objects.

        Keys with a live object are always here; of keys whose objects are all
        gone, the most recent 1024 are kept. `totals()` counts everything.
        """
        self._sweep_loops()
        with self._lock:
            return self._ledger.stats(self._live_entries())

    def totals(self) -> KeyStats:
        """Builds, hits, errors and build seconds of every key since the process started."""
        self._sweep_loops()
        with self._lock:
            return self._ledger.total(self._live_entries())

    def __len__(self) -> int:
        """Live objects in this process, all threads and loops included."""
        self._sweep_loops()
        with self._lock:
            return sum(len(b.entries) for b in self._all_buckets())

    def __contains__(self, spec: object) -> bool:
        instance_key = getattr(spec, "_instance_key", None)
        store = self._stores.get(getattr(spec, "scope", None) or "process")
        if instance_key is None or store is None:
            return False
        try:
            key = instance_key()
        except Exception:  # a spec whose key cannot be computed was never built
            return False
        bucket = store.existing()
        return bucket is not None and key in bucket.entries

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

    # -- fork -----------------------------------------------------------------

    def _before_fork(self) -> None:
        self._lock.acquire()

    def _after_fork_in_parent(self) -> None:
        self._lock.release()

    def _after_fork_in_child(self) -> Any:
        """Forget everything (it is the parent's); returns it, to be kept referenced forever."""
        inherited: list[Any] = []
        for store in self._stores.values():
            inherited.extend(store.inherited())
        for bucket in inherited:
            for entry in [*bucket.entries.values(), *bucket.retired]:
                entry.ok = entry.live = False
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._ledger = Ledger()
        return inherited


_registries: weakref.WeakSet[Registry] = weakref.WeakSet()


def all_registries() -> list[Registry]:
    return list(_registries)


_NO_FLIGHT = Flight()  # what _lead_or_follow gives with an entry: never waited on


def _measure(spec: Spec[Any], value: Any) -> dict[str, int]:
    """The kind's report of `value`'s memory by device; {} when unknown or failing."""
    try:
        sizes = spec.nbytes(value)
    except Exception:  # accounting must never fail a build
        logger.exception("measuring %r failed", spec)
        return {}
    return {str(d): int(n) for d, n in (sizes or {}).items() if n}


def _not_built_on_this_loop(spec: Spec[Any]) -> BuildError:
    return BuildError.about(
        spec,
        f"{spec!r} has no object in this event loop yet: its build is asynchronous, "
        "so call `await spec.aget()` (later `get()` calls in this loop then work)",
    )
