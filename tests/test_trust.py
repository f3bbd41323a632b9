"""The trust boundary (docs/security.md, issue 9 items 1-3): a spec read from JSON cannot run
code, read a secret the worker did not allow, send one to a host the worker did not name, or
load an internal kind. Specs made in Python code are trusted and unaffected.

Connections go to a fake PostgreSQL server on loopback that records what clients send.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

import handles
from handles import DatabaseSpec, SpecError
from support.fake_pg import FakePostgres

pytest.importorskip("sqlalchemy")
pytest.importorskip("psycopg")

SETTINGS = (
    "HANDLES_ALLOW_SECRETS",
    "HANDLES_ALLOW_HOSTS",
    "HANDLES_ALLOW_PICKLE_WEIGHTS",
    "HANDLES_ALLOW_OPTIONS",
    "HANDLES_ALLOW_PATHS",
    "HANDLES_ALLOW_ARCHIVES",
)
FILE_SECRET = "file-secret-value-7f3a"
ENV_SECRET = "env-secret-value-91c2"


@pytest.fixture(autouse=True)
def _default_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from the defaults: no secrets, any host, no pickles from JSON."""
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)


def _nested(cls: type[handles.Spec[Any]], doc: dict[str, Any]) -> handles.Spec[Any]:
    # How Prefect validates a flow parameter typed as a kind: nested, from a dict.
    holder = type("Holder", (BaseModel,), {"__annotations__": {"spec": cls}})
    try:
        return holder.model_validate({"spec": doc}).spec  # type: ignore[attr-defined,no-any-return]
    except ValidationError as exc:  # pydantic's own error around ours: same text
        raise SpecError(cls.__name__, [("", str(exc))]) from None


LOADERS: dict[str, Callable[[type[handles.Spec[Any]], dict[str, Any]], handles.Spec[Any]]] = {
    "spec_from_json(text)": lambda cls, doc: handles.spec_from_json(json.dumps(doc)),
    "spec_from_json(dict)": lambda cls, doc: handles.spec_from_json(doc),
    "model_validate_json": lambda cls, doc: cls.model_validate_json(json.dumps(doc)),
    "model_validate": lambda cls, doc: cls.model_validate(doc),
    "nested (Prefect parameters)": _nested,
}


@pytest.fixture(params=list(LOADERS))
def load(request: pytest.FixtureRequest) -> Callable[..., handles.Spec[Any]]:
    return LOADERS[request.param]


@pytest.fixture
def pg() -> Any:
    with FakePostgres() as server:
        yield server


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text(FILE_SECRET + "\n")
    return path


def database_doc(port: int, password: str, **more: Any) -> dict[str, Any]:
    url = f"postgresql+psycopg://app@127.0.0.1:{port}/sales"
    return {"kind": "database", "url": url, "password": password, **more}


# -- item 2: secrets leave the worker --------------------------------------------------


@pytest.mark.parametrize("source", ["file", "env"])
def test_a_secret_named_in_json_is_refused_and_never_sent(
    load, pg, secret_file, monkeypatch, source
):
    monkeypatch.setenv("HANDLES_TEST_TRUST_SECRET", ENV_SECRET)
    reference = f"file:{secret_file}" if source == "file" else "env:HANDLES_TEST_TRUST_SECRET"
    with pytest.raises(SpecError) as info:
        load(DatabaseSpec, database_doc(pg.port, reference))
    message = str(info.value)
    assert "DatabaseSpec" in message
    assert "password" in message
    assert f"HANDLES_ALLOW_SECRETS={reference}" in message, "names the setting that allows it"
    assert "HANDLES_ALLOW_HOSTS=127.0.0.1" in message, "and the host setting it also needs"
    assert pg.seen == [], "nothing connected"
    assert FILE_SECRET.encode() not in pg.raw
    assert ENV_SECRET.encode() not in pg.raw
    assert FILE_SECRET not in message
    assert ENV_SECRET not in message
    assert len(handles.registry()) == 0


