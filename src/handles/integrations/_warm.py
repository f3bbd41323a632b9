"""Building specs when a worker starts and closing them when it stops, for every integration."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from handles._registry import registry
from handles._spec import Spec
from handles.exceptions import HandlesError

logger = logging.getLogger("handles")


def checked(specs: Iterable[Any], caller: str, *, loops: bool = False) -> tuple[Spec[Any], ...]:
    """`specs` as a tuple, each one a spec that a worker can build at start.

    loops: the caller's workers have an event loop of their own (bound Prefect
    pools), so loop-scoped specs are welcome too.
    """
    result = tuple(specs)
    for spec in result:
        if not isinstance(spec, Spec):
            raise TypeError(f"{caller} takes specs, got {type(spec).__name__}")
        if spec.scope not in ("process", "thread") and not (loops and spec.scope == "loop"):
            # A loop-scoped object belongs to an event loop, which a worker
            # does not have when it starts: aget() builds it on each loop.
            raise ValueError(
                f"{caller} takes process- and thread-scoped specs; {type(spec).__name__} "
                f"is {spec.scope}-scoped: aget() builds it on each event loop"
            )
    return result


def warm(specs: Iterable[Spec[Any]]) -> int:
    """Build each spec in this process (this thread, for thread scope); return how many built.

    A failure is logged and skipped, never raised: a worker initializer that
    raises breaks the whole pool, while the task's own `get()` raises the same
    BuildError where the user can see it, and nothing half-built is cached.
    """
    ready = 0
    for spec in specs:
        if not isinstance(spec, Spec):
            raise TypeError(f"warm-up takes specs, got {type(spec).__name__}")
        try:
            spec.get()
        except HandlesError as exc:
            logger.warning("warm-up of %r failed; its tasks will retry the build: %s", spec, exc)
            continue
        ready += 1
    return ready


def release(specs: Sequence[Spec[Any]]) -> int:
    """Retire each spec's object in this process (this thread's, for thread scope), newest first.

    Torn down now unless something still holds it (then when that ends: see
    docs/registry.md). Returns how many were live. Never raises: a failing
    teardown is logged by the registry.
    """
    released = 0
    for spec in reversed(specs):
        try:
            released += registry().evict(spec)
        except Exception:  # a worker going away must not fail on one spec
            logger.exception("releasing %r failed", spec)
    return released
