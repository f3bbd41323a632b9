"""Malformed SQL specs: each fails with a clear error naming its kind and field, and
nothing is cached.

The table is the specification, in the shape every kind shares
(tests/support/bad_input.py): a case either fails at construction with a
SpecError, or constructs and then fails at the first `get()` with a BuildError
whose cause is a SpecError for that field. The plain password some inputs hold
must appear in no message.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import handles
from handles import DatabaseSpec, MissingDependencyError, SpecError, SqliteSpec
from support.bad_input import Bad, check, params
from support.cases_sql import UNREACHABLE_POSTGRES, other_database, postgres_url

SECRET = "s3cret-Pa55"
PG = "postgresql+psycopg://app@db.invalid:5432/sales"


def _garbage_file(tmp: Path) -> Path:
    path = tmp / "notes.db"
    path.write_text("not an SQLite file: " + "x" * 200)
    return path


def _needs_missing(module: str) -> Callable[[], object]:
    def absent() -> object:
        if importlib.util.find_spec(module) is not None:
            pytest.skip(f"{module} is installed here, so it cannot be missing")
        return None

    return absent


_CASES = [
    # -- SqliteSpec, at construction --------------------------------------------
    Bad(
        "sqlite-empty-path",
        SqliteSpec,
        lambda t: SqliteSpec(path="  "),
        "path",
        "construct",
        "empty",
    ),
    Bad(
        "sqlite-memory-as-path",
        SqliteSpec,
        lambda t: SqliteSpec(path=":memory:"),
        "path",
        "construct",
        "memory=",
    ),
    Bad(
        "sqlite-uri-as-path",
        SqliteSpec,
        lambda t: SqliteSpec(path="file:a.db?mode=ro"),
        "path",
        "construct",
    ),
    Bad(
        "sqlite-nul-in-path",
        SqliteSpec,
        lambda t: SqliteSpec(path="a\0.db"),
        "path",
        "construct",
        "contains a NUL character",
    ),
    Bad(
        "sqlite-memory-name", SqliteSpec, lambda t: SqliteSpec(memory="a/b"), "memory", "construct"
    ),
    Bad(
        "sqlite-read-only-memory",
        SqliteSpec,
        lambda t: SqliteSpec(memory="a", read_only=True),
        "read_only",
        "construct",
    ),
    Bad(
        "sqlite-unknown-pragma",
        SqliteSpec,
        lambda t: SqliteSpec(path=t / "a.db", pragmas={"journal_mood": "wal"}),
        "pragmas",
        "construct",
        "unknown pragma 'journal_mood'",
    ),
    Bad(
        "sqlite-pragma-injection",
        SqliteSpec,
        lambda t: SqliteSpec(path=t / "a.db", pragmas={"foreign_keys = ON; DROP TABLE t; --": 1}),
        "pragmas",
        "construct",
        "unknown pragma",
    ),
    Bad(
        "sqlite-malformed-journal-mode",
        SqliteSpec,
        lambda t: SqliteSpec(path=t / "a.db", pragmas={"journal_mode": "fast"}),
        "pragmas",
        "construct",
        "journal_mode must be one of",
    ),
    Bad(
        "sqlite-negative-busy-timeout",
        SqliteSpec,
        lambda t: SqliteSpec(path=t / "a.db", pragmas={"busy_timeout": -1}),
        "pragmas",
        "construct",
        "busy_timeout must be at least 0",
    ),
    Bad(
        "sqlite-not-a-boolean",
        SqliteSpec,
        lambda t: SqliteSpec(path=t / "a.db", pragmas={"foreign_keys": "maybe"}),
        "pragmas",
        "construct",
        "true or false",
    ),
    Bad(
        "sqlite-page-size",
        SqliteSpec,
        lambda t: SqliteSpec(path=t / "a.db", pragmas={"page_size": 1000}),
        "pragmas",
        "construct",
        "power of two",
    ),
    Bad(
        "sqlite-unknown-field",
        SqliteSpec,
        lambda t: SqliteSpec(path=t / "a.db", timeout=5),
        "timeout",
        "construct",
        "not permitted",
    ),
    # -- SqliteSpec, at the first get() ------------------------------------------
    Bad(
        "sqlite-missing-folder",
        SqliteSpec,
        lambda t: SqliteSpec(path=t / "missing" / "a.db"),
        "path",
        "build",
        "does not exist",
    ),
    Bad(
        "sqlite-read-only-missing-file",
        SqliteSpec,
        lambda t: SqliteSpec(path=t / "absent.db", read_only=True),
        "path",
        "build",
        "never creates",
    ),
    Bad(
        "sqlite-path-is-a-folder",
        SqliteSpec,
        lambda t: SqliteSpec(path=t),
        "path",
        "build",
        "folder",
    ),
    Bad(
        "sqlite-not-a-database",
        SqliteSpec,
        lambda t: SqliteSpec(path=_garbage_file(t)),
        "path",
        "build",
        "not an SQLite database",
    ),
    # -- DatabaseSpec, at construction -------------------------------------------
    Bad("db-missing-url", DatabaseSpec, lambda t: DatabaseSpec(), "url", "construct", "required"),
    Bad("db-empty-url", DatabaseSpec, lambda t: DatabaseSpec(url=""), "url", "construct"),
    Bad(
        "db-not-a-url",
        DatabaseSpec,
        lambda t: DatabaseSpec(url="localhost:5432/test"),
        "url",
        "construct",
    ),
    Bad(
        "db-bad-scheme",
        DatabaseSpec,
        lambda t: DatabaseSpec(url="htp://db.invalid/sales"),
        "url",
        "construct",
        "unknown database dialect;",
    ),
    Bad(
        "db-bad-port",
        DatabaseSpec,
        lambda t: DatabaseSpec(url=f"postgresql+psycopg://app:{SECRET}@db.invalid:99999/x"),
        "url",
        "construct",
        "port",
    ),
    Bad(
        "db-masked-password",
        DatabaseSpec,
        lambda t: DatabaseSpec(url="postgresql+psycopg://app:***@db.invalid/sales"),
        "url",
        "construct",
        "secret reference",
    ),
    Bad(
        "db-password-twice",
        DatabaseSpec,
        lambda t: DatabaseSpec(
            url=f"postgresql+psycopg://app:{SECRET}@db.invalid/sales", password="env:PW"
        ),
        "password",
        "construct",
        "twice",
    ),
    Bad(
        "db-literal-password",
        DatabaseSpec,
        lambda t: DatabaseSpec(url=PG, password=SECRET),
        "password",
        "construct",
        "reference",
    ),
    Bad(
        "db-sqlite-memory-url",
        DatabaseSpec,
        lambda t: DatabaseSpec(url="sqlite://"),
        "url",
        "construct",
        "SqliteSpec(memory=",
    ),
    Bad(
        "db-zero-pool",
        DatabaseSpec,
        lambda t: DatabaseSpec(url=PG, pool_size=0),
        "pool_size",
        "construct",
    ),
    Bad(
        "db-negative-timeout",
        DatabaseSpec,
        lambda t: DatabaseSpec(url=PG, pool_timeout=-1),
        "pool_timeout",
        "construct",
    ),
    Bad(
        "db-budget-without-workers",
        DatabaseSpec,
        lambda t: DatabaseSpec(url=PG, max_connections=10),
        "workers",
        "construct",
        "max_connections // workers",
    ),
    Bad(
        "db-budget-too-small",
        DatabaseSpec,
        lambda t: DatabaseSpec(url=PG, max_connections=3, workers=4),
        "workers",
        "construct",
        "at least one connection",
    ),
    # -- DatabaseSpec, at the first get() ----------------------------------------
    Bad(
        "db-unreachable-host",
        DatabaseSpec,
        lambda t: DatabaseSpec(
            url=UNREACHABLE_POSTGRES.replace("postgres@", f"postgres:{SECRET}@")
        ),
        "url",
        "build",
        "cannot connect",
    ),
    Bad(
        "db-unknown-driver",
        DatabaseSpec,
        lambda t: DatabaseSpec(url="postgresql+psycopgg://app@db.invalid/sales"),
        "url",
        "build",
        "no dialect+driver 'postgresql+psycopgg'",
    ),
    Bad(
        "db-driver-not-installed",
        DatabaseSpec,
        lambda t: DatabaseSpec(url="mssql+pyodbc://app@db.invalid/sales"),
        "url",
        "build",
        "pip install pyodbc",
        needs=_needs_missing("pyodbc"),
    ),
    Bad(
        "db-async-driver",
        DatabaseSpec,
        lambda t: DatabaseSpec(url="postgresql+asyncpg://app@db.invalid/sales"),
        "url",
        "build",
        "asyncio driver",
    ),
    Bad(
        "db-secret-env-unset",
        DatabaseSpec,
        lambda t: DatabaseSpec(url=PG, password="env:HANDLES_TEST_SURELY_UNSET_PW"),
        "password",
        "build",
        "HANDLES_TEST_SURELY_UNSET_PW is not set",
    ),
    Bad(
        "db-secret-file-missing",
        DatabaseSpec,
        lambda t: DatabaseSpec(url=PG, password=f"file:{t / 'no-such-secret'}"),
        "password",
        "build",
        "cannot read secret file",
    ),
    Bad(
        "db-sqlite-missing-folder",
        DatabaseSpec,
        lambda t: DatabaseSpec(url=f"sqlite:///{(t / 'missing' / 'a.db').as_posix()}"),
        "url",
        "build",
        "unable to open database file",
    ),
    Bad(
        "db-postgres-unknown-database",
        DatabaseSpec,
        lambda t: DatabaseSpec(url=other_database(postgres_url(), "handles_no_such_database")),
        "url",
        "build",
        'database "handles_no_such_database" does not exist',
        needs=postgres_url,
    ),
]


# Every message is checked for the plain password some inputs hold.
CASES = [dataclasses.replace(case, secret=SECRET) for case in _CASES]


def test_the_table_is_big_enough():
    assert len(CASES) >= 10
    assert {c.when for c in CASES} == {"construct", "build"}


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Bad, tmp_path: Path) -> None:
    check(case, tmp_path)


# -- not about one field: the message names both ----------------------------------


@pytest.mark.parametrize(
    ("make", "named"),
    [
        pytest.param(lambda t: SqliteSpec(), "path", id="sqlite-no-database"),
        pytest.param(
            lambda t: SqliteSpec(path=t / "a.db", memory="a"), "memory", id="sqlite-path-and-memory"
        ),
    ],
)
def test_sqlite_needs_exactly_one_database(make, named: str, tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        make(tmp_path)
    message = str(info.value)
    assert message.startswith("SqliteSpec: "), message
    assert named in message
    assert "exactly one" in message
    assert info.value.kind == "SqliteSpec"
    assert len(handles.registry()) == 0


# -- missing packages: MissingDependencyError saying what to install ------------


@pytest.mark.parametrize(
    ("hidden", "use"),
    [
        ("sqlalchemy", lambda t: DatabaseSpec(url=f"sqlite:///{(t / 'a.db').as_posix()}").get()),
        ("sqlalchemy", lambda t: SqliteSpec(path=t / "a.db").engine()),
        ("psycopg", lambda t: DatabaseSpec(url="postgresql+psycopg://app@db.invalid/x").get()),
    ],
    ids=["database-without-sqlalchemy", "sqlite-engine-without-sqlalchemy", "without-psycopg"],
)
def test_missing_package_says_what_to_install(hidden, use, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, hidden, None)  # what `import hidden` sees when absent
    with pytest.raises(MissingDependencyError, match=r'pip install "handle-specs\[sql\]"') as info:
        use(tmp_path)
    assert info.value.package == hidden
    assert len(handles.registry()) == 0


def test_sqlite_needs_no_sqlalchemy_for_get(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    assert SqliteSpec(path=tmp_path / "a.db").get().execute("select 1").fetchone() == (1,)