def test_an_allowed_secret_goes_only_to_an_allowed_host(pg, secret_file, monkeypatch):
    doc = database_doc(pg.port, f"file:{secret_file}")
    monkeypatch.setenv("HANDLES_ALLOW_SECRETS", f"file:{secret_file.parent}/*")
    with pytest.raises(SpecError, match=r"HANDLES_ALLOW_HOSTS=127\.0\.0\.1"):
        handles.spec_from_json(doc)  # the secret is allowed, but to which host?
    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "db.internal")
    with pytest.raises(SpecError, match=r"may not reach host '127\.0\.0\.1'"):
        handles.spec_from_json(doc)
    assert pg.seen == []

    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "db.internal,127.0.0.*")
    spec = handles.spec_from_json(doc)
    with pytest.raises(handles.BuildError, match="password authentication failed"):
        spec.get()
    assert [seen.password for seen in pg.seen] == [FILE_SECRET], "the worker allowed this one"
    assert len(handles.registry()) == 0
    # A spec from JSON, once accepted, changes in Python code like any other.
    assert spec.replace(pool_size=2).password == spec.password


@pytest.mark.parametrize(
    "reference",
    ["file:{dir}/../outside", "file:relative/secret", "env:HANDLES_TEST_OTHER", "env:PATH"],
)
def test_patterns_allow_exactly_what_they_name(reference, secret_file, monkeypatch):
    monkeypatch.setenv(
        "HANDLES_ALLOW_SECRETS", f"env:HANDLES_TEST_TRUST_*,file:{secret_file.parent}/*"
    )
    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "127.0.0.1")
    doc = database_doc(1, reference.format(dir=secret_file.parent))
    with pytest.raises(SpecError, match=r"DatabaseSpec\.password: "):
        handles.spec_from_json(doc)
    allowed = database_doc(1, "env:HANDLES_TEST_TRUST_SECRET")
    assert handles.spec_from_json(allowed).password is not None


def test_specs_made_in_python_are_trusted(pg, secret_file):
    spec = DatabaseSpec(
        url=f"postgresql+psycopg://app@127.0.0.1:{pg.port}/sales", password=f"file:{secret_file}"
    )
    with pytest.raises(handles.BuildError):
        spec.get()
    assert pg.seen[0].password == FILE_SECRET
    # So is data the caller marks as trusted, and a spec built with replace().
    doc = spec.model_dump(mode="json")
    assert DatabaseSpec.model_validate(doc, context={"handles_trust": "trusted"}) == spec
    assert spec.replace(pool_size=2).password == spec.password


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"url": "postgresql+psycopg://app@127.0.0.1/sales"}, "url"),
        ({"url": "postgresql+psycopg://app@db.internal/sales?host=127.0.0.1"}, "url"),
        (
            {"url": "postgresql+psycopg://app@db.internal/s", "connect_args": {"host": "evil"}},
            "connect_args.host",
        ),
    ],
    ids=["url host", "host= in the query", "connect_args host"],
)
def test_with_a_host_list_json_reaches_only_listed_hosts(doc, field, monkeypatch):
    # host= is not on the allow-list: the worker allows it, and the host check still applies.
    monkeypatch.setenv("HANDLES_ALLOW_OPTIONS", "database:host")
    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "db.internal")
    with pytest.raises(SpecError) as info:
        handles.spec_from_json({"kind": "database", **doc})
    assert (field, info.value.problems[0][1]) in info.value.problems
    assert "HANDLES_ALLOW_HOSTS" in str(info.value)
    # Without a list, any host (no secret travels with these specs).
    monkeypatch.delenv("HANDLES_ALLOW_HOSTS")
    assert handles.spec_from_json({"kind": "database", **doc}).kind == "database"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"url": "sftp://files.evil.example/data.csv"}, "url"),
        ({"url": "s3://other-bucket/data.csv"}, "url"),
        (
            {
                "url": "s3://handles-data/k.csv",
                "storage_options": {"endpoint_url": "http://evil:9000"},
            },
            "storage_options.endpoint_url",
        ),
        (
            {
                "url": "s3://handles-data/k.csv",
                "storage_options": {"client_kwargs": {"endpoint_url": "https://evil/"}},
            },
            "storage_options.client_kwargs.endpoint_url",
        ),
    ],
    ids=["sftp host", "bucket", "endpoint_url", "client_kwargs.endpoint_url"],
)
def test_file_specs_from_json_reach_only_listed_hosts(fields, field, monkeypatch):
    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "handles-*,127.0.0.1")
    with pytest.raises(SpecError) as info:
        handles.spec_from_json({"kind": "file", **fields})
    assert field in dict(info.value.problems)
    assert "FileSpec" in str(info.value)


