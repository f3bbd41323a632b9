"""Contract cases: one per spec kind. Every kind joins the shared suite in test_contract.py.

A case says how to make a valid spec of the kind in a temporary folder, a
variant differing only in placement, one differing in identity, and one whose
build fails. Kind families add their cases in their own `cases_*.py` module;
this file gathers them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handles import Spec


@dataclass(frozen=True)
class KindCase:
    name: str
    make: Callable[[Path], Spec[Any]]
    identity_variant: Callable[[Spec[Any]], Spec[Any]]
    broken: Callable[[Path], Spec[Any]]
    placement_variant: Callable[[Spec[Any]], Spec[Any]] | None = None
    # Is the parent's object still usable? Called after a forked child ran.
    alive: Callable[[Any], object] = lambda obj: obj is not None
    # Optional packages the kind needs; the case is skipped (with the reason) without them.
    requires: tuple[str, ...] = ()
    # Modules a fresh process must import before it can rebuild the spec (as a user's
    # worker imports the module that registers their torch factories).
    setup_modules: tuple[str, ...] = ()

    def identity(self, spec: Spec[Any]) -> dict[str, Any]:
        """The identity variant as the field changes handles.testing takes."""
        return changes(spec, self.identity_variant(spec))

    def placement(self, spec: Spec[Any]) -> dict[str, Any] | None:
        """The placement variant as field changes; None for a kind without placement."""
        if self.placement_variant is None:
            return None
        return changes(spec, self.placement_variant(spec))


def changes(spec: Spec[Any], variant: Spec[Any]) -> dict[str, Any]:
    """{field: value} of `variant` wherever it differs from `spec`."""
    return {name: value for name, value in dict(variant).items() if value != spec[name]}


def all_cases() -> list[KindCase]:
    """Every case of every `support/cases_*.py` module: a new kind's module joins by its name."""
    cases: list[KindCase] = []
    for path in sorted(Path(__file__).parent.glob("cases_*.py")):
        cases.extend(importlib.import_module(f"support.{path.stem}").CASES)
    return cases
