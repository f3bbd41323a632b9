"""Building specs ahead of the first task, shared by the Prefect and Dask integrations."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from handles._spec import Spec
from handles.exceptions import HandlesError

logger = logging.getLogger("handles")


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
