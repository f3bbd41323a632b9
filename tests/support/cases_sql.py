"""Contract cases for the SQL kinds: SQLite files and in-memory databases, and
DatabaseSpec and AsyncDatabaseSpec on an SQLite file and on the real PostgreSQL
(skipped, saying why, when HANDLES_TEST_POSTGRES_URL is unset)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from handles import AsyncDatabaseSpec, DatabaseSpec, SqliteSpec
from support.cases import KindCase

POSTGRES_ENV = "HANDLES_TEST_POSTGRES_URL"
# Nothing listens on port 1: connecting is refused at once, with no server needed.
UNREACHABLE_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:1/test"


def postgres_url() -> str:
    """The test server's URL, or a skip that says how to get one."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(
            f"{POSTGRES_ENV} is unset (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
        )
    return url


def other_database(url: str, name: str) -> str:
    """`url` pointing at database `name` on the same server."""
    from sqlalchemy import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


def tagged(url: str, tag: str) -> str:
    """`url` whose connections show `tag` as application_name in pg_stat_activity.

    Also gives each test its own cache key: the registry keeps stats per key.
    """
    from sqlalchemy import make_url

    tagged_url = make_url(url).update_query_dict({"application_name": tag})
    return tagged_url.render_as_string(hide_password=False)


def ping_connection(conn: Any) -> object:
    return conn.execute("select 1").fetchone()


def ping_engine(engine: Any) -> object:
    from sqlalchemy import text

    with engine.connect() as conn:
        return conn.execute(text("select 1")).scalar_one()


CASES = [
    KindCase(
        name="sqlite-file",
        make=lambda tmp: SqliteSpec(path=tmp / "contract.db"),
        placement_variant=lambda s: s.replace(pragmas={"synchronous": "normal"}),
        identity_variant=lambda s: s.replace(path=s.path + "-other"),
        # The folder does not exist, so the file cannot be created.
        broken=lambda tmp: SqliteSpec(path=tmp / "missing" / "x.db"),
        alive=ping_connection,
    ),
    KindCase(
        name="sqlite-memory",
        make=lambda tmp: SqliteSpec(memory=f"contract-{tmp.name}"),
        placement_variant=lambda s: s.replace(pragmas={"cache_size": -4000}),
        identity_variant=lambda s: s.replace(memory=s.memory + "-other"),
        broken=lambda tmp: SqliteSpec(path=tmp / "absent.db", read_only=True),
        alive=ping_connection,
    ),
    KindCase(
        name="database-sqlite",
        make=lambda tmp: DatabaseSpec(url=f"sqlite:///{Path(tmp, 'contract.db').as_posix()}"),
        placement_variant=lambda s: s.replace(pool_size=2),
        identity_variant=lambda s: s.replace(url=s.url + "-other"),
        broken=lambda tmp: DatabaseSpec(url=f"sqlite:///{Path(tmp, 'missing', 'x.db').as_posix()}"),
        alive=ping_engine,
        requires=("sqlalchemy",),
    ),
    KindCase(
        name="database-postgres",
        make=lambda tmp: DatabaseSpec(
            url=tagged(postgres_url(), f"handles-{tmp.name}"), pool_size=2, max_overflow=2
        ),
        placement_variant=lambda s: s.replace(pool_size=3),
        identity_variant=lambda s: s.replace(url=other_database(s.url, "postgres")),
        broken=lambda tmp: DatabaseSpec(url=UNREACHABLE_POSTGRES),
        alive=ping_engine,
        requires=("sqlalchemy", "psycopg"),
    ),
    # Loop scope: the suite gets these through `await spec.aget()` on one event loop.
    KindCase(
        name="async-database-sqlite",
        make=lambda tmp: AsyncDatabaseSpec(
            url=f"sqlite+aiosqlite:///{Path(tmp, 'contract.db').as_posix()}"
        ),
        placement_variant=lambda s: s.replace(pool_size=2),
        identity_variant=lambda s: s.replace(url=s.url + "-other"),
        broken=lambda tmp: AsyncDatabaseSpec(
            url=f"sqlite+aiosqlite:///{Path(tmp, 'missing', 'x.db').as_posix()}"
        ),
        requires=("sqlalchemy", "greenlet", "aiosqlite"),
    ),
    KindCase(
        name="async-database-postgres",
        make=lambda tmp: AsyncDatabaseSpec(
            url=as_async(tagged(postgres_url(), f"handles-{tmp.name}")), pool_size=2
        ),
        placement_variant=lambda s: s.replace(pool_size=3),
        identity_variant=lambda s: s.replace(url=other_database(s.url, "postgres")),
        broken=lambda tmp: AsyncDatabaseSpec(url=as_async(UNREACHABLE_POSTGRES)),
        requires=("sqlalchemy", "greenlet", "psycopg"),
    ),
]


def as_async(url: str) -> str:
    """`url` with psycopg's asyncio driver."""
    from sqlalchemy import make_url

    parsed = make_url(url).set(drivername="postgresql+psycopg_async")
    return parsed.render_as_string(hide_password=False)
