"""OpenTelemetry metrics for this process's registry and its database pools.

    from handles.integrations.opentelemetry import instrument

    metrics = instrument()          # the global MeterProvider, or pass meter_provider=
    ...
    metrics.close()                 # optional: stop observing (tests, reconfiguration)

Registry instruments, each with attributes `handles.kind` and `handles.cache_key`
(the key's first 12 characters, as the registry's log lines print it):

- `handles.registry.builds`, `.hits`, `.errors`, `.evictions`: counters, read
  from `registry().stats()` at each collection;
- `handles.registry.live`: live objects (an up-down counter);
- `handles.registry.memory.usage`: bytes held, with `handles.device` ("cpu" for
  host memory, "cuda:0" and so on for accelerators);
- `handles.registry.build.duration`: a histogram of build seconds, recorded as
  each build ends (from `registry().subscribe`).

Nothing here runs on a warm `get()`: hits are counted by the registry as
always and read at collection time, so instrumenting costs a `get()` nothing.

Pools of DatabaseSpec and AsyncDatabaseSpec engines follow OpenTelemetry's
database client semantic conventions: `db.client.connection.count` (with
`db.client.connection.state` idle or used), `db.client.connection.max`,
`db.client.connection.pending_requests`, `db.client.connection.wait_time` and
`db.client.connection.use_time`, each with `db.client.connection.pool.name`
set to "KIND:KEYPREFIX". An engine is picked up on its first connection after
the registry built it; engines the registry did not build are left alone.

Needs the `otel` extra (opentelemetry-api); the SDK and an exporter are the
application's choice. Never imported by `import handles`.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from handles._optional import require
from handles._registry import KeyStats, registry

__all__ = ["DATABASE_KINDS", "Instrumentation", "instrument"]

require("opentelemetry.metrics", "otel")  # before any OpenTelemetry import: say what to install

from opentelemetry.metrics import (  # noqa: E402
    CallbackOptions,
    Meter,
    MeterProvider,
    Observation,
    get_meter_provider,
)

# Kinds whose live object is a SQLAlchemy engine with a connection pool.
DATABASE_KINDS = ("database", "async-database")
KEY_CHARS = 12  # as the registry's log lines print a key
SCOPE = "handles"


def instrument(meter_provider: MeterProvider | None = None) -> Instrumentation:
    """Start reporting this process's registry (and its database pools) to OpenTelemetry.

    meter_provider: where the instruments live; the global one when None. Call it
    once per process (each call adds its own instruments); `close()` on the
    result stops reporting.
    """
    provider = meter_provider if meter_provider is not None else get_meter_provider()
    return Instrumentation(provider.get_meter(SCOPE, _version()))


class Instrumentation:
    """The instruments `instrument()` made; `close()` stops them reporting."""

    def __init__(self, meter: Meter) -> None:
        self._meter = meter
        self._closed = False
        self._duration = meter.create_histogram(
            "handles.registry.build.duration", unit="s", description="Seconds each build took"
        )
        for name, field, description in (
            ("builds", "builds", "Objects built"),
            ("hits", "hits", "get() calls answered by a live object"),
            ("errors", "errors", "Builds that failed"),
            ("evictions", "evictions", "Objects retired by evict() or a bound"),
        ):
            meter.create_observable_counter(
                f"handles.registry.{name}",
                callbacks=[self._per_key(field)],
                unit="{" + ("object" if name != "hits" else "call") + "}",
                description=description,
            )
        meter.create_observable_up_down_counter(
            "handles.registry.live",
            callbacks=[self._per_key("live")],
            unit="{object}",
            description="Live objects the registry holds",
        )
        meter.create_observable_up_down_counter(
            "handles.registry.memory.usage",
            callbacks=[self._memory],
            unit="By",
            description="Memory held by live objects, as their kinds report it, by device",
        )
        self._unsubscribe = registry().subscribe(self._on_event)
        self._pools = _Pools(meter)

    def close(self) -> None:
        """Stop reporting: observations end, and pools get no new samples."""
        if self._closed:
            return
        self._closed = True
        self._unsubscribe()
        self._pools.close()

    # -- registry -------------------------------------------------------------

    def _on_event(self, event: str, kind: str, cache_key: str, seconds: float) -> None:
        # May run under the registry's lock: record, never call the registry.
        if event == "build":
            self._duration.record(seconds, _attributes(kind, cache_key))
        if event == "build" and kind in DATABASE_KINDS:
            self._pools.registry_built()

    def _per_key(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterator[Observation]:
            if self._closed:
                return
            for key, stats in registry().stats().items():
                yield Observation(getattr(stats, field), _attributes(stats.kind, key))

        return observe

    def _memory(self, options: CallbackOptions) -> Iterator[Observation]:
        if self._closed:
            return
        for key, stats in registry().stats().items():
            yield from _memory_of(key, stats)


def _memory_of(key: str, stats: KeyStats) -> Iterator[Observation]:
    if stats.nbytes:
        yield Observation(stats.nbytes, {**_attributes(stats.kind, key), "handles.device": "cpu"})
    for device, nbytes in stats.device_nbytes.items():
        yield Observation(nbytes, {**_attributes(stats.kind, key), "handles.device": device})


def _attributes(kind: str, cache_key: str) -> dict[str, str]:
    return {"handles.kind": kind, "handles.cache_key": cache_key[:KEY_CHARS]}


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("handle-specs")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return None


# -- database pools -----------------------------------------------------------------


class _Pool:
    """What is measured for one engine's pool: waiting callers, and checkout times."""

    def __init__(self, name: str, engine: Any) -> None:
        self.name = name
        self.engine = weakref.ref(engine)
        self.pending = 0
        self.lock = threading.Lock()
        self.listeners: list[tuple[str, Callable[..., None]]] = []


