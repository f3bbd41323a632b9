"""One shape for every kind's table of malformed specs, and one check of it.

A case names the spec class, makes the spec from a temporary folder, and says
when it must fail:

- "construct": the constructor raises a SpecError;
- "key": the spec constructs, but `cache_key()` and `get()` raise a SpecError
  (what the key is computed from cannot be read: a model's meta, a file's stamp);
- "build": `get()` raises a BuildError whose cause is a SpecError, twice (the
  failure is not cached).

Always: the message says "Class.field: ", contains `match`, shows no traceback
and no `secret`, and nothing stays live in the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

import handles
from handles import BuildError, SpecError


@dataclass(frozen=True)
class Bad:
    name: str
    cls: type[handles.Spec[Any]]
    make: Callable[[Path], Any]  # the spec (its construction may be what fails)
    field: str
    when: Literal["construct", "key", "build"]
    match: str = ""  # a phrase the message must contain
    needs: Callable[[], object] | None = None  # skips the case where it cannot run here
    secret: str | None = None  # must appear in no message of the chain


def params(cases: Sequence[Bad]) -> list[Any]:
    """The cases as pytest params, with their names as ids."""
    assert len({c.name for c in cases}) == len(cases), "case names must be unique"
    return [pytest.param(c, id=c.name) for c in cases]


def check(case: Bad, tmp_path: Path) -> None:
    """Assert that `case` fails as its table says, and leaves nothing live."""
    if case.needs is not None:
        case.needs()
    if case.when == "construct":
        with pytest.raises(SpecError) as info:
            case.make(tmp_path)
        _check_spec_error(info.value, case)
    elif case.when == "key":
        spec = case.make(tmp_path)
        with pytest.raises(SpecError) as info:
            spec.cache_key()
        _check_spec_error(info.value, case)
        with pytest.raises(SpecError) as info:
            spec.get()
        _check_spec_error(info.value, case)
    else:
        _check_build_failure(case.make(tmp_path), case)
    assert len(handles.registry()) == 0, "nothing half-built stays live"


def _check_build_failure(spec: handles.Spec[Any], case: Bad) -> None:
    # Another test may have built a spec of the same key (placement aside) before.
    before = handles.registry().stats().get(spec.cache_key())
    builds, errors = (before.builds, before.errors) if before else (0, 0)
    for attempt in (1, 2):  # the failure is not cached: the second get() builds again
        with pytest.raises(BuildError) as info:
            spec.get()
        _check_message(info.value, case)
        cause = info.value.__cause__
        assert isinstance(cause, SpecError), f"a clear cause, not a dependency's: {cause!r}"
        assert case.field in [field for field, _ in cause.problems], cause.problems
        stats = handles.registry().stats()[spec.cache_key()]
        assert (stats.builds, stats.errors, stats.live) == (builds, errors + attempt, 0)
    assert spec not in handles.registry()


def _check_spec_error(error: SpecError, case: Bad) -> None:
    _check_message(error, case)
    assert error.kind == case.cls.__name__
    assert case.field in [field for field, _ in error.problems], error.problems


def _check_message(error: BaseException, case: Bad) -> None:
    message = str(error)
    assert f"{case.cls.__name__}.{case.field}: " in message, message
    assert case.match.lower() in message.lower(), message
    assert "Traceback" not in message
    if case.secret is not None:
        assert all(case.secret not in str(e) for e in _chain(error)), "a secret leaked"


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__
