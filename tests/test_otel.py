"""OpenTelemetry: the registry's and database pools' instruments, read back through the SDK."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.metrics", reason="the otel tests need opentelemetry-sdk")
pytest.importorskip("sqlalchemy")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import text

import handles
from handles import DatabaseSpec
from handles.integrations.opentelemetry import instrument
from support.kinds import EchoSpec


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics = instrument(provider)
    try:
        yield reader
    finally:
        metrics.close()
        provider.shutdown()


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Metric name -> its data points, from one collection."""
    found: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "handles"
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def value_for(found: dict[str, list[Any]], name: str, **attributes: str) -> Any:
    matching = [
        p
        for p in found.get(name, [])
        if all(p.attributes.get(k) == v for k, v in attributes.items())
    ]
    assert len(matching) == 1, (name, attributes, found.get(name))
    return matching[0]


def test_builds_hits_live_and_duration_carry_kind_and_short_key(reader):
    spec = EchoSpec(name=f"otel-{uuid.uuid4()}")
    spec.get()
    for _ in range(4):
        spec.get()
    key = {"handles.kind": "test-echo", "handles.cache_key": spec.cache_key()[:12]}

    found = points(reader)
    assert value_for(found, "handles.registry.builds", **key).value == 1
    assert value_for(found, "handles.registry.hits", **key).value == 4
    assert value_for(found, "handles.registry.errors", **key).value == 0
    assert value_for(found, "handles.registry.live", **key).value == 1
    duration = value_for(found, "handles.registry.build.duration", **key)
    assert duration.count == 1
    assert duration.sum >= 0

    handles.registry().evict(spec)
    spec.get()
    found = points(reader)
    assert value_for(found, "handles.registry.builds", **key).value == 2
    assert value_for(found, "handles.registry.evictions", **key).value == 1
    assert value_for(found, "handles.registry.build.duration", **key).count == 2


def test_a_failed_build_counts_as_an_error(reader, tmp_path):
    blocker = tmp_path / "block"
    blocker.touch()
    spec = EchoSpec(name=f"otel-{uuid.uuid4()}", fail_if_exists=str(blocker))
    with pytest.raises(handles.BuildError):
        spec.get()
    key = {"handles.kind": "test-echo", "handles.cache_key": spec.cache_key()[:12]}
    found = points(reader)
    assert value_for(found, "handles.registry.errors", **key).value == 1
    assert value_for(found, "handles.registry.builds", **key).value == 0


def test_memory_usage_is_reported_by_device(reader, tmp_path):
    spec = handles.SqliteSpec(path=str(tmp_path / "m.db"))
    spec.get()
    stats = handles.registry().stats()[spec.cache_key()]
    found = points(reader)
    host = [
        p
        for p in found.get("handles.registry.memory.usage", [])
        if p.attributes["handles.cache_key"] == spec.cache_key()[:12]
    ]
    # What the kind reports is what is exported: nothing when it reports nothing.
    assert [p.value for p in host] == ([stats.nbytes] if stats.nbytes else [])
    assert all(p.attributes["handles.device"] == "cpu" for p in host)


def test_closed_instrumentation_reports_nothing_more(tmp_path):
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics = instrument(provider)
    metrics.close()
    EchoSpec(name=f"otel-{uuid.uuid4()}").get()
    data = reader.get_metrics_data()
    names = {
        m.name
        for r in (data.resource_metrics if data else [])
        for s in r.scope_metrics
        for m in s.metrics
        if m.data.data_points
    }
    assert not names & {"handles.registry.builds", "handles.registry.build.duration"}
    provider.shutdown()


def test_database_pool_follows_the_connection_pool_conventions(reader, tmp_path):
    spec = DatabaseSpec(url=f"sqlite:///{(tmp_path / 'pool.db').as_posix()}", pool_size=2)
    engine = spec.get()
    pool = {"db.client.connection.pool.name": f"database:{spec.cache_key()[:12]}"}

    with engine.connect() as held:
        held.execute(text("select 1"))
        found = points(reader)
        used = value_for(
            found, "db.client.connection.count", **pool, **{"db.client.connection.state": "used"}
        )
        assert used.value == 1
        assert (
            value_for(found, "db.client.connection.max", **pool).value
            == 2 + engine.pool._max_overflow
        )
        assert value_for(found, "db.client.connection.pending_requests", **pool).value == 0
    with engine.connect() as again:
        again.execute(text("select 1"))

    found = points(reader)
    idle = value_for(
        found, "db.client.connection.count", **pool, **{"db.client.connection.state": "idle"}
    )
    used = value_for(
        found, "db.client.connection.count", **pool, **{"db.client.connection.state": "used"}
    )
    assert (idle.value, used.value) == (1, 0)
    # The first connection is how the engine is found; the second is timed in full.
    assert value_for(found, "db.client.connection.use_time", **pool).count >= 1
    assert value_for(found, "db.client.connection.wait_time", **pool).count >= 1


def test_a_waiting_caller_is_a_pending_request(reader, tmp_path):
    spec = DatabaseSpec(
        url=f"sqlite:///{(tmp_path / 'wait.db').as_posix()}", pool_size=1, max_overflow=0
    )
    engine = spec.get()
    pool = {"db.client.connection.pool.name": f"database:{spec.cache_key()[:12]}"}
    with engine.connect():
        pass  # the engine is found on its first connection
    held = engine.connect()
    waiting = threading.Thread(target=lambda: engine.connect().close())
    waiting.start()
    try:
        # Deterministic: wait until the second caller is inside the pool's connect().
        for _ in range(2000):
            if value_for(points(reader), "db.client.connection.pending_requests", **pool).value:
                break
            threading.Event().wait(0.005)
        assert value_for(points(reader), "db.client.connection.pending_requests", **pool).value == 1
    finally:
        held.close()
        waiting.join()
    found = points(reader)
    assert value_for(found, "db.client.connection.pending_requests", **pool).value == 0


def test_engines_the_registry_did_not_build_are_left_alone(reader, tmp_path):
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{(tmp_path / 'own.db').as_posix()}")
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        assert "connect" not in vars(engine.pool)
        assert "db.client.connection.count" not in {
            name for name, found in points(reader).items() if found
        }
    finally:
        engine.dispose()


def test_import_handles_does_not_import_opentelemetry(run_python):
    out = run_python("import sys, handles; print('opentelemetry' in sys.modules)")
    assert out == "False"


def test_an_async_database_pool_is_measured_under_its_spec(reader, tmp_path):
    import asyncio

    from handles import AsyncDatabaseSpec

    pytest.importorskip("aiosqlite")
    spec = AsyncDatabaseSpec(url=f"sqlite+aiosqlite:///{(tmp_path / 'a.db').as_posix()}")
    pool = {"db.client.connection.pool.name": f"async-database:{spec.cache_key()[:12]}"}

    async def use() -> int:
        engine = await spec.aget()
        async with engine.connect() as conn:  # the engine is found here
            await conn.execute(text("select 1"))
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))
            found = points(reader)
            used = {"db.client.connection.state": "used"}
            return int(value_for(found, "db.client.connection.count", **pool, **used).value)

    assert asyncio.run(use()) == 1
    assert value_for(points(reader), "db.client.connection.use_time", **pool).count >= 1
