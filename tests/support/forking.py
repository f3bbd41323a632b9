"""Run a function in a child made by fork and bring back its result."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from typing import Any


def _trampoline(conn: Any, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        conn.send(("ok", target(*args)))
    except BaseException as exc:
        conn.send(("error", repr(exc)))
    finally:
        conn.close()
        # Once Prefect has run in the parent (as in this test session), its at-fork
        # hooks and leftover threads make a forked child's normal exit return 1.
        # The result has already travelled, so leave without running exit hooks.
        os._exit(0)


def run_in_fork(target: Callable[..., Any], *args: Any, timeout: float = 60) -> Any:
    """`target(*args)` in a forked child; its return value, or AssertionError with its error."""
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()
    child = ctx.Process(target=_trampoline, args=(there, target, args))
    child.start()
    there.close()
    try:
        if not here.poll(timeout):
            raise AssertionError(f"forked child sent nothing within {timeout} s")
        status, value = here.recv()
    finally:
        child.join(timeout)
    assert child.exitcode == 0, f"forked child exited with {child.exitcode}"
    if status != "ok":
        raise AssertionError(f"forked child failed: {value}")
    return value