class _Pools:
    """Finds registry-built engines as they connect, and measures their pools.

    SQLAlchemy says when an engine connects (`engine_connect`), and the registry
    says which spec, if any, built that engine (`spec_of`). An engine is looked up
    once; one the registry did not build is looked up again only after the
    registry builds another database, so other engines cost one dictionary lookup
    per connection.
    """

    def __init__(self, meter: Meter) -> None:
        self._generation = 0  # registry database builds seen
        self._seen: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._pools: weakref.WeakKeyDictionary[Any, _Pool] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._closed = False
        self._listening = False
        try:
            from sqlalchemy import event  # noqa: PLC0415  (the sql extra)
            from sqlalchemy.engine import Engine  # noqa: PLC0415
        except ImportError:  # no SQLAlchemy: no database kinds to measure
            return
        attributes = "db.client.connection"
        meter.create_observable_up_down_counter(
            f"{attributes}.count",
            callbacks=[self._count],
            unit="{connection}",
            description="Connections in the pool, by state (idle, used)",
        )
        meter.create_observable_up_down_counter(
            f"{attributes}.max",
            callbacks=[self._max],
            unit="{connection}",
            description="The most connections the pool allows",
        )
        meter.create_observable_up_down_counter(
            f"{attributes}.pending_requests",
            callbacks=[self._pending],
            unit="{request}",
            description="Callers waiting for a connection",
        )
        self._wait = meter.create_histogram(
            f"{attributes}.wait_time", unit="s", description="Seconds to obtain a connection"
        )
        self._use = meter.create_histogram(
            f"{attributes}.use_time",
            unit="s",
            description="Seconds from a connection's checkout to its return",
        )
        self._event = event
        self._engine_class = Engine
        event.listen(Engine, "engine_connect", self._on_connect)
        self._listening = True

    def registry_built(self) -> None:
        self._generation += 1  # under the registry's lock: only count

    def close(self) -> None:
        self._closed = True
        if self._listening:
            self._event.remove(self._engine_class, "engine_connect", self._on_connect)
            self._listening = False
        for engine, pool in list(self._pools.items()):
            self._detach(engine, pool)
        self._pools.clear()

    # -- finding engines --------------------------------------------------------------

    def _on_connect(self, connection: Any) -> None:
        engine = connection.engine
        if self._seen.get(engine) == self._generation:
            return  # known: measured already, or not the registry's
        with self._lock:
            if self._closed or self._seen.get(engine) == self._generation:
                return
            self._seen[engine] = self._generation
            if engine in self._pools:
                return
            name = _pool_name(engine)
            if name is not None:
                self._attach(engine, _Pool(name, engine))

    def _attach(self, engine: Any, pool: _Pool) -> None:
        # Listening on the engine (not its pool) keeps listening after dispose().
        self._pools[engine] = pool
        use = self._use
        attributes = _pool_attributes(pool)

        def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
            record.info["handles.checkout"] = time.perf_counter()

        def checkin(dbapi_connection: Any, record: Any) -> None:
            started = record.info.pop("handles.checkout", None) if record is not None else None
            if started is not None:
                use.record(time.perf_counter() - started, attributes)

        pool.listeners = [("checkout", checkout), ("checkin", checkin)]
        for name, fn in pool.listeners:
            self._event.listen(engine, name, fn)
        _wrap_connect(engine.pool, pool, self._wait)

    def _detach(self, engine: Any, pool: _Pool) -> None:
        for name, fn in pool.listeners:
            if self._event.contains(engine, name, fn):
                self._event.remove(engine, name, fn)
        _unwrap_connect(engine.pool)

    # -- observations -----------------------------------------------------------------

    def _measured(self) -> list[tuple[Any, _Pool]]:
        if self._closed:
            return []
        with self._lock:
            found = list(self._pools.items())
        for engine, pool in found:
            # engine.dispose() replaces the pool: measure the new one's waits too.
            _wrap_connect(engine.pool, pool, self._wait)
        return found

    def _count(self, options: CallbackOptions) -> Iterator[Observation]:
        totals: dict[tuple[str, str], int] = {}
        for engine, pool in self._measured():
            used = _call(engine.pool, "checkedout")
            idle = _call(engine.pool, "checkedin")
            for state, value in (("used", used), ("idle", idle)):
                if value is not None:
                    totals[pool.name, state] = totals.get((pool.name, state), 0) + value
        for (name, state), value in totals.items():
            yield Observation(
                value,
                {"db.client.connection.pool.name": name, "db.client.connection.state": state},
            )

    def _max(self, options: CallbackOptions) -> Iterator[Observation]:
        totals: dict[str, int] = {}
        for engine, pool in self._measured():
            size = _call(engine.pool, "size")
            overflow = getattr(engine.pool, "_max_overflow", 0)
            if size is not None and overflow >= 0:  # -1: no limit
                totals[pool.name] = totals.get(pool.name, 0) + size + overflow
        for name, value in totals.items():
            yield Observation(value, {"db.client.connection.pool.name": name})

    def _pending(self, options: CallbackOptions) -> Iterator[Observation]:
        totals: dict[str, int] = {}
        for _engine, pool in self._measured():
            totals[pool.name] = totals.get(pool.name, 0) + pool.pending
        for name, value in totals.items():
            yield Observation(value, {"db.client.connection.pool.name": name})


