"""SqliteSpec's pragmas: the known ones, their validation, and how they are applied.

Each known pragma maps to a function that returns the canonical value or raises
ValueError. Only names from this table and values these functions return are
ever written into a PRAGMA statement, so a spec cannot inject SQL.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

__all__ = [
    "DEFAULT_PRAGMAS",
    "FILE_PRAGMAS",
    "PragmaValue",
    "checked_pragmas",
    "execute_waiting",
    "pragma_sql",
]

PragmaValue = str | int | bool | None

DEFAULT_PRAGMAS: Mapping[str, PragmaValue] = MappingProxyType(
    {"busy_timeout": 5000, "foreign_keys": True, "journal_mode": "wal"}
)


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
FILE_PRAGMAS = frozenset({"auto_vacuum", "journal_mode", "page_size"})


def checked_pragmas(given: Mapping[str, PragmaValue]) -> dict[str, PragmaValue]:
    """`given` merged over DEFAULT_PRAGMAS, names and values canonical; ValueError if unknown."""
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
            raise ValueError(f"{name} {exc}") from None  # never the value: see security.md
    return merged


def pragma_sql(name: str, value: str | int | bool) -> str:
    """The PRAGMA statement for a checked name and value."""
    if isinstance(value, bool):
        return f"PRAGMA {name} = {'ON' if value else 'OFF'}"
    return f"PRAGMA {name} = {value}"


def execute_waiting(conn: sqlite3.Connection, sql: str, seconds: float) -> Any:
    """`conn.execute(sql).fetchone()`, retried while the database is locked, for `seconds`."""
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
