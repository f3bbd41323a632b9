"""aget() and the loop scope: one object per event loop, closed on that loop when it ends."""

from __future__ import annotations

import asyncio
import threading
from typing import Annotated, ClassVar, Literal

import pytest

import handles
from handles import BuildError, Identity, Placement, Scope, Spec
from support.kinds import EchoSpec


class LoopBound:
    """Like an async client: usable only on the loop that made it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self.closed_on: asyncio.AbstractEventLoop | None = None

    async def ping(self) -> str:
        if asyncio.get_running_loop() is not self.loop:
            raise RuntimeError("attached to a different loop")
        if self.closed:
            raise RuntimeError("closed")
        await asyncio.sleep(0)
        return self.name


CLOSED: list[str] = []


class LoopSpec(Spec[LoopBound]):
    kind: Literal["test-loop"] = "test-loop"
    scope: ClassVar[Scope] = "loop"
    name: Annotated[str, Identity]
    delay: Annotated[float, Placement] = 0.0

    async def abuild(self) -> LoopBound:
        if self.delay:
            await asyncio.sleep(self.delay)
        return LoopBound(self.name)

    async def ateardown(self, value: LoopBound) -> None:
        await asyncio.sleep(0)  # really async: runs on the object's own loop
        value.closed_on = asyncio.get_running_loop()
        value.closed = True
        CLOSED.append(value.name)


@pytest.fixture(autouse=True)
def _forget() -> None:
    CLOSED.clear()


def test_one_object_per_loop_closed_on_its_loop_when_asyncio_run_returns():
    spec = LoopSpec(name="per-loop")
    seen: list[LoopBound] = []

    async def main() -> None:
        first = await spec.aget()
        assert await spec.aget() is first
        assert spec.get() is first, "get() works in a loop once aget() built it"
        assert await first.ping() == "per-loop"
        seen.append(first)

    asyncio.run(main())
    asyncio.run(main())
    assert seen[0] is not seen[1], "a new loop gets its own object"
    assert [o.closed for o in seen] == [True, True]
    assert [o.closed_on is o.loop for o in seen] == [True, True]
    assert CLOSED == ["per-loop", "per-loop"]
    assert len(handles.registry()) == 0
    stats = handles.registry().stats()[spec.cache_key()]
    assert (stats.builds, stats.hits, stats.live) == (2, 4, 0)


def test_get_outside_a_loop_is_a_clear_error():
    with pytest.raises(BuildError, match=r"await spec\.aget\(\)"):
        LoopSpec(name="no-loop").get()

    async def unbuilt() -> None:
        LoopSpec(name="no-loop").get()

    with pytest.raises(BuildError, match="no object in this event loop yet"):
        asyncio.run(unbuilt())


def test_coroutines_of_one_loop_share_one_build():
    spec = LoopSpec(name="single-flight", delay=0.05)

    async def main() -> set[int]:
        got = await asyncio.gather(*(spec.aget() for _ in range(20)))
        return {id(g) for g in got}

    assert len(asyncio.run(main())) == 1
    assert handles.registry().stats()[spec.cache_key()].builds == 1


def test_four_threads_with_their_own_loops_get_four_objects_all_closed():
    spec = LoopSpec(name="threads")
    objects: list[LoopBound] = []
    errors: list[BaseException] = []

    async def main() -> None:
        obj = await spec.aget()
        for _ in range(20):
            await (await spec.aget()).ping()
        objects.append(obj)

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
    assert len({id(o) for o in objects}) == 4
    assert all(o.closed and o.closed_on is o.loop for o in objects)
    assert len(handles.registry()) == 0


def test_a_failed_async_build_reaches_every_waiter_and_caches_nothing():
    class Broken(LoopSpec):
        kind: Literal["test-loop-broken"] = "test-loop-broken"  # type: ignore[assignment]

        async def abuild(self) -> LoopBound:
            await asyncio.sleep(0.01)
            raise OSError("no server")

    spec = Broken(name="broken")

    async def main() -> list[BaseException]:
        return await asyncio.gather(*(spec.aget() for _ in range(5)), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, BuildError) for r in results)
    assert len({id(r) for r in results}) == 5, "each waiter gets its own error"
    assert "OSError: no server" in str(results[0])
    assert len(handles.registry()) == 0


def test_close_from_another_thread_closes_on_the_objects_loop():
    spec = LoopSpec(name="closed-remotely")
    built, closed_remotely = threading.Event(), threading.Event()
    result: list[object] = []

    async def main() -> None:
        obj = await spec.aget()
        loop = obj.loop
        del obj
        built.set()
        closed_remotely.wait()
        for _ in range(100):  # let the scheduled teardown run on this loop
            if CLOSED:
                break
            await asyncio.sleep(0.01)
        result.append(list(CLOSED))
        again = await spec.aget()
        result.append(again.loop is loop and not again.closed)

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    built.wait()
    handles.registry().close()
    closed_remotely.set()
    thread.join()
    assert result == [["closed-remotely"], True]


def test_aget_builds_process_objects_off_the_loop():
    spec = EchoSpec(name="slow-model", delay=1.0)
    ticks = [0]

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ticks[0] += 1
            await asyncio.sleep(0.01)

    async def main() -> object:
        stop = asyncio.Event()
        task = asyncio.create_task(ticker(stop))
        obj = await spec.aget()
        stop.set()
        await task
        return obj

    obj = asyncio.run(main())
    assert obj is spec.get(), "the same object get() returns"
    assert ticks[0] >= 40, f"the loop kept running during the 1 s build ({ticks[0]} ticks)"


def test_aget_of_process_objects_is_single_flight_with_threads():
    spec = EchoSpec(name="flight", delay=0.2)

    async def main() -> set[int]:
        got = await asyncio.gather(*(spec.aget() for _ in range(8)))
        return {id(g) for g in got}

    from_thread: list[int] = []
    thread = threading.Thread(target=lambda: from_thread.append(id(spec.get())))
    thread.start()
    ids = asyncio.run(main())
    thread.join()
    assert ids | set(from_thread) == ids
    assert len(ids) == 1
    assert handles.registry().stats()[spec.cache_key()].builds == 1


def test_a_warm_aget_is_a_hit_not_a_build():
    spec = EchoSpec(name="warm-aget")
    obj = spec.get()

    async def main() -> None:
        for _ in range(1000):
            assert await spec.aget() is obj

    asyncio.run(main())
    stats = handles.registry().stats()[spec.cache_key()]
    assert (stats.builds, stats.hits) == (1, 1000)


def test_membership_and_evict_outside_a_loop_are_plain_answers():
    spec = LoopSpec(name="outside")
    assert spec not in handles.registry()
    assert handles.registry().evict(spec) is False

    async def main() -> tuple[bool, bool, bool]:
        await spec.aget()
        inside = spec in handles.registry()
        evicted = handles.registry().evict(spec)
        for _ in range(1000):  # let the teardown scheduled on this loop run
            if CLOSED:
                break
            await asyncio.sleep(0)
        return inside, evicted, spec in handles.registry()

    assert asyncio.run(main()) == (True, True, False)
    assert CLOSED == ["outside"]


def test_a_teardown_cut_short_by_the_loops_end_is_finished_by_the_loop():
    spec = LoopSpec(name="cut-short")

    async def main() -> None:
        await spec.aget()
        handles.registry().evict(spec)  # schedules the teardown; main returns at once

    asyncio.run(main())
    assert CLOSED == ["cut-short"]
    assert len(handles.registry()) == 0
