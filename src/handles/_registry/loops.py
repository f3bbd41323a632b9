"""The loop scope: a bucket per event loop, torn down on that loop, whichever way it ends.

Async clients (SQLAlchemy's AsyncEngine, aiohttp sessions) belong to the loop
that made them, so their teardown (`ateardown()`) must run on that loop. A loop
can end in three ways, and each tears down every object of the loop once:

1. Shut down properly: `asyncio.run()` returning, or any loop closed after
   `shutdown_asyncgens()`. A *keeper*, an async generator started on the loop
   when its bucket is made, is closed by that shutdown while the loop still
   runs: its `finally` awaits every object's `ateardown()` on the loop.
2. Closed bluntly (`loop.close()` with no `shutdown_asyncgens()`). No coroutine
   can run any more; the registry notices at its next call (every call but a
   warm `get()` looks), or when the loop is garbage collected, and runs each
   object's synchronous `teardown()` instead (for an AsyncEngine, `dispose()`
   without awaiting, so the pool's connections are dropped and the server ends
   their sessions). The registry holds the loop only weakly and the keeper is
   kept on the loop itself, so a loop nobody uses can be collected.
3. Still running: `evict()`, `close()` and the end of a `use()` block schedule a
   cleanup task on the loop, which tears down, one at a time, the retired objects
   nobody uses. A cleanup cut short (the loop ending under it, which cancels its
   task) puts back the object it was closing and leaves the rest in place, and
   the keeper (1) or the sweep (2) finishes the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from handles._registry.buckets import Bucket, Store
from handles._secrets import scrubbed_for

if TYPE_CHECKING:
    from handles._registry.core import Registry
    from handles._registry.entries import Entry
    from handles._spec import Spec

__all__ = ["LoopBucket", "LoopStore", "running_loop"]

logger = logging.getLogger("handles")

_KEEPERS = "_handles_keepers"  # the attribute on a loop holding its keepers


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class LoopBucket(Bucket):
    """One event loop's objects."""

    __slots__ = ("cleaning", "closing", "ended", "keeper", "loop", "started")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_collected: Any) -> None:
        super().__init__()
        self.loop = weakref.ref(loop, on_collected)
        self.keeper: Any = None  # held here only where the loop takes no attributes
        self.started: asyncio.Future[None] | None = None  # set while the keeper starts
        self.closing: list[Entry] = []  # being torn down by a coroutine right now
        self.cleaning = False  # a cleanup task is scheduled or running
        self.ended = False  # the keeper has finished, or the loop is gone


class LoopStore(Store):
    scope = "loop"
    asynchronous = True

    def __init__(self) -> None:
        self.by_loop: dict[int, LoopBucket] = {}

    # -- finding the caller's bucket --------------------------------------------

    def bucket(self, reg: Registry, spec: Spec[Any]) -> Bucket:
        from handles.exceptions import BuildError  # noqa: PLC0415  (cycle-free at run time)

        bucket = self.existing()
        if bucket is None:
            raise BuildError.about(
                spec,
                f"{spec!r} is bound to an event loop: call `await spec.aget()` inside a "
                "coroutine (no event loop runs in this thread)"
                if running_loop() is None
                else f"{spec!r} has no object in this event loop yet: its build is "
                "asynchronous, so call `await spec.aget()` (later `get()` calls in this "
                "loop then work)",
            )
        return bucket

    def existing(self) -> LoopBucket | None:
        loop = running_loop()
        if loop is None:
            return None
        bucket = self.by_loop.get(id(loop))
        if bucket is None or bucket.loop() is not loop:
            return None
        return bucket

    async def abucket(self, reg: Registry) -> LoopBucket:
        """The running loop's bucket, made (and its keeper started) if needed."""
        loop = asyncio.get_running_loop()
        with reg._lock:
            bucket = self.by_loop.get(id(loop))
            if bucket is not None and bucket.loop() is not loop:
                bucket = None  # a dead loop's id, reused: swept at the next call
            made = bucket is None
            if bucket is None:
                bucket = LoopBucket(loop, lambda _ref, reg=reg: reg._sweep_loops(collected=True))
                bucket.started = loop.create_future()
                self.by_loop[id(loop)] = bucket
        if made:
            keeper = _keeper(reg, self, bucket)
            try:
                holders = loop.__dict__.setdefault(_KEEPERS, {})
                holders[id(bucket)] = keeper
            except AttributeError:  # a loop without instance attributes (uvloop)
                bucket.keeper = keeper
            await keeper.__anext__()  # started here, so the loop's shutdown closes it
            started, bucket.started = bucket.started, None  # a future holds its loop
            assert started is not None
            started.set_result(None)
        elif bucket.started is not None:  # another coroutine is starting the keeper
            await asyncio.shield(bucket.started)
        return bucket

    def buckets(self) -> list[Bucket]:
        return list(self.by_loop.values())

    def closable_here(self) -> list[Bucket]:
        return []  # only coroutines on the loop itself (or the sweep) tear loop objects down

    # -- teardown -----------------------------------------------------------------

    def retired_into(self, reg: Registry, bucket: Bucket) -> None:
        # Lock held. Async teardown must run on the object's own loop.
        assert isinstance(bucket, LoopBucket)
        if bucket.ended:
            return  # the sweep tears it down (see Registry._sweep_loops)
        if bucket.cleaning or not bucket.retired:
            return
        loop = bucket.loop()
        if loop is None or loop.is_closed() or not loop.is_running():
            return  # its shutdown, or the sweep after a blunt close, takes care of it
        bucket.cleaning = True
        try:
            if loop is running_loop():
                loop.create_task(reg._aclose_retired(bucket, ending=False))
            else:
                loop.call_soon_threadsafe(_start_cleanup, reg, bucket)
        except RuntimeError:  # closed in between: the sweep takes care of it
            bucket.cleaning = False

    def dead(self) -> list[LoopBucket]:
        """Buckets whose loop is closed or collected, forgotten (lock held)."""
        gone = []
        for key, bucket in list(self.by_loop.items()):
            loop = bucket.loop()
            if loop is None or loop.is_closed():
                del self.by_loop[key]
                bucket.ended = True
                if loop is not None:
                    holders = loop.__dict__.get(_KEEPERS, {}) if hasattr(loop, "__dict__") else {}
                    holders.pop(id(bucket), None)  # the keeper: never to run now
                bucket.keeper = None
                gone.append(bucket)
        return gone

    def inherited(self) -> list[Any]:
        kept: list[Any] = list(self.by_loop.values())
        self.by_loop = {}
        return kept


