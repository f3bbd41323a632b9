"""SqliteSpec's connection helpers: named in-memory databases and savepoints.

A named in-memory database lives while one connection to it is open, so each
process keeps one open through the registry (`_SqliteMemoryKeeper`, an internal
spec): threads and `engine()` connections may come and go meanwhile.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Annotated, Literal

from handles._fields import Identity
from handles._spec import Spec

__all__ = ["keeper_spec", "memory_uri", "savepoint"]


def memory_uri(name: str) -> str:
    """The SQLite URI of this process's in-memory database `name`."""
    # The pid keeps a forked child off its parent's shared cache (see handles.specs.sqlite).
    return f"file:handles-{name}-{os.getpid()}?mode=memory&cache=shared"


class _SqliteMemoryKeeper(Spec[sqlite3.Connection]):
    """One connection per process that keeps a named in-memory database alive."""

    kind: Literal["sqlite-memory"] = "sqlite-memory"
    name: Annotated[str, Identity]

    def build(self) -> sqlite3.Connection:
        return sqlite3.connect(memory_uri(self.name), uri=True, check_same_thread=False)


@lru_cache(maxsize=256)
def keeper_spec(name: str) -> _SqliteMemoryKeeper:
    """The keeper spec for in-memory database `name` (equal names share one instance)."""
    return _SqliteMemoryKeeper(name=name)


@contextmanager
def savepoint(conn: sqlite3.Connection) -> Iterator[None]:
    """A nested transaction on `conn`: released, or rolled back to on error."""
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
