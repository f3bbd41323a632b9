"""FileSpec on fsspec's async filesystems: `await spec.aget()` is this loop's own filesystem.

On http (a server on loopback) and S3 (moto's server on loopback, as test_file does):
asynchronous=True, its session opened on the running loop, one per loop and
filesystem, closed on that loop when it shuts down.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

import handles
from handles import BuildError, FileSpec
from support.fake_http import BODY, FakeHTTP

fsspec = pytest.importorskip("fsspec")
pytest.importorskip("aiohttp", reason="fsspec's http filesystem needs aiohttp")
from test_file import SECRET_VALUE, moto_endpoint, s3_env, s3_store  # noqa: E402, F401


@pytest.fixture
def web() -> Any:
    with FakeHTTP() as server:
        yield server


@pytest.fixture(autouse=True)
def closed_registry() -> Any:
    yield
    handles.registry().close()


async def session_of(fs: Any) -> Any:
    return await fs.set_session()  # the one the filesystem opened (http: aiohttp's)


def test_http_aget_is_this_loops_async_filesystem_closed_with_the_loop(web, caplog):
    spec = FileSpec(url=f"{web.url}/file.txt")
    same_store = spec.replace(block_size=1024)  # placement only: the same filesystem

    async def main() -> tuple[Any, Any]:
        fs = await spec.aget()
        assert fs.asynchronous
        assert await fs._cat_file(spec.path) == BODY
        assert await spec.aget() is fs
        assert await same_store.aget() is fs
        assert spec.get() is not fs  # get(): the process's synchronous filesystem
        assert not spec.get().asynchronous
        session = await session_of(fs)
        assert not session.closed
        return fs, session

    with caplog.at_level(logging.ERROR, logger="handles"):
        first, first_session = asyncio.run(main())
        second, second_session = asyncio.run(main())
    assert first is not second  # one per loop
    assert first_session.closed  # closed on its loop as the loop shut down
    assert second_session.closed
    assert not [r for r in caplog.records if "closing" in r.getMessage()]


def test_http_loops_in_two_threads_at_once_each_get_their_own(web):
    spec = FileSpec(url=f"{web.url}/file.txt")
    both = threading.Barrier(2)
    seen: list[tuple[int, bytes]] = []

    async def main() -> None:
        fs = await spec.aget()
        await asyncio.get_running_loop().run_in_executor(None, both.wait, 10)
        seen.append((id(fs), await fs._cat_file(spec.path)))

    threads = [threading.Thread(target=asyncio.run, args=(main(),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(seen) == 2
    assert seen[0][0] != seen[1][0]
    assert [body for _, body in seen] == [BODY, BODY]


def test_a_missing_file_fails_in_aget_and_leaves_nothing(web):
    spec = FileSpec(url=f"{web.url}/nope.txt")

    async def main() -> int:
        with pytest.raises(BuildError) as info:
            await spec.aget()
        assert "no such file" in str(info.value.__cause__)
        await asyncio.sleep(0)  # the eviction's teardown runs on this loop
        return len(handles.registry())

    assert asyncio.run(main()) == 0


def test_a_sync_filesystem_gets_what_get_gives(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("x", encoding="utf-8")
    spec = FileSpec(url=str(path))

    async def main() -> None:
        assert await spec.aget() is spec.get()

    asyncio.run(main())


@pytest.mark.usefixtures("s3_env")
def test_s3_aget_is_this_loops_s3fs_closed_with_the_loop(request, caplog):
    store = s3_store(request.getfixturevalue("moto_endpoint"))
    store.raw.pipe(store.path("data.bin"), b"on s3")
    spec = store.spec("data.bin")

    async def main() -> Any:
        fs = await spec.aget()
        assert fs.asynchronous
        assert await fs._cat_file(spec.path) == b"on s3"
        assert await store.spec("data.bin", block_size=1 << 20).aget() is fs
        return fs

    with caplog.at_level(logging.DEBUG, logger="handles"):
        first = asyncio.run(main())
        second = asyncio.run(main())
    assert first is not second
    assert SECRET_VALUE not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(handles.registry()) == 0  # the loops' filesystems went with them
