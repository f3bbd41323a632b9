"""Async Prefect tasks using a loop-scoped spec; imported by name in worker processes."""

from __future__ import annotations

import asyncio
import os

from prefect import task
from sqlalchemy import text

import handles
from handles import AsyncDatabaseSpec


@task
async def count_rows(db: AsyncDatabaseSpec, n: int) -> dict[str, int]:
    engine = await db.aget()
    async with engine.connect() as conn:
        value = (await conn.execute(text("select :n"), {"n": n})).scalar_one()
    # The engine is this loop's: a different loop's engine would fail here.
    assert engine is await db.aget()
    loop = asyncio.get_running_loop()
    return {"n": int(value), "pid": os.getpid(), "loop": id(loop), "live": len(handles.registry())}