def test_ipv6_hosts_match_with_or_without_brackets(monkeypatch):
    doc = {"kind": "database", "url": "postgresql+psycopg://app@[::1]:5432/sales"}
    for allowed in ("[::1]", "::1"):
        monkeypatch.setenv("HANDLES_ALLOW_HOSTS", f"db.internal,{allowed}")
        assert handles.spec_from_json(doc).kind == "database"
    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "[::2]")
    with pytest.raises(SpecError, match="may not reach host '::1'"):
        handles.spec_from_json(doc)


def test_file_secrets_from_json_need_both_settings(tmp_path, monkeypatch):
    doc = {
        "kind": "file",
        "url": "s3://handles-data/k.csv",
        "storage_options": {"endpoint_url": "http://127.0.0.1:9000"},
        "secrets": {"key": "env:HANDLES_TEST_TRUST_KEY"},
    }
    with pytest.raises(SpecError) as info:
        handles.spec_from_json(doc)
    assert set(dict(info.value.problems)) == {"secrets.key", "url", "storage_options.endpoint_url"}
    monkeypatch.setenv("HANDLES_ALLOW_SECRETS", "env:HANDLES_TEST_TRUST_KEY")
    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "handles-data,127.0.0.1")
    assert handles.spec_from_json(doc).secrets["key"].env == "HANDLES_TEST_TRUST_KEY"
    # A local file reaches no host: nothing to allow.
    monkeypatch.delenv("HANDLES_ALLOW_HOSTS")
    assert handles.spec_from_json({"kind": "file", "url": str(tmp_path / "x")}).kind == "file"


# -- item 1: code runs from JSON -------------------------------------------------------

REMOTE_CODE = """
import pathlib
pathlib.Path({marker!r}).write_text("remote code ran")
"""


