"""Is anyone outside the registry still using a live object? The teardown rule's one question.

An object is torn down only once nobody can still be using it. "Nobody" is read
from `sys.getrefcount`: right after a build the registry records the object's
own count (its references to itself, a sqlite3 connection's statement cache,
...), and later any count above that is a user (a task's local variable, a
statement running in another thread).

That reading holds only where every reference is counted exactly once, which is
true of CPython up to 3.13 with the GIL. CPython 3.14 skips counting some
references held on the frame stack, and free-threaded builds defer others. So the
rule calibrates itself at import, with a probe object held in the ways a user
holds a live object (a local variable in this and another frame, a container,
an argument); where the interpreter does not count them as expected, handles
falls back to the conservative rule: references are never read, and a retired
object is torn down only at `close()`, at the end of its thread or loop, when no
`use()` block holds it. `HANDLES_TEARDOWN=conservative` forces the fallback.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

__all__ = ["EXACT", "baseline", "outside_references"]

logger = logging.getLogger("handles")


class _Probe:
    __slots__ = ("__weakref__",)


def _count(holder: list[Any]) -> int:
    return sys.getrefcount(holder[0])


def _held_in_another_frame(holder: list[Any]) -> int:
    held = holder[0]  # a task's local variable
    count = _count(holder)
    del held
    return count


def _counts_exactly() -> bool:
    """Does each way of holding an object add exactly one to its reference count?"""
    holder: list[Any] = [_Probe()]
    base = _count(holder)
    local = holder[0]
    with_local = _count(holder)
    del local
    box = [holder[0]]
    with_box = _count(holder)
    del box
    in_frame = _held_in_another_frame(holder)
    after = _count(holder)
    return (with_local, with_box, in_frame, after) == (base + 1, base + 1, base + 1, base)


def _decide() -> bool:
    if os.environ.get("HANDLES_TEARDOWN", "").strip().lower() == "conservative":
        return False
    if _counts_exactly():
        return True
    logger.warning(
        "this interpreter (%s) does not count references as handles expects: retired "
        "objects are torn down only at close(), at the end of their thread or event "
        "loop, or when no use() block holds them (see docs/registry.md)",
        sys.version.split()[0],
    )
    return False


EXACT: bool = _decide()
"""True: references are read exactly. False: the conservative rule (module docstring)."""


def baseline(value: Any) -> int:
    """The count to record right after a build.

    Call as `entry.own_refs = baseline(value)` from the function that received
    `value` as an argument, with the builder's local `value` one frame up and the
    entry already holding it: those two frames' references are not the object's
    own, the entry's is (it is there whenever the count is read later).
    """
    return sys.getrefcount(value) - 3


def outside_references(value: Any, own_refs: int) -> int:
    """References to `value` from outside the registry; 0 means nobody uses it.

    Call with the entry's value read by the caller (`outside_references(entry.value,
    entry.own_refs)`): the argument itself is counted in `own_refs` as well.
    """
    return sys.getrefcount(value) - 1 - own_refs
