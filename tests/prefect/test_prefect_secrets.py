"""Specs holding secrets: same key whatever the secret, and the value is never stored by
Prefect (flow parameters, logs, persisted results, the server's own database)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from prefect.cache_policies import INPUTS
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL
from spec_flows import VaultSpec, run_logs, secret_flow

import handles
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


def postgres_url(password: str | None = None) -> str:
    """The test server's URL, with `password` in it (trust auth accepts any)."""
    url = os.environ.get("HANDLES_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("HANDLES_TEST_POSTGRES_URL is not set (e.g. postgresql+psycopg://...)")
    pytest.importorskip("psycopg", reason="needs psycopg")
    parts = urlsplit(url)
    user, host = parts.username or "postgres", parts.netloc.rpartition("@")[2]
    auth = f"{user}:{password}" if password else user
    return urlunsplit(parts._replace(netloc=f"{auth}@{host}"))


def vault(secret: str, marker: str):
    return VaultSpec(name=marker, token=f"env:{TOKEN_ENV}"), f"{marker}:{len(secret)}"


def database_with_reference(secret: str, marker: str):
    from handles import DatabaseSpec

    spec = DatabaseSpec(
        url=postgres_url(), password=f"env:{TOKEN_ENV}", connect_args={"application_name": marker}
    )
    return spec, "database:connected"


def database_with_url_password(secret: str, marker: str):
    from handles import DatabaseSpec

    spec = DatabaseSpec(url=postgres_url(secret), connect_args={"application_name": marker})
    return spec, "database:connected"


def test_key_does_not_depend_on_the_secret_value(monkeypatch):
    # The specs below come back from JSON: this worker allows them the token.
    monkeypatch.setenv("HANDLES_ALLOW_SECRETS", f"env:{TOKEN_ENV}")
    spec = VaultSpec(name="keys", token=f"env:{TOKEN_ENV}")
    keys = []
    for value in ("first-secret", "second-secret"):
        monkeypatch.setenv(TOKEN_ENV, value)
        fresh = VaultSpec.model_validate_json(spec.model_dump_json())
        assert fresh.get().name == f"keys:{len(value)}", "built with this value"
        handles.registry().evict(fresh)
        keys.append(
            (
                fresh.cache_key(),
                INPUTS.compute_key(None, {"spec": fresh}, {}),
                SPEC_INPUTS.compute_key(None, {"spec": fresh}, {}),
            )
        )
    assert keys[0] == keys[1]


@pytest.mark.parametrize(
    "make", [vault, database_with_reference, database_with_url_password], ids=lambda f: f.__name__
)
def test_secret_value_never_reaches_prefect(monkeypatch, prefect_server, make):
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(TOKEN_ENV, secret)
    spec, expected = make(secret, marker)

    state = secret_flow(spec, return_state=True)
    assert state.is_completed(), state
    assert state.result() == expected, "the task did use the secret"

    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        stored = client.read_flow_run(run_id)
    assert marker in repr(stored.parameters)
    assert secret not in repr(stored)
    messages = [log.message for log in run_logs(run_id)]
    assert any(marker in m for m in messages), "the task logged the spec"
    assert not [m for m in messages if secret in m]

    database = server_database_files()
    assert holding(database, marker), "the scan finds what the server did store"
    assert holding(database, secret) == []
    results = files_under(prefect_server)
    assert holding(results, expected), "the persisted result is under PREFECT_HOME"
    assert holding(results, secret) == []
