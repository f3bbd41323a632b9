"""A spec holding a secret reference: same key whatever the secret, and the value is never
stored by Prefect (parameters, task inputs, results, logs, the server's database)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from prefect.cache_policies import INPUTS
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL
from spec_flows import VaultSpec, run_logs, vault_flow

from handles.integrations.prefect import SPEC_INPUTS

pytestmark = pytest.mark.usefixtures("prefect_server")

TOKEN_ENV = "HANDLES_PREFECT_TEST_TOKEN"


def server_database_files() -> list[Path]:
    url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    database = Path(url.split(":///", 1)[1])
    return [p for p in database.parent.glob(database.name + "*") if p.is_file()]


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def holding(paths: list[Path], needle: str) -> list[Path]:
    return [p for p in paths if needle.encode() in p.read_bytes()]


def test_key_does_not_depend_on_the_secret_value(monkeypatch):
    vault = VaultSpec(name="keys", token=f"env:{TOKEN_ENV}")
    keys = []
    for value in ("first-secret", "second-secret"):
        monkeypatch.setenv(TOKEN_ENV, value)
        fresh = VaultSpec.model_validate_json(vault.model_dump_json())
        keys.append(
            (
                fresh.cache_key(),
                INPUTS.compute_key(None, {"vault": fresh}, {}),
                SPEC_INPUTS.compute_key(None, {"vault": fresh}, {}),
            )
        )
    assert keys[0] == keys[1]


def test_secret_value_never_reaches_prefect(monkeypatch, prefect_server):
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    monkeypatch.setenv(TOKEN_ENV, secret)
    vault = VaultSpec(name=f"vault-{uuid.uuid4().hex[:8]}", token=f"env:{TOKEN_ENV}")

    state = vault_flow(vault, return_state=True)
    assert state.is_completed(), state
    assert state.result() == f"{vault.name}:{len(secret)}", "the task did read the secret"

    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        stored = client.read_flow_run(run_id)
    assert stored.parameters["vault"]["token"] == {"env": TOKEN_ENV}
    assert secret not in repr(stored)
    messages = [log.message for log in run_logs(run_id)]
    assert any(vault.name in m for m in messages), "the task logged the spec"
    assert not [m for m in messages if secret in m]

    database = server_database_files()
    assert holding(database, vault.name), "the scan finds what the server did store"
    assert holding(database, secret) == []
    results = files_under(prefect_server)
    assert holding(results, vault.name), "the persisted result is under PREFECT_HOME"
    assert holding(results, secret) == []
