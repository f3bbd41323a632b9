"""Async tasks for the workers' shared event loops; imported by name in worker processes."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from prefect import task
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from sqlalchemy import text

import handles
from handles import AsyncDatabaseSpec, Identity, Spec
from handles._spec import Scope


class LoopMarkerSpec(Spec[dict[str, int]]):
    """A loop-scoped object that writes a file, named after its loop, when torn down on it."""

    kind: Literal["test-prefect-loop-marker"] = "test-prefect-loop-marker"
    scope: ClassVar[Scope] = "loop"
    folder: Annotated[str, Identity]

    async def abuild(self) -> dict[str, int]:
        return where()

    async def ateardown(self, value: dict[str, int]) -> None:
        assert where() == value  # on its own loop, in its own thread
        name = f"{value['pid']}-{value['thread']}-{value['loop']}"
        Path(self.folder, name).write_text("closed", encoding="utf-8")


def where() -> dict[str, int]:
    return {
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        "loop": id(asyncio.get_running_loop()),
    }


@task
async def probe(db: AsyncDatabaseSpec, marker: LoopMarkerSpec, n: int) -> dict[str, Any]:
    """One query; where it ran, on which engine and server session, and the task run's context."""
    engine = await db.aget()
    built = await marker.aget()
    async with engine.connect() as conn:
        backend = (await conn.execute(text("select pg_backend_pid()"))).scalar_one()
    get_run_logger().info("probe %d on loop %d", n, built["loop"])
    context = TaskRunContext.get()
    assert context is not None
    return {
        **where(),
        "n": n,
        "engine": id(engine),
        "backend": int(backend),
        "builds": handles.registry().stats()[db.cache_key()].builds,
        "marker_loop": built["loop"],
        "task_run": str(context.task_run.id),
        "tags": sorted(context.task_run.tags),
    }


@task
async def sleep_in_database(db: AsyncDatabaseSpec) -> dict[str, int]:
    """Holds a pooled connection in pg_sleep(5) until Prefect's 1 s task timeout cancels it.

    (A cancelled client may leave the server session sleeping: 5 s, not longer.)
    """
    engine = await db.aget()
    async with engine.connect() as conn:
        await conn.execute(text("select pg_sleep(5)"))
    return where()


@task
async def cancel_a_query(db: AsyncDatabaseSpec) -> dict[str, Any]:
    """A query cancelled by asyncio while the server runs it; the task itself goes on."""
    engine = await db.aget()
    async with engine.connect() as conn:
        query = asyncio.ensure_future(conn.execute(text("select pg_sleep(5)")))
        await asyncio.sleep(0.3)
        query.cancel()
        try:
            await query
        except asyncio.CancelledError:
            cancelled = True
        else:
            cancelled = False
    return {**where(), "cancelled": cancelled}


@task
async def cancelled_run() -> None:
    """A task run whose own asyncio task is cancelled: it ends as Prefect ends such runs."""
    current = asyncio.current_task()
    assert current is not None
    current.cancel()
    await asyncio.sleep(1)


@task(retries=2, retry_delay_seconds=0)
async def flaky(db: AsyncDatabaseSpec) -> dict[str, Any]:
    """Fails on its first try, on the shared loop; its retry runs there too."""
    context = TaskRunContext.get()
    assert context is not None
    engine = await db.aget()
    async with engine.connect() as conn:
        await conn.execute(text("select 1"))
    if context.task_run.run_count < 2:
        raise RuntimeError("first try fails")
    return {**where(), "run_count": context.task_run.run_count, "engine": id(engine)}
