"""Which live objects to retire when the registry is over its bounds: a pure function.

The shape of cachetools' caches: the caller says how big each item is and how
to rank them; this module only chooses. It knows nothing of threads, locks or
specs, so it is tested alone (tests/test_registry_policy.py).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Bounds", "Choice", "choose_victims"]

E = TypeVar("E", bound=Hashable)


@dataclass(frozen=True)
class Bounds:
    """The limits: a number of objects, and bytes by device ("cpu" for host memory)."""

    max_entries: int | None = None
    budgets: Mapping[str, int] | None = None

    def __bool__(self) -> bool:
        return self.max_entries is not None or bool(self.budgets)


@dataclass(frozen=True)
class Choice(Generic[E]):
    victims: list[E]
    """To retire, in this order."""
    over: frozenset[str]
    """Devices still over budget after the victims go (nothing else could go)."""


def choose_victims(
    items: Iterable[E],
    bounds: Bounds,
    *,
    size: Callable[[E], Mapping[str, int]],
    in_use: Callable[[E], bool],
    rank: Callable[[E], Any],
    keep: Iterable[E] = (),
) -> Choice[E]:
    """The items to retire so that what remains fits `bounds`.

    `rank` orders items from first to go (least recently used) to last. Items in
    `keep` never go. For the count bound, idle items go before ones `in_use`,
    which go only when nothing else can (retiring an object still in use frees it
    later, when its user is done). For byte budgets only idle items go, since
    retiring one still in use frees nothing now, and only items that hold bytes
    on a device that is over budget.
    """
    everything = list(items)
    kept = set(keep)
    busy = {item: in_use(item) for item in everything if item not in kept}
    ranked = sorted(busy, key=lambda item: (busy[item], rank(item)))
    victims: list[E] = []
    if bounds.max_entries is not None:
        excess = len(everything) - bounds.max_entries
        victims = ranked[: max(excess, 0)]
    budgets = dict(bounds.budgets or {})
    used: dict[str, int] = {}
    for item in everything:
        for device, nbytes in size(item).items():
            used[device] = used.get(device, 0) + nbytes
    for item in victims:
        _release(used, size(item))
    over = _over(used, budgets)
    chosen = set(victims)
    for item in ranked:
        if not over:
            break
        if item in chosen or busy[item] or not over & set(size(item)):
            continue
        victims.append(item)
        chosen.add(item)
        _release(used, size(item))
        over = _over(used, budgets)
    return Choice(victims, frozenset(over))


def _release(used: dict[str, int], sizes: Mapping[str, int]) -> None:
    for device, nbytes in sizes.items():
        used[device] = used.get(device, 0) - nbytes


def _over(used: Mapping[str, int], budgets: Mapping[str, int]) -> set[str]:
    return {device for device, limit in budgets.items() if used.get(device, 0) > limit}
