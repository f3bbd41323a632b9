"""Where live objects live: one bucket per process, per thread or per event loop.

A *store* is one scope's buckets (one class per scope, chosen once per spec class
by its `scope`): it finds the caller's bucket and says who may tear down the
bucket's retired objects. Everything else (single-flight builds, retiring,
teardown, stats) is the registry's, the same code for every scope.

- process: one bucket, any thread tears its retired objects down;
- thread: a bucket per thread, torn down only by that thread (a SQLite statement
  runs without the GIL, so a connection is never closed from another thread),
  all of it when the thread ends;
- loop: a bucket per event loop (handles._registry.loops).
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from handles import _fork

if TYPE_CHECKING:
    from handles._registry.core import Registry
    from handles._registry.entries import Entry
    from handles._registry.flight import Flight
    from handles._spec import Spec

__all__ = ["Bucket", "ProcessStore", "Store", "ThreadStore"]


class Bucket:
    """Live objects of one place, builds in flight there, and objects retired but not torn down."""

    __slots__ = ("__weakref__", "entries", "pending", "retired")

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.pending: dict[str, Flight] = {}
        self.retired: list[Entry] = []


class Store:
    """One scope's buckets. Methods marked "lock held" run under the registry's lock."""

    scope = ""
    asynchronous = False
    """Built on the running event loop with `abuild()` (and torn down with `ateardown()`)."""

    def bucket(self, reg: Registry, spec: Spec[Any]) -> Bucket:
        """The caller's bucket, made if needed."""
        raise NotImplementedError

    def existing(self) -> Bucket | None:
        """The caller's bucket if it has one (never makes one)."""
        raise NotImplementedError

    def buckets(self) -> list[Bucket]:
        """Every bucket (lock held)."""
        raise NotImplementedError

    def closable_here(self) -> list[Bucket]:
        """Buckets whose retired objects this thread may tear down synchronously (lock held)."""
        raise NotImplementedError

    def retired_into(self, reg: Registry, bucket: Bucket) -> None:
        """Entries were just retired into `bucket` (lock held): arrange their teardown."""

    def inherited(self) -> list[Any]:
        """After fork, in the child: everything to keep referenced forever; then forget it."""
        raise NotImplementedError


class ProcessStore(Store):
    scope = "process"

    def __init__(self) -> None:
        self.only = Bucket()

    def bucket(self, reg: Registry, spec: Spec[Any]) -> Bucket:
        return self.only

    def existing(self) -> Bucket:
        return self.only

    def buckets(self) -> list[Bucket]:
        return [self.only]

    def closable_here(self) -> list[Bucket]:
        return [self.only]

    def inherited(self) -> list[Any]:
        kept = [self.only]
        self.only = Bucket()
        return kept


class _ThreadMarker:
    """Lives in a thread's local storage; its finalizer closes the thread's objects."""

    __slots__ = ("__weakref__", "bucket")

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket


class ThreadStore(Store):
    scope = "thread"

    def __init__(self) -> None:
        self.local = threading.local()
        self.by_token: dict[int, Bucket] = {}
        self.tokens = itertools.count()
        self.finalizers: list[weakref.finalize[Any, Any]] = []

    def bucket(self, reg: Registry, spec: Spec[Any]) -> Bucket:
        try:
            return self.local.marker.bucket  # type: ignore[no-any-return]
        except AttributeError:
            pass
        bucket = Bucket()
        marker = _ThreadMarker(bucket)
        token = next(self.tokens)
        # Runs when the thread's local storage dies: at thread end, in that thread,
        # or in a forked child, where it must do nothing (see handles._fork).
        finalizer = weakref.finalize(marker, reg._thread_ended, self, token, os.getpid())
        finalizer.atexit = False  # close() handles interpreter exit
        with reg._lock:
            self.by_token[token] = bucket
            self.finalizers.append(finalizer)
            self.finalizers = [f for f in self.finalizers if f.alive]
        self.local.marker = marker
        return bucket

    def existing(self) -> Bucket | None:
        marker = getattr(self.local, "marker", None)
        return None if marker is None else marker.bucket

    def buckets(self) -> list[Bucket]:
        return list(self.by_token.values())

    def closable_here(self) -> list[Bucket]:
        mine = self.existing()
        return [] if mine is None else [mine]

    def ended(self, token: int, pid: int) -> Bucket | None:
        """The bucket of a thread that has ended, forgotten (lock held); None in a forked child."""
        if not _fork.created_here(pid):
            return None
        return self.by_token.pop(token, None)

    def inherited(self) -> list[Any]:
        kept: list[Any] = list(self.by_token.values())
        for finalizer in self.finalizers:
            finalizer.detach()
        self.by_token = {}
        self.finalizers = []
        self.local = threading.local()
        return kept
