"""WorkerLoopPool: the thread pool behind a bound ThreadPoolTaskRunner, without Prefect's server.

Work is handed over as Prefect hands it: `submit(context.run, asyncio.run, coro)`.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import pytest

pytest.importorskip("prefect")
from handles import Identity, Spec
from handles._spec import Scope
from handles.integrations._prefect_loop import WorkerLoopPool

REQUEST = contextvars.ContextVar("REQUEST", default="none")


class ClosedOnLoop(Spec[int]):
    """A loop-scoped object; its ateardown, on its loop, writes a file named after that loop."""

    kind: Literal["test-worker-loop"] = "test-worker-loop"
    scope: ClassVar[Scope] = "loop"
    folder: Annotated[str, Identity]

    async def abuild(self) -> int:
        return id(asyncio.get_running_loop())

    async def ateardown(self, value: int) -> None:
        assert value == id(asyncio.get_running_loop())
        Path(self.folder, str(value)).touch()


async def report(spec: ClosedOnLoop, hold: threading.Barrier | None = None) -> dict[str, Any]:
    if hold is not None:
        hold.wait(timeout=10)  # keeps this thread busy until every thread has one
    seen = REQUEST.get()
    REQUEST.set("changed inside")  # a task's context is a copy: never leaks to the next
    return {
        "thread": threading.get_ident(),
        "loop": id(asyncio.get_running_loop()),
        "object": await spec.aget(),
        "request": seen,
    }


def submit_like_prefect(pool: WorkerLoopPool, coro: Any, request: str) -> Any:
    token = REQUEST.set(request)
    try:
        context = contextvars.copy_context()
    finally:
        REQUEST.reset(token)
    return pool.submit(context.run, asyncio.run, coro)


def test_each_thread_runs_its_coroutines_on_one_loop_closed_when_the_pool_shuts_down(tmp_path):
    spec = ClosedOnLoop(folder=str(tmp_path))
    pool = WorkerLoopPool(3, specs=(spec,))
    hold = threading.Barrier(3)
    first = [submit_like_prefect(pool, report(spec, hold), f"r{i}") for i in range(3)]
    rest = [submit_like_prefect(pool, report(spec), f"r{i}") for i in range(3, 12)]
    results = [f.result(timeout=30) for f in first + rest]
    assert pool.last_submit_shared()
    sync = pool.submit(lambda x: (x, threading.get_ident(), _running()), 7).result(timeout=30)
    assert not pool.last_submit_shared()
    pool.shutdown(wait=True)

    loops = {r["thread"]: r["loop"] for r in results}
    assert len(loops) == 3  # three threads, each with one loop for all its coroutines
    assert all(loops[r["thread"]] == r["loop"] == r["object"] for r in results)
    assert [r["request"] for r in results] == [f"r{i}" for i in range(12)]
    assert sync[0] == 7
    assert sync[1] in loops
    assert sync[2] is False  # sync work runs as given: no loop runs around it
    # Each thread closed its loop itself, the object's ateardown ran there.
    assert sorted(int(p.name) for p in tmp_path.iterdir()) == sorted(loops.values())


def _running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def test_the_submitters_context_reaches_the_coroutine():
    async def read() -> str:
        return REQUEST.get()

    pool = WorkerLoopPool(1)
    try:
        assert submit_like_prefect(pool, read(), "flow-run-7").result(timeout=30) == "flow-run-7"
        assert submit_like_prefect(pool, read(), "flow-run-8").result(timeout=30) == "flow-run-8"
    finally:
        pool.shutdown(wait=True)


def test_a_failing_or_cancelled_coroutine_leaves_the_loop_usable():
    async def fail() -> None:
        raise ValueError("boom")

    async def cancelled() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(1)

    async def where() -> int:
        return id(asyncio.get_running_loop())

    pool = WorkerLoopPool(1)
    try:
        before = submit_like_prefect(pool, where(), "").result(timeout=30)
        with pytest.raises(ValueError, match="boom"):
            submit_like_prefect(pool, fail(), "").result(timeout=30)
        with pytest.raises(asyncio.CancelledError):
            submit_like_prefect(pool, cancelled(), "").result(timeout=30)
        assert submit_like_prefect(pool, where(), "").result(timeout=30) == before
    finally:
        pool.shutdown(wait=True)


def test_shutdown_cancels_what_has_not_started_and_refuses_more():
    started, release = threading.Event(), threading.Event()

    def busy() -> str:
        started.set()
        release.wait(timeout=30)
        return "done"

    pool = WorkerLoopPool(1)
    running = pool.submit(busy)
    assert started.wait(timeout=30)
    queued = pool.submit(busy)
    pool.shutdown(wait=False, cancel_futures=True)  # while the first still runs
    release.set()
    pool.shutdown(wait=True)
    assert running.result(timeout=30) == "done"
    assert queued.cancelled()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(busy)
