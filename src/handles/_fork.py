"""Fork handling for the whole package: the one place that calls `os.register_at_fork`.

A child made by `fork` inherits the parent's live objects: open sockets, SQLite
connections in the middle of a transaction, file locks, GPU slot locks. It must
never use them (two processes on one socket) and never close or finalize them
(that ends the parent's session, or corrupts its SQLite file). So every module
that owns such state registers one callback here, and in the child:

- `in_child()` callbacks run, in registration order, right after the fork;
- whatever they pass to `keep_forever()` stays referenced for the child's whole
  life, so no finalizer or garbage collection ever runs it down there.

Finalizers can also run in the child *before* any at-fork hook: CPython drops the
other threads' states first, and their thread-local data dies with them. Code
that tears things down from a finalizer must therefore compare the process id it
recorded with `os.getpid()` (see `created_here`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

__all__ = ["before", "created_here", "in_child", "in_parent", "keep_forever"]

logger = logging.getLogger("handles")

_before: list[Callable[[], None]] = []
_in_parent: list[Callable[[], None]] = []
_in_child: list[Callable[[], None]] = []
# Objects inherited from the parent: referenced forever, never closed here.
_kept: list[Any] = []


def before(callback: Callable[[], None]) -> None:
    """Run `callback` in the parent just before each fork (take locks here)."""
    _before.append(callback)


def in_parent(callback: Callable[[], None]) -> None:
    """Run `callback` in the parent just after each fork (release them here)."""
    _in_parent.append(callback)


def in_child(callback: Callable[[], None]) -> None:
    """Run `callback` in each forked child, before the child runs anything else."""
    _in_child.append(callback)


def keep_forever(objects: Any) -> None:
    """Keep `objects` referenced in this (child) process until it ends."""
    _kept.append(objects)


def created_here(pid: int) -> bool:
    """Whether this process is the one whose id was `pid` (False in a forked child)."""
    return os.getpid() == pid


def _run(callbacks: list[Callable[[], None]], reverse: bool = False) -> None:
    for callback in reversed(callbacks) if reverse else callbacks:
        try:
            callback()
        except Exception:  # one failing hook must not leave the others undone
            logger.exception("at-fork hook %r failed", callback)


if hasattr(os, "register_at_fork"):
    # Locks are taken in order and released in reverse, as nested `with` blocks would.
    os.register_at_fork(
        before=lambda: _run(_before),
        after_in_parent=lambda: _run(_in_parent, reverse=True),
        after_in_child=lambda: _run(_in_child),
    )
