"""Malformed SQL specs: each fails with a clear error naming its kind and field, and
nothing is cached.

The table is the specification: a case either fails at construction with a
SpecError, or constructs and then fails at the first `get()` with a BuildError
whose cause is a SpecError for that field. Plain passwords in the inputs must
appear in no message.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

import handles
from handles import BuildError, DatabaseSpec, MissingDependencyError, SpecError, SqliteSpec
from support.cases_sql import UNREACHABLE_POSTGRES, other_database, postgres_url

SECRET = "s3cret-Pa55"
PG = "postgresql+psycopg://app@db.invalid:5432/sales"


@dataclass(frozen=True)
class Bad:
    name: str
    make: Callable[[Path], Any]
    field: str
    when: Literal["construct", "build"]
    match: str = ""  # a phrase the message must contain (case-insensitive)
    needs: Callable[[], object] | None = None  # skips the case when it cannot run here


def _garbage_file(tmp: Path) -> Path:
    path = tmp / "notes.db"
    path.write_text("not an SQLite file: " + "x" * 200)
    return path


def _needs_missing(module: str) -> Callable[[], object]:
    def check() -> object:
        if importlib.util.find_spec(module) is not None:
            pytest.skip(f"{module} is installed here, so it cannot be missing")
        return None

    return check


CASES = [
    # -- SqliteSpec, at construction --------------------------------------------
    Bad("sqlite-no-database", lambda t: SqliteSpec(), "path", "construct", "exactly one"),
    Bad("sqlite-empty-path", lambda t: SqliteSpec(path="  "), "path", "construct", "empty"),
    Bad(
        "sqlite-memory-as-path",
        lambda t: SqliteSpec(path=":memory:"),
        "path",
        "construct",
        "memory=",
    ),
    Bad("sqlite-uri-as-path", lambda t: SqliteSpec(path="file:a.db?mode=ro"), "path", "construct"),
    Bad(
        "sqlite-path-and-memory",
        lambda t: SqliteSpec(path=t / "a.db", memory="a"),
        "memory",
        "construct",
        "exactly one",
    ),
    Bad("sqlite-memory-name", lambda t: SqliteSpec(memory="a/b"), "memory", "construct"),
    Bad(
        "sqlite-read-only-memory",
        lambda t: SqliteSpec(memory="a", read_only=True),
        "read_only",
        "construct",
    ),
    Bad(
        "sqlite-unknown-pragma",
        lambda t: SqliteSpec(path=t / "a.db", pragmas={"journal_mood": "wal"}),
        "pragmas",
        "construct",
        "unknown pragma 'journal_mood'",
    ),
    Bad(
        "sqlite-pragma-injection",
        lambda t: SqliteSpec(path=t / "a.db", pragmas={"foreign_keys = ON; DROP TABLE t; --": 1}),
        "pragmas",
        "construct",
        "unknown pragma",
    ),
    Bad(
        "sqlite-malformed-journal-mode",
        lambda t: SqliteSpec(path=t / "a.db", pragmas={"journal_mode": "fast"}),
        "pragmas",
        "construct",
        "journal_mode must be one of",
    ),
    Bad(
        "sqlite-negative-busy-timeout",
        lambda t: SqliteSpec(path=t / "a.db", pragmas={"busy_timeout": -1}),
        "pragmas",
        "construct",
        "busy_timeout must be at least 0",
    ),
    Bad(
        "sqlite-not-a-boolean",
        lambda t: SqliteSpec(path=t / "a.db", pragmas={"foreign_keys": "maybe"}),
        "pragmas",
        "construct",
        "true or false",
    ),
    Bad(
        "sqlite-page-size",
        lambda t: SqliteSpec(path=t / "a.db", pragmas={"page_size": 1000}),
        "pragmas",
        "construct",
        "power of two",
    ),
    Bad(
        "sqlite-unknown-field",
        lambda t: SqliteSpec(path=t / "a.db", timeout=5),
        "timeout",
        "construct",
        "not permitted",
    ),
    # -- SqliteSpec, at the first get() ------------------------------------------
    Bad(
        "sqlite-missing-folder",
        lambda t: SqliteSpec(path=t / "missing" / "a.db"),
        "path",
        "build",
        "does not exist",
    ),
    Bad(
        "sqlite-read-only-missing-file",
        lambda t: SqliteSpec(path=t / "absent.db", read_only=True),
        "path",
        "build",
        "never creates",
    ),
    Bad("sqlite-path-is-a-folder", lambda t: SqliteSpec(path=t), "path", "build", "folder"),
    Bad(
        "sqlite-not-a-database",
        lambda t: SqliteSpec(path=_garbage_file(t)),
        "path",
        "build",
        "not an SQLite database",
    ),
    # -- DatabaseSpec, at construction -------------------------------------------
    Bad("db-missing-url", lambda t: DatabaseSpec(), "url", "construct", "required"),
    Bad("db-empty-url", lambda t: DatabaseSpec(url=""), "url", "construct"),
    Bad("db-not-a-url", lambda t: DatabaseSpec(url="localhost:5432/test"), "url", "construct"),
    Bad(
        "db-bad-scheme",
        lambda t: DatabaseSpec(url="htp://db.invalid/sales"),
        "url",
        "construct",
        "unknown database dialect 'htp'",
    ),
    Bad(
        "db-bad-port",
        lambda t: DatabaseSpec(url=f"postgresql+psycopg://app:{SECRET}@db.invalid:99999/x"),
        "url",
        "construct",
        "port",
    ),
    Bad(
        "db-masked-password",
        lambda t: DatabaseSpec(url="postgresql+psycopg://app:***@db.invalid/sales"),
        "url",
        "construct",
        "secret reference",
    ),
    Bad(
        "db-password-twice",
        lambda t: DatabaseSpec(
            url=f"postgresql+psycopg://app:{SECRET}@db.invalid/sales", password="env:PW"
        ),
        "password",
        "construct",
        "twice",
    ),
    Bad(
        "db-literal-password",
        lambda t: DatabaseSpec(url=PG, password=SECRET),
        "password",
        "construct",
        "reference",
    ),
    Bad(
        "db-sqlite-memory-url",
        lambda t: DatabaseSpec(url="sqlite://"),
        "url",
        "construct",
        "SqliteSpec(memory=",
    ),
    Bad("db-zero-pool", lambda t: DatabaseSpec(url=PG, pool_size=0), "pool_size", "construct"),
    Bad(
        "db-negative-timeout",
        lambda t: DatabaseSpec(url=PG, pool_timeout=-1),
        "pool_timeout",
        "construct",
    ),
    Bad(
        "db-budget-without-workers",
        lambda t: DatabaseSpec(url=PG, max_connections=10),
        "workers",
        "construct",
        "max_connections // workers",
    ),
    Bad(
        "db-budget-too-small",
        lambda t: DatabaseSpec(url=PG, max_connections=3, workers=4),
        "workers",
        "construct",
        "at least one connection",
    ),
    # -- DatabaseSpec, at the first get() ----------------------------------------
    Bad(
        "db-unreachable-host",
        lambda t: DatabaseSpec(
            url=UNREACHABLE_POSTGRES.replace("postgres@", f"postgres:{SECRET}@")
        ),
        "url",
        "build",
        "cannot connect",
    ),
    Bad(
        "db-unknown-driver",
        lambda t: DatabaseSpec(url="postgresql+psycopgg://app@db.invalid/sales"),
        "url",
        "build",
        "no dialect+driver 'postgresql+psycopgg'",
    ),
    Bad(
        "db-driver-not-installed",
        lambda t: DatabaseSpec(url="mssql+pyodbc://app@db.invalid/sales"),
        "url",
        "build",
        "pip install pyodbc",
        needs=_needs_missing("pyodbc"),
    ),
    Bad(
        "db-async-driver",
        lambda t: DatabaseSpec(url="postgresql+asyncpg://app@db.invalid/sales"),
        "url",
        "build",
        "asyncio driver",
    ),
    Bad(
        "db-secret-env-unset",
        lambda t: DatabaseSpec(url=PG, password="env:HANDLES_TEST_SURELY_UNSET_PW"),
        "password",
        "build",
        "HANDLES_TEST_SURELY_UNSET_PW is not set",
    ),
    Bad(
        "db-secret-file-missing",
        lambda t: DatabaseSpec(url=PG, password=f"file:{t / 'no-such-secret'}"),
        "password",
        "build",
        "cannot read secret file",
    ),
    Bad(
        "db-sqlite-missing-folder",
        lambda t: DatabaseSpec(url=f"sqlite:///{(t / 'missing' / 'a.db').as_posix()}"),
        "url",
        "build",
        "unable to open database file",
    ),
    Bad(
        "db-postgres-unknown-database",
        lambda t: DatabaseSpec(url=other_database(postgres_url(), "handles_no_such_database")),
        "url",
        "build",
        'database "handles_no_such_database" does not exist',
        needs=postgres_url,
    ),
]


def test_the_table_is_big_enough():
    assert len(CASES) >= 10
    assert len({c.name for c in CASES}) == len(CASES)
    assert {c.when for c in CASES} == {"construct", "build"}


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _check_message(exc: BaseException, case: Bad, kind_class: str) -> None:
    message = str(exc)
    assert kind_class in message, message
    assert case.field in message, message
    assert case.match.lower() in message.lower(), message
    assert all(SECRET not in str(e) for e in _chain(exc)), "a secret leaked into an error"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Bad, tmp_path: Path) -> None:
    if case.needs is not None:
        case.needs()
    kind_class = "SqliteSpec" if case.name.startswith("sqlite") else "DatabaseSpec"
    if case.when == "construct":
        with pytest.raises(SpecError) as info:
            case.make(tmp_path)
        _check_message(info.value, case, kind_class)
        assert len(handles.registry()) == 0
        return

    spec = case.make(tmp_path)
    before = handles.registry().stats().get(spec.cache_key())
    errors_before = 0 if before is None else before.errors  # stats outlive close()
    for attempt in (1, 2):  # the failure is not cached: the second get() builds again
        with pytest.raises(BuildError) as info:
            spec.get()
        _check_message(info.value, case, kind_class)
        cause = info.value.__cause__
        assert isinstance(cause, SpecError), f"cause is {cause!r}"
        assert case.field in [field for field, _ in cause.problems]
        stats = handles.registry().stats()[spec.cache_key()]
        assert (stats.builds, stats.errors - errors_before, stats.live) == (0, attempt, 0)
    assert spec not in handles.registry()
    assert len(handles.registry()) == 0, "nothing half-built (engines, keepers) stays live"


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
