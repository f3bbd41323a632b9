"""AsyncDatabaseSpec takes every URL SQLAlchemy's create_async_engine takes, and only those."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("greenlet")
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import create_async_engine

from handles import AsyncDatabaseSpec, BuildError

URLS = [
    "postgresql+psycopg://u@127.0.0.1/db",  # as SQLAlchemy's docs write it: psycopg's async dialect
    "postgresql+psycopg_async://u@127.0.0.1/db",
    "postgresql://u@127.0.0.1/db",  # the default PostgreSQL driver, whichever SQLAlchemy picks
    "postgresql+asyncpg://u@127.0.0.1/db",
    "sqlite+aiosqlite:///x.db",
    "sqlite:///x.db",
    "sqlite+pysqlite:///x.db",
]


def sqlalchemy_takes(url: str) -> bool:
    try:
        engine = create_async_engine(url)
    except ModuleNotFoundError as exc:
        pytest.skip(f"the driver for {url} is not installed: {exc.name}")
    except InvalidRequestError:
        return False
    engine.sync_engine.dispose(close=False)
    return True


def built_driver(url: str) -> str:
    """The driver of the engine the spec builds (no connection: check_connection=False)."""
    spec = AsyncDatabaseSpec(url=url, check_connection=False)

    async def main() -> str:
        return str((await spec.aget()).dialect.driver)

    return asyncio.run(main())


@pytest.mark.parametrize("url", URLS)
def test_a_url_is_taken_exactly_when_create_async_engine_takes_it(url):
    if sqlalchemy_takes(url):
        assert built_driver(url) == create_async_engine(url).dialect.driver
    else:
        with pytest.raises(BuildError) as info:
            built_driver(url)
        message = str(info.value.__cause__)
        assert message.startswith("AsyncDatabaseSpec.url: ")
        assert "is a synchronous driver" in message
        assert "DatabaseSpec for a synchronous Engine" in message
