"""Byte accounting and memory budgets: stats report what kinds measure; budgets evict by bytes."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Literal

import pytest

import handles
from handles import Identity, Placement, Spec

MiB = 2**20


class Blob:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False


CLOSED: list[str] = []


class SizedSpec(Spec[Blob]):
    """A stand-in for a model: reports `host` bytes and `device` bytes on `device`."""

    kind: Literal["test-sized"] = "test-sized"
    name: Annotated[str, Identity]
    host: Annotated[int, Placement] = 0
    gpu: Annotated[int, Placement] = 0

    def build(self) -> Blob:
        return Blob(self.name)

    def teardown(self, value: Blob) -> None:
        value.closed = True
        CLOSED.append(value.name)

    def nbytes(self, value: Blob) -> Mapping[str, int]:
        return {"cpu": self.host, "cuda:0": self.gpu}


@pytest.fixture(autouse=True)
def _budgets():
    reg = handles.registry()
    CLOSED.clear()
    yield reg
    reg.max_bytes = None
    reg.max_device_bytes = {}


def live_host_bytes() -> int:
    return sum(s.nbytes for s in handles.registry().stats().values())


def test_stats_report_host_and_device_bytes():
    spec = SizedSpec(name="acct", host=3 * MiB, gpu=5 * MiB)
    spec.get()
    stats = handles.registry().stats()[spec.cache_key()]
    assert stats.nbytes == 3 * MiB
    assert stats.device_nbytes == {"cuda:0": 5 * MiB}
    handles.registry().close()
    stats = handles.registry().stats()[spec.cache_key()]
    assert (stats.nbytes, stats.device_nbytes) == (0, {})


def test_three_64_mib_models_under_a_150_mib_budget_keep_two():
    reg = handles.registry()
    reg.max_bytes = 150 * MiB
    specs = [SizedSpec(name=f"m{i}", host=64 * MiB) for i in range(3)]
    for spec in specs:
        spec.get()
    assert live_host_bytes() == 128 * MiB
    assert CLOSED == ["m0"], "the least recently used went"
    assert [s in reg for s in specs] == [False, True, True]


def test_recently_used_models_stay():
    reg = handles.registry()
    reg.max_bytes = 150 * MiB
    a, b, c = (SizedSpec(name=f"lru{i}", host=64 * MiB) for i in range(3))
    a.get()
    b.get()
    a.get()
    c.get()
    assert CLOSED == ["lru1"]


def test_a_model_larger_than_the_budget_is_built_once_and_logged(caplog):
    reg = handles.registry()
    reg.max_bytes = 10 * MiB
    big = SizedSpec(name="big", host=64 * MiB)
    with caplog.at_level(logging.WARNING, logger="handles"):
        first = big.get()
    assert "larger than the whole budget" in caplog.text
    assert big.get() is first
    assert handles.registry().stats()[big.cache_key()].builds == 1


def test_objects_in_use_are_never_evicted_for_bytes(caplog):
    reg = handles.registry()
    reg.max_bytes = 100 * MiB
    a, b = SizedSpec(name="held", host=64 * MiB), SizedSpec(name="next", host=64 * MiB)
    held = a.get()
    with caplog.at_level(logging.WARNING, logger="handles"):
        b.get()
    assert a in reg
    assert not held.closed
    assert "in use" in caplog.text
    del held
    SizedSpec(name="third", host=1).get()  # the next build sees `held` idle again
    assert a not in reg
    assert CLOSED == ["held"]


def test_the_device_budget_evicts_by_device_bytes_only():
    reg = handles.registry()
    reg.max_device_bytes = {"cuda:0": 100 * MiB}
    cpu_only = SizedSpec(name="cpu-only", host=500 * MiB)
    g1, g2 = SizedSpec(name="g1", gpu=64 * MiB), SizedSpec(name="g2", gpu=64 * MiB)
    cpu_only.get()
    g1.get()
    g2.get()
    assert CLOSED == ["g1"]
    assert cpu_only in reg
    assert reg.max_device_bytes == {"cuda:0": 100 * MiB}


def test_lowering_the_budget_evicts_at_once():
    reg = handles.registry()
    for i in range(3):
        SizedSpec(name=f"low{i}", host=10 * MiB).get()
    reg.max_bytes = 15 * MiB
    assert sorted(CLOSED) == ["low0", "low1"]
    assert live_host_bytes() == 10 * MiB


def test_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="max_bytes"):
        handles.registry().max_bytes = -1
    with pytest.raises(ValueError, match="cuda:0"):
        handles.registry().max_device_bytes = {"cuda:0": -5}


def test_a_failing_measurement_never_fails_the_build(caplog):
    class Broken(SizedSpec):
        kind: Literal["test-sized-broken"] = "test-sized-broken"  # type: ignore[assignment]

        def nbytes(self, value: Blob) -> Mapping[str, int]:
            raise RuntimeError("cannot count")

    with caplog.at_level(logging.ERROR, logger="handles"):
        Broken(name="unmeasured").get()
    assert "measuring" in caplog.text
    assert handles.registry().stats()[Broken(name="unmeasured").cache_key()].nbytes == 0
