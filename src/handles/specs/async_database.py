"""AsyncDatabaseSpec: a SQLAlchemy AsyncEngine per event loop.

    db = AsyncDatabaseSpec(url="postgresql+psycopg_async://app@db/sales", password="env:PGPASSWORD")

    async def count() -> int:
        engine = await db.aget()            # this event loop's AsyncEngine, built once per loop
        async with engine.connect() as conn:
            return (await conn.execute(text("select count(*) from t"))).scalar_one()

An AsyncEngine's connections belong to the event loop that opened them: reused
from another loop they fail with "Future attached to a different loop" or "Event
loop is closed". So this kind is loop-scoped: one engine per (process, running
event loop), built on that loop by `aget()`, and disposed on that loop when it
shuts down (`asyncio.run()` returning, or any loop that calls
`shutdown_asyncgens()` before closing). Within a loop, `get()` returns the same
engine once `aget()` has built it.

Fields, validation, secret references, masking, the connection budget and fork
handling are shared with DatabaseSpec (see handles.specs._sqlalchemy); the URL
names an asyncio driver (`postgresql+asyncpg`, `sqlite+aiosqlite`) or one with an asyncio form
(`postgresql+psycopg`), exactly as SQLAlchemy's `create_async_engine` takes it.
The budget counts per loop: `workers` should count event loops, not processes,
when one process runs several loops at once.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from handles._optional import require
from handles._secrets import scrubbed
from handles._spec import Scope
from handles.exceptions import BuildError
from handles.specs._sqlalchemy import _EngineSpec, guard_against_fork

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["AsyncDatabaseSpec"]


# Fields, validation, masking and the budget are _EngineSpec's, shared with
# DatabaseSpec (handles.specs._sqlalchemy); this kind builds an AsyncEngine per loop.
class AsyncDatabaseSpec(_EngineSpec["AsyncEngine"]):
    """A database reached through SQLAlchemy's asyncio API: `await aget()` is this loop's engine."""

    kind: Literal["async-database"] = "async-database"
    scope: ClassVar[Scope] = "loop"
    _asyncio: ClassVar[bool] = True

    def build(self) -> AsyncEngine:
        raise BuildError.about(self, f"{self!r} builds on an event loop: call `await spec.aget()`")

    async def abuild(self) -> AsyncEngine:
        label = type(self).__name__
        sa = require("sqlalchemy", "sql", kind=label)
        require("greenlet", "sql", kind=label)  # SQLAlchemy's asyncio layer needs it
        from sqlalchemy.ext.asyncio import create_async_engine  # noqa: PLC0415  (sqlalchemy)

        url = self._connect_url(sa)
        try:
            engine = create_async_engine(url, **self._engine_options())
        except ImportError as exc:
            raise self._missing_driver(exc) from exc
        guard_against_fork(engine.sync_engine)
        if self.check_connection:
            # The driver's message never shows the password it was given (scrubbed).
            secret = {"password": url.password} if self.password and url.password else {}
            try:
                with scrubbed({"password": str(self.password)}, secret):
                    await self._acheck(engine, sa)
            except BaseException:
                await engine.dispose()  # nothing half-built stays open
                raise
        return engine

    async def ateardown(self, value: AsyncEngine) -> None:
        await value.dispose()

    def teardown(self, value: AsyncEngine) -> None:
        # Only reached where no loop can run the async teardown (the loop is gone):
        # drop the pool without awaiting; the server ends the sessions.
        value.sync_engine.dispose(close=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A connection from this loop's engine inside a transaction (`engine.begin()`)."""
        engine = await self.aget()
        async with engine.begin() as conn:
            yield conn

    async def _acheck(self, engine: AsyncEngine, sa: Any) -> None:
        try:
            async with engine.connect() as conn:
                if engine.dialect.name == "postgresql":
                    result = await conn.execute(sa.text("SHOW max_connections"))
                    self._warn_over_limit(int(result.scalar_one()))
        except sa.exc.DBAPIError as exc:
            raise self._cannot_connect(exc) from exc

    def _warn_over_limit(self, server_max: int) -> None:
        warning = self._over_server_limit(server_max, "event loops")
        if warning is not None:
            warnings.warn(warning, RuntimeWarning, stacklevel=3)