@pytest.fixture
def remote_code_model(tmp_path: Path) -> tuple[Path, Path]:
    """A model folder whose config asks for its own Python code, which leaves a marker."""
    folder = tmp_path / "model"
    folder.mkdir()
    marker = tmp_path / "remote-code-ran"
    (folder / "evil.py").write_text(REMOTE_CODE.format(marker=str(marker)))
    config = {"model_type": "bert", "auto_map": {"AutoConfig": "evil.EvilConfig"}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def test_remote_code_is_never_accepted_from_json(load, remote_code_model, monkeypatch):
    from handles import HFPipelineSpec

    folder, marker = remote_code_model
    for name in SETTINGS:  # no setting allows it
        monkeypatch.setenv(name, "*" if name != "HANDLES_ALLOW_PICKLE_WEIGHTS" else "1")
    doc = {
        "kind": "hf-pipeline",
        "task": "text-classification",
        "model": str(folder),
        "trust_remote_code": True,
    }
    with pytest.raises(SpecError) as info:
        load(HFPipelineSpec, doc)
    message = str(info.value)
    assert "HFPipelineSpec" in message
    assert "trust_remote_code" in message
    assert "no setting allows it" in message
    assert not marker.exists()
    assert len(handles.registry()) == 0
    # Python code on the worker may still say so.
    assert HFPipelineSpec(**{k: v for k, v in doc.items() if k != "kind"}).trust_remote_code


@pytest.mark.parametrize(
    "kwargs",
    [{"model_kwargs": {"trust_remote_code": True}}, {"x": [{"trust_remote_code": True}]}],
)
def test_remote_code_cannot_hide_in_pipeline_kwargs(kwargs):
    from handles import HFPipelineSpec

    with pytest.raises(SpecError, match=r"HFPipelineSpec\.pipeline_kwargs: .*trust_remote_code"):
        HFPipelineSpec(task="text-classification", model="/m", pipeline_kwargs=kwargs)


def test_a_hub_token_is_not_a_pipeline_kwarg():
    from handles import HFPipelineSpec

    with pytest.raises(SpecError, match="HF_TOKEN") as info:
        HFPipelineSpec(task="fill-mask", model="/m", pipeline_kwargs={"token": "hf_secret123"})
    assert "hf_secret123" not in str(info.value)


def test_pickle_weights_from_json_need_the_worker_setting(load, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from handles import TorchModelSpec
    from support import tiny_models as tm

    weights = tm.save_pickle(tmp_path / "tiny.pt")
    doc = {"kind": "torch", "factory": "tiny-mlp", "weights": str(weights)}
    with pytest.raises(SpecError, match="allow_pickle_weights"):
        load(TorchModelSpec, doc)  # refused as before: a .pt file needs the opt-in
    doc["allow_pickle_weights"] = True
    with pytest.raises(SpecError) as info:
        load(TorchModelSpec, doc)
    assert "TorchModelSpec" in str(info.value)
    assert "HANDLES_ALLOW_PICKLE_WEIGHTS=1" in str(info.value)
    monkeypatch.setenv("HANDLES_ALLOW_PICKLE_WEIGHTS", "1")
    assert load(TorchModelSpec, doc).get() is not None  # read with weights_only=True


def test_pickle_weights_disguised_as_safetensors_are_refused_at_build(tmp_path):
    pytest.importorskip("torch")
    from support import tiny_models as tm

    disguised = tmp_path / "tiny.safetensors"
    os.replace(tm.save_pickle(tmp_path / "tiny.pt"), disguised)
    spec = handles.spec_from_json(
        {"kind": "torch", "factory": "tiny-mlp", "weights": str(disguised)}
    )
    with pytest.raises(handles.BuildError, match="allow_pickle_weights"):
        spec.get()
    assert len(handles.registry()) == 0


# -- item 3: internal kinds ------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["sqlite-writer-lock", "sqlite-memory", "sqlite-engine", "file-system"]
)
def test_internal_kinds_do_not_load_from_json(kind, tmp_path):
    target = tmp_path / "x.db"
    with pytest.raises(SpecError, match="unknown kind"):
        handles.spec_from_json({"kind": kind, "path": str(target), "db": {"path": str(target)}})
    assert list(tmp_path.iterdir()) == [], "no -lock file, no database"


def test_the_policy_is_read_where_json_is_validated(monkeypatch, pg):
    # Settings are read at each validation: a worker's own environment decides.
    doc = database_doc(pg.port, "env:HANDLES_TEST_TRUST_SECRET")
    monkeypatch.setenv("HANDLES_ALLOW_SECRETS", "env:HANDLES_TEST_TRUST_SECRET")
    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "127.0.0.1")
    spec = handles.spec_from_json(doc)
    monkeypatch.delenv("HANDLES_ALLOW_SECRETS")
    with pytest.raises(SpecError):
        handles.spec_from_json(doc)
    # A spec already validated travels on (pickled to a process pool) unchanged.
    import pickle

    assert pickle.loads(pickle.dumps(spec)) == spec
