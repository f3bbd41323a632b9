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
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext, suppress
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from handles import _fork
from handles._fields import Identity, Placement
from handles._optional import require
from handles._spec import Scope, Spec
from handles.exceptions import LockTimeout, SpecError
from handles.specs.database import guard_against_fork

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["DEFAULT_PRAGMAS", "SqliteSpec"]

logger = logging.getLogger("handles")

PragmaValue = str | int | bool | None

DEFAULT_PRAGMAS: Mapping[str, PragmaValue] = MappingProxyType(
    {"busy_timeout": 5000, "foreign_keys": True, "journal_mode": "wal"}
)

_MEMORY_NAME = re.compile(r"[A-Za-z0-9_.-]+")


# -- pragma validation ----------------------------------------------------------
# Each known pragma maps to a function that returns the canonical value or raises
# ValueError. Only names from this table and values these functions return are
# ever written into a PRAGMA statement, so a spec cannot inject SQL.


def _boolean(value: PragmaValue) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("1", "on", "true", "yes"):
            return True
        if word in ("0", "off", "false", "no"):
            return False
    raise ValueError("must be true or false")


def _integer(minimum: int | None = None) -> Callable[[PragmaValue], int]:
    def check(value: PragmaValue) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return check


def _keyword(*words: str) -> Callable[[PragmaValue], str]:
    # SQLite also accepts these keywords by position (synchronous=1 is NORMAL).
    def check(value: PragmaValue) -> str:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(words):
            return words[value]
        if isinstance(value, str) and value.strip().lower() in words:
            return value.strip().lower()
        raise ValueError(f"must be one of {', '.join(words)}")

    return check


def _page_size(value: PragmaValue) -> int:
    size = _integer(512)(value)
    if size > 65536 or size & (size - 1):
        raise ValueError("must be a power of two from 512 to 65536")
    return size


_PRAGMAS: Mapping[str, Callable[[PragmaValue], Any]] = MappingProxyType(
    {
        "auto_vacuum": _keyword("none", "full", "incremental"),
        "automatic_index": _boolean,
        "busy_timeout": _integer(0),
        "cache_size": _integer(),
        "cell_size_check": _boolean,
        "defer_foreign_keys": _boolean,
        "foreign_keys": _boolean,
        "ignore_check_constraints": _boolean,
        "journal_mode": _keyword("delete", "truncate", "persist", "memory", "wal", "off"),
        "journal_size_limit": _integer(-1),
        "locking_mode": _keyword("normal", "exclusive"),
        "mmap_size": _integer(0),
        "page_size": _page_size,
        "query_only": _boolean,
        "recursive_triggers": _boolean,
        "secure_delete": _boolean,
        "synchronous": _keyword("off", "normal", "full", "extra"),
        "temp_store": _keyword("default", "file", "memory"),
        "threads": _integer(0),
        "trusted_schema": _boolean,
        "wal_autocheckpoint": _integer(),
    }
)
# Stored in the database file, not the connection: only a writer can set them.
_FILE_PRAGMAS = frozenset({"auto_vacuum", "journal_mode", "page_size"})


def _checked_pragmas(given: Mapping[str, PragmaValue]) -> dict[str, PragmaValue]:
    merged: dict[str, PragmaValue] = dict(DEFAULT_PRAGMAS)
    for raw_name, value in given.items():
        name = raw_name.strip().lower()
        check = _PRAGMAS.get(name)
        if check is None:
            known = ", ".join(sorted(_PRAGMAS))
            raise ValueError(f"unknown pragma {raw_name!r}; known pragmas: {known}")
        try:
            merged[name] = None if value is None else check(value)
        except ValueError as exc:
            raise ValueError(f"{name} {exc} (got {value!r})") from None
    return merged


def _pragma_sql(name: str, value: str | int | bool) -> str:
    if isinstance(value, bool):
        return f"PRAGMA {name} = {'ON' if value else 'OFF'}"
    return f"PRAGMA {name} = {value}"


# -- the spec -------------------------------------------------------------------


