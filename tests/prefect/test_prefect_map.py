"""How a spec goes through Prefect's own machinery: `.map()`, input traversal, hashing, results.

`.map()` must hand every run the spec whole: Prefect splits iterable arguments,
and a spec is not iterable (test_prefect_engines.py runs it on every task runner).
That must leave the rest alone: Prefect walks task inputs with `visit_collection`
(which reads a pydantic model with `dict(model)`), hashes them from their JSON
dump, and persists results; a spec must go through each unchanged.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import Future
from typing import Any

import pytest
from prefect import flow, task, unmapped
from prefect.futures import PrefectConcurrentFuture
from prefect.serializers import JSONSerializer
from prefect.utilities.annotations import quote
from prefect.utilities.callables import expand_mapping_parameters
from prefect.utilities.collections import isiterable, visit_collection
from prefect.utilities.engine import collect_task_run_inputs_sync
from prefect.utilities.hashing import hash_objects

from support.kinds import EchoSpec


def echo(spec: EchoSpec, item: int) -> tuple[EchoSpec, int]:
    return spec, item


@pytest.mark.parametrize("count", [3, len(EchoSpec.model_fields)])
def test_prefects_mapping_gives_every_call_the_spec(count):
    # The expansion behind `.map(..., deferred=True)`; every runner's map decides alike.
    spec, other = EchoSpec(name="whole"), EchoSpec(name="other")
    assert not isiterable(spec)
    items = list(range(count))
    expected = [{"spec": spec, "item": i} for i in items]
    assert expand_mapping_parameters(echo, {"spec": spec, "item": items}) == expected
    assert expand_mapping_parameters(echo, {"spec": unmapped(spec), "item": items}) == expected
    assert expand_mapping_parameters(echo, {"spec": quote(spec), "item": items}) == [
        {"spec": quote(spec), "item": i} for i in items
    ]
    # A list of specs is mapped: one spec per call.
    assert expand_mapping_parameters(echo, {"spec": [spec, other], "item": [1, 2]}) == [
        {"spec": spec, "item": 1},
        {"spec": other, "item": 2},
    ]


def test_visit_collection_walks_past_a_spec_unchanged():
    spec = EchoSpec(name="walked")
    inputs = {"spec": spec, "nested": [spec, {"again": spec}], "n": 1}
    assert visit_collection(inputs, lambda x: x, return_data=True) == inputs
    assert visit_collection(inputs, lambda x: x, return_data=True)["spec"] is spec
    seen: list[Any] = []
    visit_collection(inputs, seen.append)
    assert spec in seen
    assert "walked" in seen  # Prefect looks at the fields too (they hold no futures)
    assert collect_task_run_inputs_sync(inputs) == set()


def test_visit_collection_still_finds_futures_beside_a_spec():
    future = PrefectConcurrentFuture(task_run_id=uuid.uuid4(), wrapped_future=Future())
    found = collect_task_run_inputs_sync({"spec": EchoSpec(name="x"), "upstream": [future]})
    assert [ref.id for ref in found] == [future.task_run_id]


def test_prefect_hashes_a_spec_from_its_json_dump():
    spec = EchoSpec(name="hashed", delay=0.5)
    dumped = json.loads(JSONSerializer(dumps_kwargs={"sort_keys": True}).dumps(spec))
    assert dumped == {"__class__": "support.kinds.EchoSpec", "data": spec.model_dump(mode="json")}
    key = hash_objects({"spec": spec}, raise_on_failure=True)
    assert key == hash_objects({"spec": spec.replace()}, raise_on_failure=True)
    assert key != hash_objects({"spec": spec.replace(delay=1.0)}, raise_on_failure=True)


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_a_spec_result_is_persisted_and_read_back(serializer):
    key = f"spec-result-{uuid.uuid4().hex}"

    @task(persist_result=True, result_serializer=serializer, cache_key_fn=lambda *_: key)
    def make(name: str) -> EchoSpec:
        return EchoSpec(name=name, delay=0.25)

    @flow
    def twice() -> list[Any]:
        first = make("persisted", return_state=True)
        second = make("persisted", return_state=True)  # the cache: read from storage
        return [first.name, second.name, second.result()]

    first, second, value = twice()
    assert (first, second) == ("Completed", "Cached")
    assert value == EchoSpec(name="persisted", delay=0.25)
    assert type(value) is EchoSpec
