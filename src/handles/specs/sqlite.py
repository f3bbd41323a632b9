"""SqliteSpec: an SQLite database, one connection per thread, one Engine per process.

    db = SqliteSpec(path="data/app.db")
    conn = db.get()                     # this thread's sqlite3.Connection
    with db.transaction() as conn:      # BEGIN IMMEDIATE ... COMMIT (or ROLLBACK)
        conn.execute("insert into t values (?)", (1,))
    engine = db.engine()                # this process's SQLAlchemy Engine

Which database (identity, enters `cache_key()`)
    `path` for a file, or `memory` for a named in-memory database. Exactly one.

How this process connects (placement, stays out of `cache_key()`)
    `read_only` and `pragmas`: they change how a connection behaves, not which
    data it reaches.

Relative paths resolve against the working directory of the process that
validates the spec (where it is constructed, or read from JSON), never the
worker's: the spec stores the absolute, normalized path, so JSON, pickles and
workers all carry the same file, and `a.db`, `./a.db` and `x/../a.db` share one
key. Symlinks are not resolved: validation never touches the filesystem, and a
second spelling through a link only costs a cache miss.

In-memory databases (`memory="name"`) are shared by every connection of one
process, threads and `engine()` included, and live until the process's registry
closes. They are per process on purpose: the SQLite name includes the process
id, so a forked child starts with an empty database of its own instead of
sharing SQLite's in-process state with its parent. Shared-cache databases lock
whole tables and never wait, so a thread reading while another writes can see
"database table is locked": use a file for concurrent work.

Concurrent writes: `transaction()` queues writers, threads on a lock and
processes on a lock file next to the database (`<path>-lock`, left in place),
before BEGIN IMMEDIATE. SQLite's busy timeout alone starves writers under load
(see `transaction()`); writes made outside `transaction()` rely on it.

Pragmas: the defaults make a file safe to share between threads and processes:
WAL journal (readers never block the writer), a 5 s busy timeout (writers wait
for each other instead of failing with "database is locked") and foreign keys
on. A mapping given by the user is merged over the defaults; a value of None
leaves that pragma at SQLite's own default. Unknown names and bad values are a
SpecError at construction. Pragmas stored in the file itself (journal_mode,
auto_vacuum, page_size) are skipped on read-only connections, which cannot
write them.

Beside this module: the pragma table (`_sqlite_pragmas`), the writer queue
(`_sqlite_lock`), and the in-memory keeper and savepoints (`_sqlite_helpers`).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from handles._allow import FromData
from handles._fields import Identity, Placement
from handles._optional import require
from handles._spec import Scope, Spec
from handles.exceptions import SpecError
from handles.specs._paths import absolute, fspath
from handles.specs._sqlalchemy import guard_against_fork

# The internal specs once defined here stay attributes of this module (F401): pickles
# made then name them handles.specs.sqlite._SqliteMemoryKeeper and ._SqliteWriterLock.
from handles.specs._sqlite_helpers import (
    _SqliteMemoryKeeper,  # noqa: F401
    keeper_spec,
    memory_uri,
    savepoint,
)
from handles.specs._sqlite_lock import (
    _SqliteWriterLock,  # noqa: F401
    writer_spec,
)
from handles.specs._sqlite_pragmas import (
    DEFAULT_PRAGMAS,
    FILE_PRAGMAS,
    PragmaValue,
    checked_pragmas,
    execute_waiting,
    pragma_sql,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["DEFAULT_PRAGMAS", "SqliteSpec"]

logger = logging.getLogger("handles")

_MEMORY_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_writer_spec = writer_spec  # where tests and older callers import it from


class SqliteSpec(Spec[sqlite3.Connection]):
    """An SQLite database: `get()` is the calling thread's connection."""

    kind: Literal["sqlite"] = "sqlite"
    from_data: ClassVar[FromData] = FromData(paths=("path",))
    """From data, `path` is limited by HANDLES_ALLOW_PATHS (see handles._allow)."""
    scope: ClassVar[Scope] = "thread"

    path: Annotated[str | None, Identity] = None
    """File database; relative paths resolve where the spec is validated."""
    memory: Annotated[str | None, Identity] = None
    """Name of an in-memory database shared by this process's connections."""
    read_only: Annotated[bool, Placement] = False
    pragmas: Annotated[dict[str, PragmaValue], Placement] = Field(default_factory=dict)
    """Merged over DEFAULT_PRAGMAS; None leaves a pragma at SQLite's default."""

    @field_validator("path", mode="before")
    @classmethod
    def _absolute_path(cls, value: Any) -> Any:
        value = fspath(value)
        if not isinstance(value, str):
            return value  # pydantic reports the wrong type
        if not value.strip():
            raise ValueError("is empty: give the database file's path")
        if value == ":memory:" or value.startswith("file:"):
            raise ValueError(
                "takes a file path; for an in-memory database use memory='name', "
                "and read_only=True instead of URI parameters"
            )
        return absolute(value)  # the path rule of every kind: handles.specs._paths

    @field_validator("memory")
    @classmethod
    def _memory_name(cls, value: str | None) -> str | None:
        if value is not None and not _MEMORY_NAME.fullmatch(value):
            raise ValueError("must be a non-empty name of letters, digits, '_', '.' or '-'")
        return value

    @field_validator("read_only")
    @classmethod
    def _read_only_needs_a_file(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("memory") is not None:
            raise ValueError(
                "needs a file: an in-memory database starts empty, so it is never read-only"
            )
        return value

    @field_validator("pragmas")
    @classmethod
    def _pragmas(cls, value: dict[str, PragmaValue]) -> dict[str, PragmaValue]:
        return checked_pragmas(value)

    @model_validator(mode="after")
    def _one_database(self) -> SqliteSpec:
        # Not about one field, so the message names both.
        if (self.path is None) == (self.memory is None):
            raise ValueError(
                "give exactly one of path='file.db' (a file) or memory='name' (in-memory)"
            )
        return self

    # -- the live objects -------------------------------------------------------

    def build(self) -> sqlite3.Connection:
        conn = self._open()
        try:
            self._apply_pragmas(conn)
        except BaseException:
            conn.close()  # nothing half-built stays open
            raise
        return conn

    def engine(self) -> Engine:
        """This process's SQLAlchemy Engine for the database, with the same pragmas.

        Built once per process through the registry, so `handles.registry()`
        stats, `close()` and fork handling cover it like any other object.
        """
        return _engine_spec(self).get()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection inside a transaction: committed, or rolled back on error.

        Writers queue first: one thread per process at a time, and one process
        at a time through a lock file next to the database (`<path>-lock`).
        SQLite's own busy handler polls with growing sleeps, so under load a
        writer that has waited long keeps losing to newer ones until its
        timeout ends in "database is locked"; queued writers never poll. Then
        BEGIN IMMEDIATE takes SQLite's write lock up front, since a transaction
        that read first could not wait for the upgrade. Read-only specs skip
        both. Nested calls use a savepoint.
        """
        conn = self.get()
        if conn.in_transaction:
            with savepoint(conn):
                yield conn
            return
        queue = (
            nullcontext()
            if self.read_only
            else writer_spec(self.path, self.memory).get().held(self._busy_seconds(), self)
        )
        with queue:
            conn.execute("BEGIN" if self.read_only else "BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            try:
                conn.commit()
            except BaseException:
                conn.rollback()
                raise

    # -- connecting -------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """A new connection without pragmas (the Engine applies them on its "connect" event)."""
        if self.memory is not None:
            keeper_spec(self.memory).get()  # keeps the database alive while threads come and go
        target = self._uri()
        try:
            # check_same_thread=False: each thread still gets its own connection
            # from the registry, but the registry may close it from another
            # thread at shutdown, and an Engine's pool hands it between threads.
            return sqlite3.connect(
                target,
                uri=True,
                timeout=self._busy_seconds(),
                check_same_thread=False,
            )
        except sqlite3.OperationalError as exc:
            raise self._open_error(exc) from exc

    def _busy_seconds(self) -> float:
        timeout = self.pragmas.get("busy_timeout")
        return 5.0 if timeout is None else int(timeout) / 1000

    def _uri(self) -> str:
        if self.memory is not None:
            return memory_uri(self.memory)
        assert self.path is not None
        return Path(self.path).as_uri() + ("?mode=ro" if self.read_only else "?mode=rwc")

    def _open_error(self, exc: sqlite3.Error) -> SpecError:
        # sqlite says only "unable to open database file"; say which and why.
        # Errors found in build() name the class, as construction errors do.
        label = type(self).__name__
        if self.path is None:
            return SpecError.one(label, "memory", f"cannot open: {exc}")
        folder = os.path.dirname(self.path)
        if os.path.isdir(self.path):
            reason = "it is a folder"
        elif not os.path.isdir(folder):
            reason = f"folder {folder} does not exist"
        elif self.read_only and not os.path.exists(self.path):
            reason = "file does not exist (read_only=True never creates it)"
        else:
            reason = str(exc)
        return SpecError.one(label, "path", f"cannot open {self.path}: {reason}")

    def _apply_pragmas(self, conn: sqlite3.Connection) -> None:
        # busy_timeout first, so the others (a journal_mode switch) can wait for locks.
        names = sorted(self.pragmas, key=lambda n: (n != "busy_timeout", n))
        for name in names:
            value = self.pragmas[name]
            if value is None or (name in FILE_PRAGMAS and (self.read_only or self.memory)):
                continue
            try:
                row = execute_waiting(conn, pragma_sql(name, value), self._busy_seconds())
            except sqlite3.DatabaseError as exc:
                if "not a database" in str(exc):
                    raise SpecError.one(
                        type(self).__name__, "path", f"{self.path} is not an SQLite database"
                    ) from exc
                raise SpecError.one(type(self).__name__, "pragmas", f"{name}: {exc}") from exc
            if name == "journal_mode" and row is not None and row[0] != value:
                logger.warning(
                    "%s: journal_mode is %s, not %s (the filesystem may not support it)",
                    self.path,
                    row[0],
                    value,
                )


# -- the process's Engine, built through the registry ----------------------------
# Here rather than beside the other internal specs: its identity is a SqliteSpec.


class _SqliteEngine(Spec["Engine"]):
    """The process's SQLAlchemy Engine for a SqliteSpec."""

    kind: Literal["sqlite-engine"] = "sqlite-engine"
    database: Annotated[SqliteSpec, Identity]

    def build(self) -> Engine:
        db = self.database
        sa = require("sqlalchemy", "sql", kind=type(db).__name__)
        # Our own creator, so the engine opens exactly what get() opens (URI,
        # read-only mode, timeout); QueuePool because SQLAlchemy would pick a
        # per-thread pool for the placeholder in-memory URL.
        engine: Engine = sa.create_engine(
            "sqlite+pysqlite://", creator=db._open, poolclass=sa.pool.QueuePool
        )
        sa.event.listen(
            engine, "connect", lambda dbapi_conn, _record: db._apply_pragmas(dbapi_conn)
        )
        guard_against_fork(engine)
        return engine

    def teardown(self, value: Engine) -> None:
        value.dispose()


@lru_cache(maxsize=256)
def _engine_spec(database: SqliteSpec) -> _SqliteEngine:
    # Equal specs share one companion, so engine() skips validation when warm.
    return _SqliteEngine(database=database)
