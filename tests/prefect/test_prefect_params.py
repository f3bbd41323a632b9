"""Flows with spec parameters: the parameter schema, and a run from JSON parameters as a
deployment makes it (the flow run is created with JSON, the engine rebuilds the specs)."""

from __future__ import annotations

import json

import pytest
from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow
from spec_flows import ModelSpec, describe

from support.kinds import EchoSpec, ThreadEchoSpec

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_parameter_schema_describes_the_spec_fields():
    schema = describe.parameters.model_dump()
    db = schema["properties"]["db"]
    definition = schema["definitions"][db["$ref"].rsplit("/", 1)[-1]]
    fields = definition["properties"]
    assert fields["kind"]["const"] == "test-echo" or fields["kind"].get("enum") == ["test-echo"]
    assert fields["name"]["x-handles-role"] == "identity"
    assert fields["delay"]["x-handles-role"] == "placement"
    assert definition["required"] == ["name"]
    others = schema["properties"]["others"]["items"]
    assert others["required"] == ["kind"]
    assert schema["required"] == ["db", "others"]


def test_json_parameters_rebuild_equal_specs():
    db = EchoSpec(name="deployed", delay=0.25)
    others = [ThreadEchoSpec(name="t"), ModelSpec(weights="w", device="cuda")]
    parameters = json.loads(
        json.dumps({"db": db.model_dump(mode="json"), "others": [o.model_dump() for o in others]})
    )

    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(describe, parameters=parameters)
        flow_run = client.read_flow_run(flow_run.id)
    assert flow_run.parameters == parameters, "the API holds the JSON as sent"
    state = run_flow(describe, flow_run=flow_run, return_type="state")
    assert state.is_completed(), state

    received = state.result()
    assert received["db"] == ["EchoSpec", db.model_dump_json()]
    assert received["others"] == [[type(o).__name__, o.model_dump_json()] for o in others]
    rebuilt = EchoSpec.model_validate_json(received["db"][1])
    assert rebuilt == db
    assert rebuilt.cache_key() == db.cache_key()


def test_json_parameters_of_an_unknown_kind_fail_validation_clearly():
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(
            describe,
            parameters={"db": {"name": "x"}, "others": [{"kind": "no-such-kind"}]},
        )
    state = run_flow(describe, flow_run=flow_run, return_type="state")
    assert state.is_failed()
    assert "unknown kind 'no-such-kind'" in state.message
