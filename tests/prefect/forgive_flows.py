"""Tasks and flows for the forgiveness tests: live objects the registry built, passed by mistake.

A module of its own so that process-pool workers import the same tasks by name.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any

from prefect import flow, task
from prefect.cache_policies import TASK_SOURCE
from sqlalchemy import Engine, text

import handles
from handles import DatabaseSpec, SqliteSpec
from handles.integrations.prefect import SPEC_INPUTS, preflight


def _where(obj: Any) -> dict[str, Any]:
    spec = handles.registry().spec_of(obj)
    return {
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        "type": type(obj).__name__,
        "key": spec.cache_key() if spec is not None else None,
    }


@preflight
@task(cache_policy=SPEC_INPUTS + TASK_SOURCE, persist_result=True)
def read_row(conn: sqlite3.Connection, n: int) -> dict[str, Any]:
    """Works only on a connection opened in this thread (sqlite3 checks)."""
    value = conn.execute("select ? * 10", (n,)).fetchone()[0]
    return {**_where(conn), "value": value}


@preflight
@task(cache_policy=SPEC_INPUTS + TASK_SOURCE, persist_result=True)
def engine_row(engine: Engine, n: int) -> dict[str, Any]:
    with engine.connect() as conn:
        value = conn.execute(text("select :n + 1"), {"n": n}).scalar_one()
    return {**_where(engine), "value": value}


@flow
def forgiving(path: str, url: str) -> dict[str, Any]:
    """Passes live objects the flow's registry built, by .submit and .map, from one line each."""
    conn = SqliteSpec(path=path).get()
    engine = DatabaseSpec(url=url).get()
    submitted = []
    for n in (1, 1):  # one call site, run twice: the second is served from the cache
        submitted.append(read_row.submit(conn, n))
        submitted[-1].wait()
    mapped = engine_row.map(engine, [2, 3])
    rows = [f.result() for f in submitted]
    return {
        "flow": _where(conn),
        "rows": rows,
        "states": [f.state.name for f in submitted],
        "engines": [f.result() for f in mapped],
        "engine_states": [f.state.name for f in mapped],
    }


@flow
def unforgiven(path: str) -> str:
    """A connection the registry did not build is refused as before."""
    conn = sqlite3.connect(path)
    try:
        read_row.submit(conn, 1).result()
    except Exception as exc:  # PreflightError
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return "let through"


def serve_read_row() -> None:
    """Entry point of a task worker serving the preflight task itself (`.task`)."""
    from prefect.task_worker import serve

    serve(read_row.task)
