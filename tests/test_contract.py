"""The contract every spec kind keeps. Each kind joins through a case in support/cases_*.py.

The checks are handles.testing's, the ones third-party kinds run: one test per
property per kind here, and `assert_contract` end to end on a few kinds.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

import handles._kinds
from handles import Spec, testing
from support.cases import KindCase, all_cases

CASES = all_cases()

NOT_FOR_LOOPS = "a loop-scoped object lives and dies with its event loop: see tests/test_async.py"
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest) -> KindCase:
    kind_case: KindCase = request.param
    for module in kind_case.requires:
        pytest.importorskip(module, reason=f"{kind_case.name} needs {module}")
    return kind_case


@pytest.fixture
def spec(case: KindCase, tmp_path, monkeypatch) -> Spec[Any]:
    # The JSON checks load specs as a worker does (untrusted): one that allows what the
    # cases use from data, archives included (docs/security.md).
    monkeypatch.setenv("HANDLES_ALLOW_ARCHIVES", "1")
    return case.make(tmp_path)


def test_pickle_round_trip_is_small_and_carries_no_live_state(spec):
    testing.check_pickle(spec)


def test_json_round_trip(spec):
    testing.check_json(spec)


def test_dump_is_canonical(spec):
    testing.check_canonical_dump(spec)


def test_key_is_equal_across_processes_and_hash_seeds(case, spec):
    testing.check_key_stable_across_processes(spec, setup_modules=case.setup_modules)


def test_placement_change_keeps_the_key_identity_change_moves_it(case, spec):
    testing.check_roles(spec, identity=case.identity(spec), placement=case.placement(spec))


def test_get_reuses_one_object(spec):
    testing.check_reuse(spec)


def test_single_flight_with_64_threads(spec):
    testing.check_single_flight(spec, threads=64)


def test_failing_build_is_not_cached(case, tmp_path):
    testing.check_failure_not_cached(case.broken(tmp_path))


def test_failing_build_reaches_every_waiter(case, tmp_path):
    testing.check_failure_reaches_every_waiter(case.broken(tmp_path), threads=16)


@needs_fork
def test_fork_child_builds_its_own(case, spec):
    if spec.scope == "loop":
        pytest.skip(NOT_FOR_LOOPS)
    testing.check_fork(spec, alive=case.alive)


def test_close_tears_down_newest_first(case, spec):
    if spec.scope == "loop":
        pytest.skip(NOT_FOR_LOOPS)
    testing.check_teardown_order(spec, identity=case.identity(spec))


def test_a_spec_is_one_value_not_an_iterable_of_fields(spec):
    # Prefect's task.map() maps over iterable arguments: a spec must be broadcast whole.
    testing.check_one_value(spec)


# -- the whole contract at once, as a third-party kind's test runs it ---------------

END_TO_END = [c for c in CASES if c.name in ("test-echo", "test-thread-echo", "sqlite-file")]


@pytest.mark.parametrize("kind_case", END_TO_END, ids=[c.name for c in END_TO_END])
def test_assert_contract_passes_end_to_end(kind_case: KindCase, tmp_path):
    spec = kind_case.make(tmp_path)
    testing.assert_contract(
        spec,
        identity=kind_case.identity(spec),
        placement=kind_case.placement(spec),
        broken=kind_case.broken(tmp_path),
        alive=kind_case.alive,
        setup_modules=kind_case.setup_modules,
    )


def test_every_builtin_kind_has_a_contract_case(tmp_path):
    covered: set[str] = set()
    unmade: list[str] = []  # cases whose packages or services are missing here
    for kind_case in CASES:
        try:
            if not all(importlib.util.find_spec(m) for m in kind_case.requires):
                raise LookupError(kind_case.requires)
            covered.add(kind_case.make(_folder(tmp_path, kind_case.name)).kind)
        except (LookupError, pytest.skip.Exception):
            unmade.append(kind_case.name)
    missing = sorted(set(handles._kinds.BUILTIN) - covered)
    if missing and unmade:
        pytest.skip(f"no case made here for {missing}; cases {unmade} could not be made")
    assert not missing, f"built-in kinds without a case in tests/support/cases_*.py: {missing}"


def _folder(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    return folder
