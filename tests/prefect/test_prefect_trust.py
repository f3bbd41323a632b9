"""Prefect's own paths across the trust boundary (docs/security.md): flow parameters sent as
JSON (as a deployment, the UI or the API sends them) are untrusted, whether the parameter is
typed as a kind or as AnySpec; and preflight refuses a generator before hashing drains it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow
from prefect.task_runners import ThreadPoolTaskRunner

from handles import DatabaseSpec
from handles.integrations.prefect import AnySpec, PreflightError, preflight
from support.fake_pg import FakePostgres

pytestmark = pytest.mark.usefixtures("prefect_server")

SECRET = "prefect-json-secret-5d1e"


@flow
def where_is_the_password(db: DatabaseSpec, other: AnySpec) -> list[str]:
    return [str(db.password), str(getattr(other, "password", None))]


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "pg-password"
    path.write_text(SECRET)
    return path


def run_with_json(parameters: dict[str, Any]) -> Any:
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(where_is_the_password, parameters=parameters)
    return run_flow(where_is_the_password, flow_run=flow_run, return_type="state")


def test_json_parameters_cannot_read_a_secret_the_worker_did_not_allow(secret_file, monkeypatch):
    for name in ("HANDLES_ALLOW_SECRETS", "HANDLES_ALLOW_HOSTS"):
        monkeypatch.delenv(name, raising=False)
    with FakePostgres() as pg:
        doc = {
            "kind": "database",
            "url": f"postgresql+psycopg://app@127.0.0.1:{pg.port}/sales",
            "password": f"file:{secret_file}",
        }
        state = run_with_json({"db": doc, "other": doc})
        assert state.is_failed()
        assert "HANDLES_ALLOW_SECRETS" in state.message
        assert SECRET not in state.message
        assert pg.seen == []

        monkeypatch.setenv("HANDLES_ALLOW_SECRETS", f"file:{secret_file}")
        monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "127.0.0.1")
        state = run_with_json({"db": doc, "other": doc})
        assert state.is_completed(), state.message
        assert state.result() == [f"file:{secret_file}"] * 2


def numbers() -> Iterator[int]:
    yield from (1, 2, 3)


@preflight
@task
def total(rows: Any) -> int:
    return sum(rows)


def refused(call: Any) -> tuple[str, list[int]]:
    rows = numbers()
    try:
        call(rows)
    except PreflightError as exc:
        return str(exc), list(rows)
    return "not refused", list(rows)


@flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
def submit_a_generator() -> tuple[str, list[int]]:
    return refused(lambda rows: total.submit(rows).result())


@flow
def call_with_a_generator() -> tuple[str, list[int]]:
    return refused(total)


@pytest.mark.parametrize("run", [submit_a_generator, call_with_a_generator])
def test_a_generator_is_refused_before_the_cache_key_drains_it(run):
    # The generator is made inside the flow: Prefect itself turns a flow
    # parameter into JSON (a list) before the flow starts.
    message, rest = run()
    assert "args[0]: generator is an iterator" in message
    assert rest == [1, 2, 3], "nothing was consumed"
