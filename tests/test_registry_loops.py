"""The loop scope keeps every promise: each object is torn down once, whichever way its loop ends.

Loops end three ways: shut down properly (asyncio.run returning), closed
bluntly with `loop.close()` and no `shutdown_asyncgens()`, or still running while
objects are retired. Tests on the real aiosqlite and PostgreSQL drivers check that
no connection is left behind.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import uuid
import weakref
from collections import Counter
from typing import Annotated, ClassVar, Literal

import pytest

import handles
from handles import Identity, Scope, Spec


class Client:
    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.get_running_loop()


TORN_DOWN: Counter[str] = Counter()
HOW: dict[str, str] = {}
LOCK = threading.Lock()


class ClientSpec(Spec[Client]):
    kind: Literal["test-loop-client"] = "test-loop-client"
    scope: ClassVar[Scope] = "loop"
    name: Annotated[str, Identity]

    async def abuild(self) -> Client:
        await asyncio.sleep(0)
        return Client(self.name)

    async def ateardown(self, value: Client) -> None:
        assert asyncio.get_running_loop() is value.loop, "torn down on another loop"
        await asyncio.sleep(0)  # really async: a loop's end may cut it short here
        self._count(value, "async")

    def teardown(self, value: Client) -> None:
        self._count(value, "sync")  # only where the loop can no longer run anything

    def _count(self, value: Client, how: str) -> None:
        with LOCK:
            TORN_DOWN[value.name] += 1
            HOW[value.name] = how


@pytest.fixture(autouse=True)
def _forget() -> None:
    TORN_DOWN.clear()
    HOW.clear()


def _names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


def test_close_just_before_asyncio_run_returns_tears_every_object_down_once_on_its_loop():
    for pause in range(4):  # cut the cleanup short after 0..3 of its steps
        names = _names(f"close-{pause}", 50)

        async def main(names: list[str] = names, pause: int = pause) -> None:
            for name in names:
                await ClientSpec(name=name).aget()
            handles.registry().close()  # schedules the cleanup; the loop ends right after
            for _ in range(pause):
                await asyncio.sleep(0)

        asyncio.run(main())
        assert {n: TORN_DOWN[n] for n in names} == dict.fromkeys(names, 1)
        assert {HOW[n] for n in names} == {"async"}
    assert len(handles.registry()) == 0


def test_close_from_another_thread_racing_the_loops_end_loses_no_teardown():
    for round_ in range(20):
        names = _names(f"race-{round_}", 30)
        built = threading.Event()

        async def main(
            names: list[str] = names, built: threading.Event = built, pause: int = round_ % 5
        ) -> None:
            for name in names:
                await ClientSpec(name=name).aget()
            built.set()
            for _ in range(pause):
                await asyncio.sleep(0)

        loop_thread = threading.Thread(target=asyncio.run, args=(main(),))
        loop_thread.start()
        built.wait(60)
        handles.registry().close()
        loop_thread.join()
        handles.registry().close()  # a later call: whatever the race left is swept now
        assert {n: TORN_DOWN[n] for n in names} == dict.fromkeys(names, 1), f"round {round_}"


def test_a_loop_closed_bluntly_has_its_objects_torn_down_at_the_next_call_and_is_collected():
    loop = asyncio.new_event_loop()
    names = _names("blunt", 5)

    async def build() -> None:
        for name in names:
            await ClientSpec(name=name).aget()

    loop.run_until_complete(build())
    loop.close()  # no shutdown_asyncgens(): the keeper never runs
    gone = weakref.ref(loop)
    del loop
    assert len(handles.registry()) == 0  # the next registry call notices
    assert {n: TORN_DOWN[n] for n in names} == dict.fromkeys(names, 1)
    assert {HOW[n] for n in names} == {"sync"}
    gc.collect()
    assert gone() is None, "the registry (or its keeper) kept a closed loop alive"


class Detached:
    """An async client that keeps no reference to its loop (some do)."""

    def __init__(self, name: str) -> None:
        self.name = name


class DetachedSpec(Spec[Detached]):
    kind: Literal["test-loop-detached"] = "test-loop-detached"
    scope: ClassVar[Scope] = "loop"
    name: Annotated[str, Identity]

    async def abuild(self) -> Detached:
        return Detached(self.name)

    def teardown(self, value: Detached) -> None:
        with LOCK:
            TORN_DOWN[value.name] += 1
            HOW[value.name] = "sync"
        SWEPT.set()


SWEPT = threading.Event()


def test_a_bluntly_closed_loop_nobody_holds_is_collected_and_swept_without_a_registry_call():
    SWEPT.clear()
    loop = asyncio.new_event_loop()
    loop.run_until_complete(DetachedSpec(name="detached").aget())
    loop.close()
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None, "the registry (or its keeper) kept a closed loop alive"
    assert SWEPT.wait(30), "collecting the loop did not tear its objects down"
    assert TORN_DOWN["detached"] == 1


def test_use_holds_a_loop_object_until_the_block_ends():
    async def main() -> list[int]:
        spec = ClientSpec(name="leased")
        await spec.aget()
        seen = []
        with spec.use() as client:
            del client  # only the lease holds it now
            assert handles.registry().evict(spec)
            for _ in range(5):
                await asyncio.sleep(0)
            seen.append(TORN_DOWN["leased"])
        for _ in range(20):  # the block's end schedules the cleanup on this loop
            await asyncio.sleep(0)
        seen.append(TORN_DOWN["leased"])
        return seen

    assert asyncio.run(main()) == [0, 1]
    assert HOW["leased"] == "async"


def test_coroutines_of_one_loop_share_one_build_and_a_cancelled_builder_hands_over():
    class Slow(ClientSpec):
        kind: Literal["test-loop-slow"] = "test-loop-slow"  # type: ignore[assignment]
        builds: ClassVar[list[str]] = []

        async def abuild(self) -> Client:
            self.builds.append(self.name)
            await asyncio.sleep(0.01 if len(self.builds) == 1 else 0)
            return Client(self.name)

    async def main() -> set[int]:
        spec = Slow(name="slow")
        first = asyncio.ensure_future(spec.aget())
        await asyncio.sleep(0)  # the first caller is building
        others = [asyncio.ensure_future(spec.aget()) for _ in range(10)]
        await asyncio.sleep(0)
        first.cancel()  # the builder gives up: a waiter builds instead
        got = await asyncio.gather(*others)
        return {id(c) for c in got}

    assert len(asyncio.run(main())) == 1
    assert Slow.builds == ["slow", "slow"]


# -- real drivers ---------------------------------------------------------------------


def _blunt_loop_with(spec: Spec[object], query: str) -> None:
    from sqlalchemy import text

    loop = asyncio.new_event_loop()

    async def use() -> None:
        engine = await spec.aget()
        async with engine.connect() as conn:
            await conn.execute(text(query))

    loop.run_until_complete(use())
    loop.close()


def test_aiosqlite_engine_of_a_bluntly_closed_loop_is_disposed(tmp_path):
    pytest.importorskip("aiosqlite")
    from handles import AsyncDatabaseSpec

    spec = AsyncDatabaseSpec(url=f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    _blunt_loop_with(spec, "select 1")
    assert handles.registry().stats()[spec.cache_key()].live == 0
    gc.collect()


def test_postgres_sessions_of_loops_closed_either_way_go_back_to_baseline():
    pytest.importorskip("psycopg")
    from test_async_database import connections, pg_async

    tag = f"handles-loops-{uuid.uuid4().hex[:8]}"
    spec = pg_async(tag, pool_size=2)
    for _ in range(3):
        _blunt_loop_with(spec, "select 1")
    handles.registry().stats()  # the next call sweeps the closed loops
    gc.collect()  # their connections' sockets close with them
    assert connections(tag, settle_to=0) == 0

    async def proper() -> None:
        engine = await spec.aget()
        async with engine.connect() as conn:
            from sqlalchemy import text

            await conn.execute(text("select 1"))

    asyncio.run(proper())
    assert connections(tag, settle_to=0) == 0
    assert handles.registry().stats()[spec.cache_key()].builds == 4
