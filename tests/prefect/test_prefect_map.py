"""How a spec goes through Prefect's own machinery: `.map()`, input traversal, hashing, results.

`.map()` must hand every run the spec whole (preflight wraps it in `unmapped`;
see test_prefect_engines.py for every task runner). Whatever makes that work must
leave the rest alone: Prefect walks task inputs with `visit_collection` (which
reads a pydantic model with `dict(model)`), hashes them from their JSON dump,
and persists results; a spec must go through each unchanged.
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
from prefect.utilities.annotations import allow_failure, quote
from prefect.utilities.callables import expand_mapping_parameters
from prefect.utilities.collections import visit_collection
from prefect.utilities.engine import collect_task_run_inputs_sync
from prefect.utilities.hashing import hash_objects

from handles.integrations.prefect import _broadcast_specs
from support.kinds import EchoSpec


def echo(spec: EchoSpec, item: int) -> tuple[EchoSpec, int]:
    return spec, item


def test_map_arguments_broadcast_each_spec_and_map_lists_of_specs():
    spec, other = EchoSpec(name="a"), EchoSpec(name="b")
    args, kwargs = _broadcast_specs((spec, [1, 2]), {"others": [spec, other]})
    assert isinstance(args[0], unmapped)
    assert args[0].value is spec
    assert args[1] == [1, 2]
    assert kwargs == {"others": [spec, other]}  # a list of specs is mapped, one per run

    (failing,) = _broadcast_specs((allow_failure(spec),), {})[0]
    assert isinstance(failing, allow_failure)
    assert isinstance(failing.unwrap(), unmapped)
    (quoted,) = _broadcast_specs((quote(spec),), {})[0]
    assert isinstance(quoted, quote)
    assert quoted.unwrap().value is spec
    (explicit,) = _broadcast_specs((unmapped(spec),), {})[0]
    assert explicit.value is spec  # not wrapped twice


@pytest.mark.parametrize("count", [3, len(EchoSpec.model_fields)])
def test_prefects_mapping_gives_every_call_the_spec(count):
    # The expansion behind `.map(..., deferred=True)` and every runner's map.
    spec = EchoSpec(name="whole")
    args, _ = _broadcast_specs((spec, list(range(count))), {})
    calls = expand_mapping_parameters(echo, {"spec": args[0], "item": args[1]})
    assert calls == [{"spec": spec, "item": i} for i in range(count)]


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
