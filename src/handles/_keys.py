"""Canonical JSON and digests: the only way handles turns data into a key.

Never `hash()` (seeded per process) or `str()` of a dict (ordering, addresses).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

# Past these, a value has no canonical form worth keeping: deeper nesting
# exhausts recursive encoders, bigger integers exceed int->str limits.
MAX_DEPTH = 64
MAX_INT_BITS = 1024


def canonical(value: Any) -> Any:
    """Return `value` with mappings sorted by key, tuples as lists, paths as posix strings."""
    if isinstance(value, Mapping):
        return {str(k): canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, PurePath):
        return value.as_posix()
    return value


def canonical_json(value: Any) -> str:
    """Compact, key-sorted JSON; NaN and infinities are refused (they have no stable form)."""
    return json.dumps(
        canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def digest(value: Any) -> str:
    """SHA-256 hex digest of the canonical JSON of `value`."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def unkeyable(value: Any, path: str = "") -> tuple[str, str] | None:
    """(dotted path, why) of a part of `value` that has no canonical JSON form, or None.

    Lone surrogates (no UTF-8 form), NaN and infinities (no JSON form), nesting
    deeper than MAX_DEPTH and integers wider than MAX_INT_BITS. Iterative, so any
    depth of input is safe to check.
    """
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, PurePath):
            item = str(item)
        if isinstance(item, str):
            bad = _surrogate(item)
            if bad is not None:
                return where, f"contains a lone surrogate ({bad}): not valid Unicode, no UTF-8 form"
        elif isinstance(item, float):
            if not math.isfinite(item):
                what = "NaN" if math.isnan(item) else "infinite"
                return where, f"is {what}, which has no JSON form (it would be stored as null)"
        elif isinstance(item, int) and not isinstance(item, bool):
            if item.bit_length() > MAX_INT_BITS:
                return where, f"is an integer wider than {MAX_INT_BITS} bits"
        elif isinstance(item, Mapping | list | tuple | set | frozenset):
            if depth >= MAX_DEPTH:  # named by its field: the full path would be as deep
                return where.split(".", 1)[0], f"is nested more than {MAX_DEPTH} levels deep"
            pairs = item.items() if isinstance(item, Mapping) else enumerate(item)
            for key, child in pairs:
                child_where = _join(where, key)
                if isinstance(key, str) and _surrogate(key) is not None:
                    return child_where, "has a key with a lone surrogate: not valid Unicode"
                stack.append((child, child_where, depth + 1))
    return None


def _surrogate(text: str) -> str | None:
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"U+{ord(text[exc.start]):04X}"
    return None


def _join(where: str, key: Any) -> str:
    name = str(key).encode("utf-8", "backslashreplace").decode("utf-8")
    return f"{where}.{name}" if where else name
