"""Run a function in a child made by fork and bring back its result.

One implementation with handles.testing's fork check, which third-party kinds use too.
"""

from __future__ import annotations

from handles._contract import run_in_fork

__all__ = ["run_in_fork"]
