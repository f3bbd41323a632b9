"""Preflight never consumes an argument (issue 9 item 7): iterators are found by looking,
never by hashing them, and reported wherever the call would drain them (a hashed cache key)
or fail on them (pickling a generator). No Prefect server needed."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("prefect")

from prefect import task
from prefect.cache_policies import NO_CACHE

from handles.integrations.prefect import preflight
from handles.integrations.preflight import ITERATOR_REASON, check_inputs


def numbers() -> Iterator[int]:
    yield from (1, 2, 3)


class Holder:
    def __init__(self, rows: Iterator[int]) -> None:
        self.rows = rows


ITERATORS: dict[str, tuple[Callable[[], Any], Callable[[Any], Iterator[int]], str]] = {
    # name: (make the argument, reach the iterator in it, the finding's path)
    "generator": (numbers, lambda a: a, "args[0]"),
    "list iterator": (lambda: iter([1, 2, 3]), lambda a: a, "args[0]"),
    "map": (lambda: map(int, "123"), lambda a: a, "args[0]"),
    "zip": (lambda: zip([1, 2, 3], "abc", strict=True), lambda a: (x for x, _ in a), "args[0]"),
    "in a dict": (lambda: {"rows": numbers()}, lambda a: a["rows"], "args[0]['rows']"),
    "in a list": (lambda: [0, numbers()], lambda a: a[1], "args[0][1]"),
    "in an attribute": (lambda: Holder(numbers()), lambda a: a.rows, "args[0].rows"),
}


@pytest.mark.parametrize("name", list(ITERATORS))
def test_a_hashed_iterator_is_reported_and_left_untouched(name):
    make, reach, path = ITERATORS[name]
    argument = make()
    findings = check_inputs((argument,), {})
    assert [f.path for f in findings] == [path]
    assert ITERATOR_REASON in findings[0].reason
    assert "pass a list" in str(findings[0])
    assert list(reach(argument)) == [1, 2, 3], "nothing was consumed"


def test_an_endless_iterator_is_reported_at_once():
    counter = itertools.count(5)
    (finding,) = check_inputs((), {"ids": counter})
    assert (finding.path, finding.type_name) == ("kwargs['ids']", "count")
    assert next(counter) == 5


def test_a_cursor_is_an_iterator_and_a_live_resource():
    conn = sqlite3.connect(":memory:")
    try:
        cursor = conn.execute("select 1 union all select 2")
        (finding,) = check_inputs((cursor,), {})
        assert ITERATOR_REASON in finding.reason
        assert "SqliteSpec" in str(finding)
        assert cursor.fetchall() == [(1,), (2,)]
    finally:
        conn.close()


def test_without_hashing_a_generator_still_cannot_travel():
    rows = numbers()
    (finding,) = check_inputs((rows,), {}, cache_key=False)
    assert "cannot be pickled" in finding.reason
    assert list(rows) == [1, 2, 3]
    # A list iterator pickles to an independent copy: no finding, nothing drained.
    items = iter([1, 2, 3])
    assert check_inputs((items,), {}, cache_key=False) == []
    assert list(items) == [1, 2, 3]


def test_a_thread_without_hashing_may_take_any_iterator():
    rows = numbers()
    assert check_inputs((rows,), {}, transport=False, cache_key=False, other_thread=True) == []
    assert list(rows) == [1, 2, 3]


def test_plain_data_and_other_problems_are_unchanged():
    assert check_inputs(([1, 2], {"a": (3, "x")}, "s"), {}) == []
    lock = threading.Lock()
    findings = check_inputs(({"rows": numbers(), "lock": lock},), {})
    assert sorted(f.path for f in findings) == ["args[0]['lock']", "args[0]['rows']"]


@task
def total(rows: Any) -> int:
    return sum(rows)


@task(cache_policy=NO_CACHE)
def total_uncached(rows: Any) -> int:
    return sum(rows)


def test_a_direct_call_under_the_default_policy_is_refused_before_hashing():
    # The seed's silent failure: hashing turned the generator into a list and
    # the task summed an exhausted one. Preflight now reports it and drains nothing.
    rows = numbers()
    (finding,) = preflight(total).check((rows,), {}, "__call__")
    assert ITERATOR_REASON in finding.reason
    assert preflight(total_uncached).check((rows,), {}, "__call__") == []
    assert list(rows) == [1, 2, 3]
