"""Async tasks without "attached to a different loop": one AsyncEngine per event loop.

    python examples/async_database.py

An AsyncEngine (like any async client) belongs to the event loop that opened its
connections. AsyncDatabaseSpec hands each running loop its own engine, built once
there by `await spec.aget()`, and disposes it on that loop when the loop ends.
Here: two `asyncio.run()` in a row, then four threads each running its own loop,
all against one SQLite file through aiosqlite (set HANDLES_TEST_POSTGRES_URL to a
postgresql+psycopg URL to use PostgreSQL instead).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from pathlib import Path

from sqlalchemy import make_url, text

import handles
from handles import AsyncDatabaseSpec


def make_spec(folder: Path) -> AsyncDatabaseSpec:
    server = os.environ.get("HANDLES_TEST_POSTGRES_URL")
    if server:
        url = make_url(server).set(drivername="postgresql+psycopg_async")
        return AsyncDatabaseSpec(url=url.render_as_string(hide_password=False))
    return AsyncDatabaseSpec(url=f"sqlite+aiosqlite:///{folder / 'async.db'}")


async def one_loop(db: AsyncDatabaseSpec, label: str) -> str:
    engine = await db.aget()  # this loop's engine: built here once, then reused
    answers = []
    for n in range(3):
        async with engine.connect() as conn:
            answers.append((await conn.execute(text("select :n"), {"n": n})).scalar_one())
    assert await db.aget() is engine
    return f"{label}: engine {id(engine):#x}, answers {answers}"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="handles-async-") as folder:
        db = make_spec(Path(folder))
        print(f"spec: {db!r}")
        print(asyncio.run(one_loop(db, "first asyncio.run ")))
        print(asyncio.run(one_loop(db, "second asyncio.run")))
        lines: list[str] = []
        threads = [
            threading.Thread(
                target=lambda i=i: lines.append(asyncio.run(one_loop(db, f"thread {i}")))
            )
            for i in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print("\n".join(sorted(lines)))
        stats = handles.registry().stats()[db.cache_key()]
        print(f"engines built: {stats.builds} (one per loop), still open: {stats.live}")
        assert (stats.builds, stats.live) == (6, 0)


if __name__ == "__main__":
    main()
