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


def all_cases() -> list[KindCase]:
    cases: list[KindCase] = []
    for module in (
        "support.cases_core",
        "support.cases_sql",
        "support.cases_file",
        "support.cases_torch_hf",
        "support.cases_spacy",
    ):
        try:
            cases.extend(importlib.import_module(module).CASES)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return cases