class SqliteSpec(Spec[sqlite3.Connection]):
    """An SQLite database: `get()` is the calling thread's connection."""

    kind: Literal["sqlite"] = "sqlite"
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
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            return value  # pydantic reports the wrong type
        if not value.strip():
            raise ValueError("is empty: give the database file's path")
        if value == ":memory:" or value.startswith("file:"):
            raise ValueError(
                "takes a file path; for an in-memory database use memory='name', "
                "and read_only=True instead of URI parameters"
            )
        if "\0" in value:
            raise ValueError("contains a NUL character")
        return os.path.abspath(os.path.expanduser(value))

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
        return _checked_pragmas(value)

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
            with _savepoint(conn):
                yield conn
            return
        queue = (
            nullcontext()
            if self.read_only
            else _writer_spec(self.path, self.memory).get().held(self._busy_seconds(), repr(self))
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

    @property
    def _name(self) -> str:
        # Errors found in build() name the class, as construction errors do.
        return type(self).__name__

    def _open(self) -> sqlite3.Connection:
        """A new connection without pragmas (the Engine applies them on its "connect" event)."""
        if self.memory is not None:
            _keeper_spec(self.memory).get()  # keeps the database alive while threads come and go
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
            return _memory_uri(self.memory)
        assert self.path is not None
        return Path(self.path).as_uri() + ("?mode=ro" if self.read_only else "?mode=rwc")

    def _open_error(self, exc: sqlite3.Error) -> SpecError:
        # sqlite says only "unable to open database file"; say which and why.
        if self.path is None:
            return SpecError.one(self._name, "memory", f"cannot open: {exc}")
        folder = os.path.dirname(self.path)
        if os.path.isdir(self.path):
            reason = "it is a folder"
        elif not os.path.isdir(folder):
            reason = f"folder {folder} does not exist"
        elif self.read_only and not os.path.exists(self.path):
            reason = "file does not exist (read_only=True never creates it)"
        else:
            reason = str(exc)
        return SpecError.one(self._name, "path", f"cannot open {self.path}: {reason}")

    def _apply_pragmas(self, conn: sqlite3.Connection) -> None:
        # busy_timeout first, so the others (a journal_mode switch) can wait for locks.
        names = sorted(self.pragmas, key=lambda n: (n != "busy_timeout", n))
        for name in names:
            value = self.pragmas[name]
            if value is None or (name in _FILE_PRAGMAS and (self.read_only or self.memory)):
                continue
            try:
                row = _execute_waiting(conn, _pragma_sql(name, value), self._busy_seconds())
            except sqlite3.DatabaseError as exc:
                if "not a database" in str(exc):
                    raise SpecError.one(
                        self._name, "path", f"{self.path} is not an SQLite database"
                    ) from exc
                raise SpecError.one(self._name, "pragmas", f"{name}: {exc}") from exc
            if name == "journal_mode" and row is not None and row[0] != value:
                logger.warning(
                    "%s: journal_mode is %s, not %s (the filesystem may not support it)",
                    self.path,
                    row[0],
                    value,
                )


def _execute_waiting(conn: sqlite3.Connection, sql: str, seconds: float) -> Any:
    # Switching journal_mode needs the file to itself, and SQLite does not run
    # its busy handler for it: two processes opening a new database at once
    # would see "database is locked". Retry within the busy timeout instead.
    deadline = time.monotonic() + seconds
    pause = 0.001
    while True:
        try:
            return conn.execute(sql).fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


@contextmanager
def _savepoint(conn: sqlite3.Connection) -> Iterator[None]:
    name = f"handles_{next(_savepoint_ids)}"
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        conn.execute(f"ROLLBACK TO {name}")
        conn.execute(f"RELEASE {name}")
        raise
    conn.execute(f"RELEASE {name}")


_savepoint_ids = itertools.count()


def _memory_uri(name: str) -> str:
    # The pid keeps a forked child off its parent's shared cache (see module docs).
    return f"file:handles-{name}-{os.getpid()}?mode=memory&cache=shared"


# -- process-wide companions, built through the registry ------------------------


class _SqliteMemoryKeeper(Spec[sqlite3.Connection]):
    """One connection per process that keeps a named in-memory database alive."""

    kind: Literal["sqlite-memory"] = "sqlite-memory"
    name: Annotated[str, Identity]

    def build(self) -> sqlite3.Connection:
        return sqlite3.connect(_memory_uri(self.name), uri=True, check_same_thread=False)


class _SqliteEngine(Spec["Engine"]):
    """The process's SQLAlchemy Engine for a SqliteSpec."""

    kind: Literal["sqlite-engine"] = "sqlite-engine"
    database: Annotated[SqliteSpec, Identity]

    def build(self) -> Engine:
        sa = require("sqlalchemy", "sql", kind="SqliteSpec")
        db = self.database
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


class _WriterLock:
    """Queues write transactions on one database: threads on a lock, processes on a file lock.

    Built once per process through the registry. Waiting is bounded (the spec's
    busy timeout), so a stopped or hung holder makes the next writer fail with
    LockTimeout instead of waiting forever; the holder writes its process id
    into the lock file so that the error can name it. The descriptor is
    close-on-exec, and a forked child closes its inherited copy at once (see
    `_forget_lock_files_in_child`): it never holds its parent's lock.
    """

    def __init__(self, lock_file: str | None) -> None:
        self._thread_lock = threading.Lock()
        self._owner: int | None = None
        self._closing = False
        self._fd = _open_lock_file(lock_file) if lock_file else None
        _lock_files.add(self)

    @contextmanager
    def held(self, timeout: float, label: str) -> Iterator[None]:
        if self._owner == threading.get_ident():
            # This thread already writes through another connection: let SQLite
            # report that conflict instead of waiting for ourselves forever.
            yield
            return
        deadline = time.monotonic() + timeout
        if not self._thread_lock.acquire(timeout=max(timeout, 0)):
            raise LockTimeout(
                f"{label}: another thread of this process (pid {os.getpid()}) has held the "
                f"writer queue for over {timeout:g} s (busy_timeout); is it stuck in a "
                "transaction?",
                kind="sqlite",
                holder_pid=os.getpid(),
            )
        try:
            self._owner = threading.get_ident()
            with self._file_lock(deadline, timeout, label):
                yield
        finally:
            self._owner = None
            self._thread_lock.release()
            if self._closing:
                self.close()

    @contextmanager
    def _file_lock(self, deadline: float, timeout: float, label: str) -> Iterator[None]:
        fd = self._fd
        if fd is None:
            yield
            return
        import fcntl

        # flock has no timeout: poll without blocking, with short sleeps so the
        # queue stays close to first come, first served.
        pause = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    who = f"process {holder}" if holder else "another process"
                    raise LockTimeout(
                        f"{label}: {who} has held the writer queue for over {timeout:g} s "
                        "(busy_timeout); is it stopped or stuck in a transaction?",
                        kind="sqlite",
                        holder_pid=holder,
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.01)
        try:
            _write_holder(fd)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        # A writer may hold the lock (the registry closes from any thread): it
        # then closes the descriptor itself when done, never one still in use.
        self._closing = True
        if self._thread_lock.acquire(blocking=False):
            try:
                self._close_fd()
            finally:
                self._thread_lock.release()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _write_holder(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:  # only the error message needs it
        pass


def _read_holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _open_lock_file(path: str) -> int | None:
    try:
        import fcntl  # noqa: F401 - POSIX only; elsewhere threads still queue
    except ImportError:
        return None
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        logger.warning("cannot open %s (%s): writers queue per process only", path, exc.strerror)
        return None


_lock_files: weakref.WeakSet[_WriterLock] = weakref.WeakSet()


def _forget_lock_files_in_child() -> None:
    # Close, never unlock: unlocking would release the parent's lock, since both
    # descriptors share one open file. The registry keeps the objects referenced.
    for lock in list(_lock_files):
        if lock._fd is not None:
            with suppress(OSError):
                os.close(lock._fd)
            lock._fd = None


_fork.in_child(_forget_lock_files_in_child)


class _SqliteWriterLock(Spec[_WriterLock]):
    """The process's writer queue for one database (shared by specs of any placement)."""

    kind: Literal["sqlite-writer-lock"] = "sqlite-writer-lock"
    path: Annotated[str | None, Identity] = None
    memory: Annotated[str | None, Identity] = None

    def build(self) -> _WriterLock:
        return _WriterLock(None if self.path is None else self.path + "-lock")


@lru_cache(maxsize=256)
def _writer_spec(path: str | None, memory: str | None) -> _SqliteWriterLock:
    return _SqliteWriterLock(path=path, memory=memory)


@lru_cache(maxsize=256)
def _engine_spec(database: SqliteSpec) -> _SqliteEngine:
    # Equal specs share one companion, so engine() skips validation when warm.
    return _SqliteEngine(database=database)


@lru_cache(maxsize=256)
def _keeper_spec(name: str) -> _SqliteMemoryKeeper:
    return _SqliteMemoryKeeper(name=name)
