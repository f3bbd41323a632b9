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
handling are DatabaseSpec's (see handles.specs.database); the URL names an
asyncio driver: `postgresql+psycopg_async`, `postgresql+asyncpg`, `sqlite+aiosqlite`.
The budget counts per loop: `workers` should count event loops, not processes,
when one process runs several loops at once.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from handles._optional import require
from handles._spec import Scope
from handles.exceptions import BuildError, SpecError
from handles.specs.database import DatabaseSpec, _masked, guard_against_fork

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["AsyncDatabaseSpec"]


# Subclassing DatabaseSpec shares its fields, validation, masking and budget;
# the live type differs (AsyncEngine, not Engine), hence the override ignores.
class AsyncDatabaseSpec(DatabaseSpec):
    """A database reached through SQLAlchemy's asyncio API: `await aget()` is this loop's engine."""

    kind: Literal["async-database"] = "async-database"  # type: ignore[assignment]
    scope: ClassVar[Scope] = "loop"
    _asyncio: ClassVar[bool] = True

    def build(self) -> Any:
        raise BuildError(
            f"{self!r} builds on an event loop: call `await spec.aget()`", kind=self.kind, spec=self
        )

    async def abuild(self) -> AsyncEngine:  # type: ignore[override]
        sa = require("sqlalchemy", "sql", kind=self._name)
        require("greenlet", "sql", kind=self._name)  # SQLAlchemy's asyncio layer needs it
        from sqlalchemy.ext.asyncio import create_async_engine

        url = self._connect_url(sa)
        try:
            engine = create_async_engine(url, **self._engine_options())
        except ImportError as exc:
            raise self._missing_driver(exc) from exc
        guard_against_fork(engine.sync_engine)
        if self.check_connection:
            try:
                await self._acheck(engine, sa)
            except BaseException:
                await engine.dispose()  # nothing half-built stays open
                raise
        return engine

    async def ateardown(self, value: AsyncEngine) -> None:  # type: ignore[override]
        await value.dispose()

    def teardown(self, value: AsyncEngine) -> None:  # type: ignore[override]
        # Only reached where no loop can run the async teardown (the loop is gone):
        # drop the pool without awaiting; the server ends the sessions.
        value.sync_engine.dispose(close=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:  # type: ignore[override]
        """A connection from this loop's engine inside a transaction (`engine.begin()`)."""
        engine: AsyncEngine = await self.aget()  # type: ignore[assignment]
        async with engine.begin() as conn:
            yield conn

    async def _acheck(self, engine: AsyncEngine, sa: Any) -> None:
        try:
            async with engine.connect() as conn:
                if engine.dialect.name == "postgresql":
                    result = await conn.execute(sa.text("SHOW max_connections"))
                    self._warn_over_limit(int(result.scalar_one()))
        except sa.exc.DBAPIError as exc:
            detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise SpecError.one(
                self._name, "url", f"cannot connect to {_masked(self.url)}: {detail}"
            ) from exc

    def _warn_over_limit(self, server_max: int) -> None:
        loops = self.workers or 1
        worst = loops * self.connections_per_process()
        if self.max_connections is None and worst > server_max:
            warnings.warn(
                f"{self!r} may open {loops} event loops x {self.connections_per_process()} "
                f"connections (pool_size + max_overflow) = {worst}, but the server allows "
                f"{server_max}: set max_connections= (and workers=) to cap the total",
                RuntimeWarning,
                stacklevel=3,
            )
