"""The eviction policy alone: a pure function over items, sizes, use and rank."""

from __future__ import annotations

from handles._registry.policy import Bounds, choose_victims


def choose(items, bounds, *, busy=(), sizes=None, keep=()):
    sizes = sizes or {}
    return choose_victims(
        items,
        bounds,
        size=lambda item: sizes.get(item, {}),
        in_use=lambda item: item in busy,
        rank=items.index,  # listed from least to most recently used
        keep=keep,
    )


def test_no_bounds_no_victims():
    assert choose(["a", "b"], Bounds()).victims == []


def test_count_bound_retires_least_recently_used_first():
    assert choose(["a", "b", "c", "d"], Bounds(max_entries=2)).victims == ["a", "b"]


def test_count_bound_prefers_idle_items_over_held_ones():
    # "a" is the least recently used but held: the idle "b" goes instead.
    assert choose(["a", "b", "c"], Bounds(max_entries=2), busy={"a"}).victims == ["b"]


def test_held_items_go_only_when_nothing_idle_is_left():
    got = choose(["a", "b", "c"], Bounds(max_entries=1), busy={"a", "b"}, keep={"c"})
    assert got.victims == ["a", "b"]


def test_kept_items_never_go_even_beyond_the_bound():
    got = choose(["a", "b"], Bounds(max_entries=1), keep={"a", "b"})
    assert got.victims == []


def test_byte_budget_retires_idle_items_of_the_device_over_budget_only():
    sizes = {"a": {"cuda:0": 5}, "b": {"cpu": 5}, "c": {"cpu": 5}, "d": {"cpu": 5}}
    got = choose(["a", "b", "c", "d"], Bounds(budgets={"cpu": 10}), sizes=sizes)
    assert got.victims == ["b"]
    assert got.over == frozenset()


def test_byte_budget_never_retires_held_items_and_reports_what_stays_over():
    sizes = {"a": {"cpu": 8}, "b": {"cpu": 8}}
    got = choose(["a", "b"], Bounds(budgets={"cpu": 10}), sizes=sizes, busy={"a"}, keep={"b"})
    assert got.victims == []
    assert got.over == frozenset({"cpu"})


def test_count_victims_count_towards_the_byte_budget():
    sizes = {"a": {"cpu": 8}, "b": {"cpu": 8}, "c": {"cpu": 1}}
    got = choose(["a", "b", "c"], Bounds(max_entries=2, budgets={"cpu": 9}), sizes=sizes)
    assert got.victims == ["a"]  # one retirement meets both limits
