"""SqliteSpec's writer queue: threads on a lock, processes on a lock file (flock).

`SqliteSpec.transaction()` holds it around BEGIN IMMEDIATE ... COMMIT, so that
writers queue instead of polling SQLite's busy handler (which starves a writer
that has waited long). One `_WriterLock` per database per process, built through
the registry by `_SqliteWriterLock`, an internal spec shared by specs of any
placement.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import lru_cache
from typing import Annotated, Literal

from handles import _fork
from handles._fields import Identity
from handles._spec import Spec
from handles.exceptions import LockTimeout

try:
    import fcntl
except ImportError:  # Windows: threads of one process still queue
    fcntl = None  # type: ignore[assignment]

__all__ = ["writer_spec"]

logger = logging.getLogger("handles")


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
    def held(self, timeout: float, spec: object) -> Iterator[None]:
        """The writer queue for `spec`'s database, waited on for at most `timeout` seconds."""
        if self._owner == threading.get_ident():
            # This thread already writes through another connection: let SQLite
            # report that conflict instead of waiting for ourselves forever.
            yield
            return
        deadline = time.monotonic() + timeout
        if not self._thread_lock.acquire(timeout=max(timeout, 0)):
            raise LockTimeout(
                f"{spec!r}: another thread of this process (pid {os.getpid()}) has held the "
                f"writer queue for over {timeout:g} s (busy_timeout); is it stuck in a "
                "transaction?",
                kind=type(spec).__name__,
                holder_pid=os.getpid(),
            )
        try:
            self._owner = threading.get_ident()
            with self._file_lock(deadline, timeout, spec):
                yield
        finally:
            self._owner = None
            self._thread_lock.release()
            if self._closing:
                self.close()

    @contextmanager
    def _file_lock(self, deadline: float, timeout: float, spec: object) -> Iterator[None]:
        fd = self._fd
        if fd is None:
            yield
            return
        assert fcntl is not None  # a lock file is only opened where flock exists
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
                        f"{spec!r}: {who} has held the writer queue for over {timeout:g} s "
                        "(busy_timeout); is it stopped or stuck in a transaction?",
                        kind=type(spec).__name__,
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
    if fcntl is None:  # POSIX only; elsewhere threads still queue
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
def writer_spec(path: str | None, memory: str | None) -> _SqliteWriterLock:
    """The writer-queue spec for one database (equal arguments share one instance)."""
    return _SqliteWriterLock(path=path, memory=memory)
