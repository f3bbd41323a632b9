"""The per-process registry: builds each spec's live object once and hands it out.

Scopes
    process: one object per process, shared by its threads, built single-flight.
    thread:  one object per thread (sqlite3 connections and other thread-bound
             objects); closed when its thread ends.

The warm path lives in `Spec.get()`: a spec instance remembers its process-scoped
entry in a slot, so a hit is two attribute reads and a counter increment, with no
lock and no `os.getpid()`. An entry's `ok` flag is cleared when it is closed,
evicted, reset after fork, or shadowed by an override, which sends `get()` here.

Fork: `os.register_at_fork` gives the child a fresh, empty registry. The parent's
objects are kept referenced (never closed, never used) in the child, so their
finalizers cannot disturb the parent's sockets or files.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

from handles.exceptions import BuildError, HandlesError, MissingDependencyError

if TYPE_CHECKING:
    from handles._spec import Spec

__all__ = ["KeyStats", "Registry", "override", "registry"]

logger = logging.getLogger("handles")
T = TypeVar("T")


@dataclass(frozen=True)
class KeyStats:
    """What the registry did for one cache key (all placements and threads together)."""

    kind: str
    builds: int
    hits: int
    errors: int
    build_seconds: float
    live: int


class _Counters:
    __slots__ = ("build_seconds", "builds", "errors", "kind", "retired_hits")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.builds = 0
        self.errors = 0
        self.build_seconds = 0.0
        self.retired_hits = 0


class _Entry:
    """One live object. `hits` is bumped without a lock: under the GIL a lost
    increment needs a thread switch inside `+=`, which CPython does not do there."""

    __slots__ = ("cache_key", "counters", "hits", "ok", "seen_hits", "seq", "spec", "value")

    def __init__(self, spec: Spec[Any], value: Any, cache_key: str, counters: _Counters, seq: int):
        self.spec = spec
        self.value = value
        self.cache_key = cache_key
        self.counters = counters
        self.seq = seq
        self.hits = 0
        self.seen_hits = 0
        self.ok = True


class _NoEntry:
    """What a spec remembers before it has a process-scoped entry (or when thread-scoped)."""

    __slots__ = ()
    ok = False


NO_ENTRY: Any = _NoEntry()


class _Pending:
    """A build in flight: waiters block on it instead of building again."""

    __slots__ = ("done", "entry", "error", "thread")

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.done = threading.Event()
        self.entry: _Entry | None = None
        self.error: BuildError | None = None


class _ThreadMarker:
    """Lives in a thread's local storage; its finalizer closes the thread's objects."""

    __slots__ = ("__weakref__", "entries")

    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}


class Registry:
    """This process's live objects. Get it with `handles.registry()`."""

    def __init__(self, max_entries: int | None = None) -> None:
        self._reset()
        self._max_entries = max_entries

    def _reset(self) -> None:
        self._lock = threading.RLock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # process scope, oldest first
        self._pending: dict[str, _Pending] = {}
        self._counters: dict[str, _Counters] = {}
        self._overrides: dict[str, list[Any]] = {}
        self._local = threading.local()
        self._threads: dict[int, tuple[dict[str, _Entry], weakref.finalize[Any, Any]]] = {}
        self._seq = itertools.count()

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
        entry = self._entries.get(key)
        if entry is None:
            entry = self._build_once(spec, key)
        else:
            entry.hits += 1
        return entry.value, entry

    def _get_for_thread(self, spec: Spec[Any], key: str) -> tuple[Any, _Entry]:
        entries = self._thread_entries()
        entry = entries.get(key)
        if entry is not None:
            entry.hits += 1
            return entry.value, entry
        # Only this thread can build this thread's object: no single-flight needed.
        entry = self._build(spec, key)
        with self._lock:
            entry.ok = not self._overrides
            entries[key] = entry
        return entry.value, entry

    def _thread_entries(self) -> dict[str, _Entry]:
        try:
            return self._local.marker.entries  # type: ignore[no-any-return]
        except AttributeError:
            pass
        marker = _ThreadMarker()
        token = next(self._seq)
        finalizer = weakref.finalize(marker, self._thread_ended, token)
        finalizer.atexit = False  # close() handles interpreter exit, newest first
        with self._lock:
            self._threads[token] = (marker.entries, finalizer)
        self._local.marker = marker
        return marker.entries

    def _thread_ended(self, token: int) -> None:
        with self._lock:
            record = self._threads.pop(token, None)
        if record is None:
            return
        entries = list(record[0].values())
        record[0].clear()
        self._retire(entries)
        self._teardown(entries)

    def _build_once(self, spec: Spec[Any], key: str) -> _Entry:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.hits += 1
                return entry
            pending = self._pending.get(key)
            owner = pending is None
            if pending is None:
                pending = self._pending[key] = _Pending()
        if not owner:
            return self._wait(spec, pending)
        evicted: list[_Entry] = []
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
            evicted = self._evict_over_limit()
        pending.entry = entry
        pending.done.set()
        self._teardown(evicted)
        return entry

    def _wait(self, spec: Spec[Any], pending: _Pending) -> _Entry:
        if pending.thread == threading.get_ident():
            raise BuildError(
                f"{spec!r} asked for itself while being built (a build that calls its own get())",
                kind=spec.kind,
                spec=spec,
            )
        pending.done.wait()
        if pending.error is not None:
            raise pending.error.again()
        assert pending.entry is not None
        pending.entry.hits += 1
        return pending.entry

    def _build(self, spec: Spec[Any], key: str) -> _Entry:
        cache_key = spec.cache_key()
        counters = self._counters_for(spec, cache_key)
        started = perf_counter()
        try:
            value = spec.build()
        except (BuildError, MissingDependencyError):
            self._count_error(counters)
            raise
        except Exception as exc:
            self._count_error(counters)
            raise BuildError.for_spec(spec, exc) from exc
        except BaseException:
            self._count_error(counters)
            raise
        seconds = perf_counter() - started
        with self._lock:
            counters.builds += 1
            counters.build_seconds += seconds
            seq = next(self._seq)
        logger.info("built %s %s in %.3fs", spec.kind, cache_key[:12], seconds)
        return _Entry(spec, value, cache_key, counters, seq)

    def _counters_for(self, spec: Spec[Any], cache_key: str) -> _Counters:
        with self._lock:
            counters = self._counters.get(cache_key)
            if counters is None:
                counters = self._counters[cache_key] = _Counters(spec.kind)
            return counters

    def _count_error(self, counters: _Counters) -> None:
        with self._lock:
            counters.errors += 1

    # -- bounding and closing -------------------------------------------------

    @property
    def max_entries(self) -> int | None:
        """Bound on process-scoped entries; the least recently used are closed beyond it."""
        return self._max_entries

    @max_entries.setter
    def max_entries(self, value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError("max_entries must be at least 1, or None for no bound")
        with self._lock:
            self._max_entries = value
            evicted = self._evict_over_limit()
        self._teardown(evicted)

    def _evict_over_limit(self) -> list[_Entry]:
        # Second-chance clock over build order: an entry hit since the last sweep
        # moves to the back. This approximates LRU while keeping hits lock-free.
        evicted: list[_Entry] = []
        if self._max_entries is None:
            return evicted
        while len(self._entries) > self._max_entries:
            key, entry = next(iter(self._entries.items()))
            if entry.hits != entry.seen_hits and len(self._entries) > 1:
                entry.seen_hits = entry.hits
                self._entries.move_to_end(key)
                continue
            del self._entries[key]
            evicted.append(entry)
            logger.info("evicted %s %s", entry.spec.kind, entry.cache_key[:12])
        self._retire(evicted)
        return evicted

    def evict(self, spec: Spec[Any]) -> bool:
        """Close this process's object for `spec` now (and this thread's, for thread scope)."""
        key = spec._instance_key()
        with self._lock:
            if spec.scope == "thread":
                entry = self._thread_entries().pop(key, None)
            else:
                entry = self._entries.pop(key, None)
        if entry is None:
            return False
        logger.info("evicted %s %s", entry.spec.kind, entry.cache_key[:12])
        self._retire([entry])
        self._teardown([entry])
        return True

    def close(self) -> None:
        """Tear down every object built in this process, newest first.

        A failing teardown is logged and the others still run. The registry stays
        usable: the next `get()` builds again. Stats are kept.
        """
        with self._lock:
            entries = self._live_entries()
            self._entries.clear()
            for thread_entries, _ in self._threads.values():
                thread_entries.clear()
            self._retire(entries)
        self._teardown(sorted(entries, key=lambda e: e.seq, reverse=True))

    def _retire(self, entries: list[_Entry]) -> None:
        for entry in entries:
            entry.ok = False
            entry.counters.retired_hits += entry.hits
            entry.hits = entry.seen_hits = 0

    def _teardown(self, entries: list[_Entry]) -> None:
        for entry in entries:
            try:
                entry.spec.teardown(entry.value)
            except Exception:
                logger.exception("closing %r failed", entry.spec)
            finally:
                entry.value = None

    # -- introspection --------------------------------------------------------

    def stats(self) -> dict[str, KeyStats]:
        """Per cache key: builds, hits, errors, build seconds and live objects."""
        with self._lock:
            live = self._live_entries()
            hits = {key: c.retired_hits for key, c in self._counters.items()}
            count = dict.fromkeys(self._counters, 0)
            for entry in live:
                hits[entry.cache_key] += entry.hits
                count[entry.cache_key] += 1
            return {
                key: KeyStats(c.kind, c.builds, hits[key], c.errors, c.build_seconds, count[key])
                for key, c in self._counters.items()
            }

    def __len__(self) -> int:
        """Live objects in this process, all threads included."""
        with self._lock:
            return len(self._entries) + sum(len(e) for e, _ in self._threads.values())

    def __contains__(self, spec: object) -> bool:
        instance_key = getattr(spec, "_instance_key", None)
        if instance_key is None:
            return False
        try:
            key = instance_key()
        except HandlesError:  # a spec whose key cannot be computed was never built
            return False
        if getattr(spec, "scope", None) == "thread":
            return key in self._thread_entries()
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
        for thread_entries, _ in self._threads.values():
            entries.extend(thread_entries.values())
        return entries

    # -- fork -----------------------------------------------------------------

    def _before_fork(self) -> None:
        self._lock.acquire()

    def _after_fork_in_parent(self) -> None:
        self._lock.release()

    def _after_fork_in_child(self) -> None:
        inherited = self._live_entries()
        for _, finalizer in self._threads.values():
            finalizer.detach()  # the parent's threads' objects are not ours to close
        for entry in inherited:
            entry.ok = False
        overrides = self._overrides
        self._reset()
        self._overrides = overrides
        _fork_orphans.extend(inherited)


# Objects inherited from the parent across fork: referenced forever, so no
# finalizer ever runs them down in the child.
_fork_orphans: list[_Entry] = []

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
    except HandlesError:  # pragma: no cover - close() logs teardown errors itself
        logger.exception("closing the registry at exit failed")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_registry._before_fork,
        after_in_parent=_registry._after_fork_in_parent,
        after_in_child=_registry._after_fork_in_child,
    )
atexit.register(_close_at_exit)