async def aclose_retired(reg: Registry, bucket: LoopBucket, *, ending: bool) -> None:
    """Tear down a loop's retired objects on that loop, one at a time, newest first.

    `ending`: the loop shuts down, so every object goes, used or not. Each
    object is taken off the retired list only while it is being closed, so a
    cleanup cut short leaves the rest for the next one.
    """
    try:
        while True:
            with reg._lock:
                if ending and bucket.entries:
                    reg._retire(list(bucket.entries.values()), final=True, schedule=False)
                ready = [e for e in bucket.retired if ending or not reg._busy(e)]
                if not ready:
                    return
                entry = max(ready, key=lambda e: e.seq)
                bucket.retired.remove(entry)
                bucket.closing.append(entry)
            try:
                with scrubbed_for(entry.spec.__dict__):  # the log never shows a secret
                    await entry.spec.ateardown(entry.value)
            except asyncio.CancelledError:
                with reg._lock:
                    bucket.closing.remove(entry)
                    bucket.retired.append(entry)  # for the keeper or the sweep
                raise
            except Exception:
                logger.exception("closing %r failed", entry.spec)
            with reg._lock:
                if entry in bucket.closing:
                    bucket.closing.remove(entry)
            entry.value = None
    finally:
        if not ending:
            with reg._lock:
                bucket.cleaning = False


def sweep(reg: Registry, *, collected: bool = False) -> None:
    """Tear down, synchronously, the objects of loops closed without a shutdown.

    `collected`: called from the weak reference's callback as the loop is
    garbage collected, where this thread may be inside the registry already:
    the work moves to a short-lived thread.
    """
    if collected:
        if reg._pid == os.getpid():
            # At interpreter shutdown no thread starts: atexit's close() sweeps.
            with contextlib.suppress(RuntimeError):
                threading.Thread(target=reg._sweep_loops, daemon=True).start()
        return
    with reg._lock:
        dead = reg._loops.dead()
    for bucket in dead:
        sweep_bucket(reg, bucket, include_closing=True)


def sweep_bucket(reg: Registry, bucket: LoopBucket, *, include_closing: bool = False) -> None:
    """Synchronous teardown of everything left in a loop's bucket (its loop has ended)."""
    with reg._lock:
        reg._retire(list(bucket.entries.values()), final=True, schedule=False)
        left = bucket.retired + (bucket.closing if include_closing else [])
        bucket.retired = []
        if include_closing:
            bucket.closing = []
    if left:
        logger.info(
            "an event loop ended without shutting down its objects: closing %d synchronously",
            len(left),
        )
    reg._teardown(sorted(left, key=lambda e: e.seq, reverse=True))


def _start_cleanup(reg: Registry, bucket: LoopBucket) -> None:
    asyncio.get_running_loop().create_task(reg._aclose_retired(bucket, ending=False))


async def _keeper(reg: Registry, store: LoopStore, bucket: LoopBucket) -> Any:
    # Suspended for the loop's whole life; closed by the loop's shutdown_asyncgens().
    try:
        yield
    finally:
        with reg._lock:
            loop = bucket.loop()
            if loop is not None and store.by_loop.get(id(loop)) is bucket:
                del store.by_loop[id(loop)]
        try:
            await reg._aclose_retired(bucket, ending=True)
        finally:
            with reg._lock:
                bucket.ended = True
            # Whatever a racing close() retired after the last await: synchronously.
            reg._sweep_bucket(bucket)
            if loop is not None:
                holders = getattr(loop, "__dict__", {}).get(_KEEPERS, {})
                holders.pop(id(bucket), None)
