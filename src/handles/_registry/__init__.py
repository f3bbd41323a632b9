"""The per-process registry: builds each spec's live object once and hands it out.

Modules, each one concern, importing one way (nothing here imports a spec kind):

- `entries`: what is kept per live object and per cache key (stats);
- `policy`: which objects to retire when over a bound (a pure function);
- `refs`: whether anyone outside the registry still uses an object;
- `flight`: single-flight builds for threads and coroutines;
- `buckets`, `loops`: where objects live, one store per scope;
- `core`: the `Registry` itself.

Fork: see `handles._fork`. Every registry gives its forked child a fresh, empty
state; the parent's objects stay referenced in the child and are never closed
there.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from handles import _fork
from handles._registry.core import Registry, all_registries
from handles._registry.entries import NO_ENTRY, RETIRED_KEYS_KEPT, KeyStats

if TYPE_CHECKING:
    from handles._spec import Spec

__all__ = ["NO_ENTRY", "RETIRED_KEYS_KEPT", "KeyStats", "Registry", "override", "registry"]

logger = logging.getLogger("handles")
T = TypeVar("T")


def _before_fork() -> None:
    for reg in all_registries():
        reg._before_fork()


def _after_fork_in_parent() -> None:
    for reg in all_registries():
        reg._after_fork_in_parent()


def _after_fork_in_child() -> None:
    inherited = [reg._after_fork_in_child() for reg in all_registries()]
    _fork.keep_forever(inherited)


_fork.before(_before_fork)
_fork.in_parent(_after_fork_in_parent)
_fork.in_child(_after_fork_in_child)

_registry = Registry()


def registry() -> Registry:
    """This process's registry."""
    return _registry


@contextmanager
def override(spec: Spec[T], value: T) -> Iterator[T]:
    """Inside the block, `spec.get()` (and any equal spec's) returns `value`.

    For tests: the override is process-wide, so tasks on thread pools see it too.
    Matching is by `cache_key()`, so placement does not matter. Nests.
    """
    key = spec.cache_key()
    _registry._push_override(key, value)
    try:
        yield value
    finally:
        _registry._pop_override(key)


def _close_at_exit() -> None:
    try:
        _registry.close()
    except Exception:  # pragma: no cover - close() logs teardown errors itself
        logger.exception("closing the registry at exit failed")


atexit.register(_close_at_exit)
