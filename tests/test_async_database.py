"""AsyncDatabaseSpec: one AsyncEngine per event loop, on the real PostgreSQL and on aiosqlite.

PostgreSQL tests read HANDLES_TEST_POSTGRES_URL (set by .ci/run) and skip, saying
so, where it is unset.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("greenlet")
from sqlalchemy import make_url, text

import handles
from handles import AsyncDatabaseSpec, BuildError, DatabaseSpec, SpecError
from support.cases_sql import postgres_url, tagged


def async_url(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg_async").render_as_string(hide_password=False)


def pg_async(tag: str, **options: Any) -> AsyncDatabaseSpec:
    return AsyncDatabaseSpec(url=async_url(tagged(postgres_url(), tag)), **options)


def connections(tag: str, *, settle_to: int | None = None) -> int:
    """Server sessions named `tag`. With `settle_to`, waits (up to 60 s) for that count:
    a closed connection's server process leaves pg_stat_activity a moment after
    the client hangs up."""
    monitor = DatabaseSpec(url=tagged(postgres_url(), "handles-async-monitor"), pool_size=1)
    sql = text("select count(*) from pg_stat_activity where application_name = :tag")
    deadline = time.monotonic() + 60
    while True:
        with monitor.get().connect() as conn:
            count = int(conn.execute(sql, {"tag": tag}).scalar_one())
        if settle_to is None or count == settle_to or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


async def select_one(spec: AsyncDatabaseSpec) -> int:
    engine = await spec.aget()
    async with engine.connect() as conn:
        return int((await conn.execute(text("select 1"))).scalar_one())


# -- validation ---------------------------------------------------------------------


def test_keys_are_pinned():
    # Pinned: a change here silently invalidates every cache users persisted.
    pinned = {
        AsyncDatabaseSpec(url="postgresql+psycopg_async://app@db/sales"): (
            "e7a86fd8d37cef027eeac315b52a87ecdce44c73eb2139f9e285e046a140e790"
        ),
        AsyncDatabaseSpec(url="postgresql+asyncpg://app:pw@db/sales"): (
            "542f4d9dd9352752197c52797b4d234628e96e8a3ba0d01b56d84425073f9700"
        ),
        AsyncDatabaseSpec(url="sqlite+aiosqlite:////tmp/a.db", check_connection=False): (
            "b0fb0499344e7f7ccac23f05d42158a8493ed887ec2ea4f93a53bd4a5fe4f2af"
        ),
    }
    assert {spec: spec.cache_key() for spec in pinned} == pinned


def test_same_fields_and_roles_as_database_spec():
    # Both kinds subclass one shared base (handles.specs._sqlalchemy), not each other.
    assert list(AsyncDatabaseSpec.model_fields) == list(DatabaseSpec.model_fields)
    assert AsyncDatabaseSpec.identity_fields == DatabaseSpec.identity_fields == ("url",)
    assert AsyncDatabaseSpec.placement_fields == DatabaseSpec.placement_fields


def test_a_synchronous_driver_is_refused_with_the_way_out():
    # SQLAlchemy's create_async_engine refuses pysqlite too (psycopg it takes: see
    # test_async_database_urls).
    spec = AsyncDatabaseSpec(url="sqlite:///x.db", check_connection=False)

    async def main() -> None:
        await spec.aget()

    with pytest.raises(BuildError) as info:
        asyncio.run(main())
    assert "AsyncDatabaseSpec.url" in str(info.value)
    assert "asyncio driver" in str(info.value)


def test_database_spec_points_async_drivers_to_the_async_kind():
    spec = DatabaseSpec(url="postgresql+asyncpg://u@127.0.0.1/db", check_connection=False)
    with pytest.raises(BuildError, match="AsyncDatabaseSpec"):
        spec.get()


def test_get_outside_a_loop_says_to_use_aget():
    spec = AsyncDatabaseSpec(url="sqlite+aiosqlite:///x.db", check_connection=False)
    with pytest.raises(BuildError, match=r"await spec\.aget\(\)"):
        spec.get()


def test_json_round_trip_and_kind():
    spec = AsyncDatabaseSpec(url="sqlite+aiosqlite:///x.db", pool_size=2)
    assert spec.kind == "async-database"
    again = AsyncDatabaseSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
    assert again.cache_key() == spec.cache_key()
    assert spec.cache_key() != DatabaseSpec(url="sqlite+aiosqlite:///x.db").cache_key()


def test_a_masked_password_needs_a_secret_reference():
    spec = AsyncDatabaseSpec(url="postgresql+asyncpg://u:hunter2@127.0.0.1/db")
    assert "hunter2" not in repr(spec)
    assert "hunter2" not in spec.model_dump_json()
    with pytest.raises(SpecError):
        AsyncDatabaseSpec.model_validate_json(spec.model_dump_json())


# -- aiosqlite ----------------------------------------------------------------------


def test_aiosqlite_engine_per_loop_disposed_when_the_loop_ends(tmp_path: Path):
    pytest.importorskip("aiosqlite")
    spec = AsyncDatabaseSpec(url=f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    engines: list[Any] = []

    async def main(n: int) -> int:
        engine = await spec.aget()
        engines.append(engine)
        async with spec.transaction() as conn:
            await conn.execute(text("create table if not exists t (x int)"))
            await conn.execute(text("insert into t values (:x)"), {"x": n})
        async with engine.connect() as conn:
            return int((await conn.execute(text("select count(*) from t"))).scalar_one())

    assert asyncio.run(main(1)) == 1
    assert asyncio.run(main(2)) == 2
    assert engines[0] is not engines[1]
    assert [e.sync_engine.pool.checkedin() for e in engines] == [0, 0], "disposed"
    assert len(handles.registry()) == 0


# -- the real PostgreSQL --------------------------------------------------------------


def test_sequential_loops_never_share_an_engine_and_leave_no_connections():
    tag = f"handles-async-{uuid.uuid4().hex[:8]}"
    spec = pg_async(tag)

    async def main() -> tuple[int, int]:
        results = await asyncio.gather(*(select_one(spec) for _ in range(10)))
        return sum(results), id(await spec.aget())

    first = asyncio.run(main())
    second = asyncio.run(main())
    assert first[0] == second[0] == 10
    assert connections(tag, settle_to=0) == 0, "each loop's engine was disposed on that loop"
    stats = handles.registry().stats()[spec.cache_key()]
    assert (stats.builds, stats.live) == (2, 0)


def test_loops_in_threads_each_get_their_engine_never_a_different_loops():
    tag = f"handles-async-threads-{uuid.uuid4().hex[:8]}"
    spec = pg_async(tag, pool_size=2, max_overflow=0)
    errors: list[BaseException] = []
    totals: list[int] = []

    async def main() -> None:
        results = await asyncio.gather(*(select_one(spec) for _ in range(20)))
        totals.append(sum(results))

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert totals == [20] * 4
    assert connections(tag, settle_to=0) == 0
    assert handles.registry().stats()[spec.cache_key()].builds == 4


def test_a_wrong_database_fails_at_aget_and_caches_nothing():
    url = make_url(async_url(postgres_url())).set(database=f"nope_{uuid.uuid4().hex[:6]}")
    spec = AsyncDatabaseSpec(url=url.render_as_string(hide_password=False))

    async def main() -> None:
        await spec.aget()

    with pytest.raises(BuildError, match=r"AsyncDatabaseSpec\.url: cannot connect"):
        asyncio.run(main())
    assert len(handles.registry()) == 0
