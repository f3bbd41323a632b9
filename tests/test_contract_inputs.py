"""The contract's checks on input order, fingerprints and event loops, on every kind's case.

Beside test_contract.py (one test per property per kind, the same cases): equal
input in another order is the same spec, `fingerprint()` is canonical, and a
loop-scoped kind gives each event loop its own object, torn down on that loop.
"""

from __future__ import annotations

from typing import Any

import pytest

from handles import Spec, testing
from support.cases import KindCase, all_cases

CASES = all_cases()


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def spec(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Spec[Any]:
    # One spec per case for the three tests (these checks build nothing that outlives them).
    kind_case: KindCase = request.param
    for module in kind_case.requires:
        pytest.importorskip(module, reason=f"{kind_case.name} needs {module}")
    return kind_case.make(tmp_path_factory.mktemp(kind_case.name))


def test_input_in_another_order_is_the_same_spec(spec):
    testing.check_input_order(spec)


def test_fingerprint_is_canonical(spec):
    testing.check_fingerprint(spec)


def test_two_event_loops_get_two_objects_each_closed_on_its_loop(spec):
    if spec.scope != "loop":
        pytest.skip(f"{spec.scope}-scoped: one object per {spec.scope}, not per event loop")
    testing.check_one_object_per_loop(spec)