def _pool_name(engine: Any) -> str | None:
    """ "KIND:KEYPREFIX" when the registry built `engine` (or its AsyncEngine), else None."""
    owners = [engine]
    try:
        from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: PLC0415

        proxy = AsyncEngine._retrieve_proxy_for_target(engine, regenerate=False)
    except Exception:  # no asyncio support installed, or no async proxy
        proxy = None
    if proxy is not None:
        owners.append(proxy)
    for owner in owners:
        spec = registry().spec_of(owner)
        if spec is not None and spec.kind in DATABASE_KINDS:
            return f"{spec.kind}:{spec.cache_key()[:KEY_CHARS]}"
    return None


def _pool_attributes(pool: _Pool) -> dict[str, str]:
    return {"db.client.connection.pool.name": pool.name}


def _call(pool: Any, name: str) -> int | None:
    method = getattr(pool, name, None)
    try:
        return int(method()) if method is not None else None
    except Exception:  # a pool kind without this count
        return None


def _wrap_connect(sa_pool: Any, pool: _Pool, wait: Any) -> None:
    """Time `sa_pool.connect()` (how long a caller waits) and count callers inside it."""
    if "connect" in vars(sa_pool):
        return  # measured already
    original = sa_pool.connect

    def connect() -> Any:
        with pool.lock:
            pool.pending += 1
        started = time.perf_counter()
        try:
            return original()
        finally:
            wait.record(time.perf_counter() - started, _pool_attributes(pool))
            with pool.lock:
                pool.pending -= 1

    sa_pool.connect = connect


def _unwrap_connect(sa_pool: Any) -> None:
    vars(sa_pool).pop("connect", None)
