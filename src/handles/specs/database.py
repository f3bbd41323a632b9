"""DatabaseSpec: any SQLAlchemy database; `get()` is this process's Engine.

    db = DatabaseSpec(
        url="postgresql+psycopg://app@db.internal:5432/sales",
        password="env:PGPASSWORD",          # a SecretRef: read on the worker, in build()
        max_connections=20, workers=4,      # at most 20 connections over 4 processes
    )
    with db.transaction() as conn:          # engine.begin(): commit, or roll back on error
        conn.execute(text("insert into t values (1)"))

Which database (identity, enters `cache_key()`)
    `url`, with any password masked.

How this process reaches it (placement, stays out of `cache_key()`)
    `password` (where the secret lives), the pool options, the connection
    budget, `connect_args` and `check_connection`.

Passwords. Give them as a secret reference (`password="env:NAME"` or
`"file:/run/secrets/db"`): the spec then never holds the secret. A password
written into the URL is accepted but masked as `***` in repr, in JSON and in the
key; only pickles (how Prefect and Dask ship a spec to a worker) carry it. So a
spec with a plain password cannot round-trip through JSON: validating a URL
whose password is `***` is a SpecError that asks for a secret reference. Two
specs that differ only in a plain URL password share a key, and so one Engine
per process.

Connection budget. Each process opens at most `pool_size + max_overflow`
connections, so N worker processes open up to N times that, and "too many
connections" is the classic failure. `max_connections=M, workers=N` caps the
total: each process's pool gets at most M // N connections (pool_size and
max_overflow are lowered to fit) and waits up to `pool_timeout` for a free one.
Without a budget, on PostgreSQL the first build compares the worst case with
the server's `max_connections` and warns with the arithmetic.

Fork. The registry gives a forked child an empty registry, so the child builds
its own Engine and never touches its parent's pool. An Engine carried into a
child some other way (a global) is guarded too: in the child it gets a fresh
pool (`dispose(close=False)`, SQLAlchemy's recipe for pools and os.fork()), and
the parent's connections are left open and unused. `close()` disposes.

URLs are passed to SQLAlchemy as written: for SQLite files prefer SqliteSpec,
which resolves relative paths where the spec is made.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from handles._optional import require
from handles._secrets import scrubbed
from handles.specs._sqlalchemy import _EngineSpec, guard_against_fork

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

__all__ = ["DatabaseSpec", "guard_against_fork"]


# Fields, validation, masking and the budget are _EngineSpec's, shared with
# AsyncDatabaseSpec (handles.specs._sqlalchemy); this kind builds a synchronous Engine.
class DatabaseSpec(_EngineSpec["Engine"]):
    """A database reached through SQLAlchemy: `get()` is this process's Engine."""

    kind: Literal["database"] = "database"

    def build(self) -> Engine:
        sa = require("sqlalchemy", "sql", kind=type(self).__name__)
        url = self._connect_url(sa)
        try:
            engine: Engine = sa.create_engine(
                url,
                poolclass=sa.pool.QueuePool,  # the budget needs a bounded pool
                **self._engine_options(),
            )
        except ImportError as exc:
            raise self._missing_driver(exc) from exc
        guard_against_fork(engine)
        if self.check_connection:
            # The driver's message never shows the password it was given (scrubbed).
            secret = {"password": url.password} if self.password and url.password else {}
            try:
                with scrubbed({"password": str(self.password)}, secret):
                    self._check(engine, sa)
            except BaseException:
                engine.dispose()  # nothing half-built stays open
                raise
        return engine

    def teardown(self, value: Engine) -> None:
        value.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection from this process's Engine inside a transaction (`engine.begin()`)."""
        with self.get().begin() as conn:
            yield conn

    def _check(self, engine: Engine, sa: Any) -> None:
        try:
            with engine.connect() as conn:
                if engine.dialect.name == "postgresql":
                    self._warn_over_server_limit(conn, sa)
        except sa.exc.DBAPIError as exc:
            raise self._cannot_connect(exc) from exc

    def _warn_over_server_limit(self, conn: Connection, sa: Any) -> None:
        server_max = int(conn.execute(sa.text("SHOW max_connections")).scalar_one())
        warning = self._over_server_limit(server_max, "processes")
        if warning is not None:
            warnings.warn(warning, RuntimeWarning, stacklevel=2)
