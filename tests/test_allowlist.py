"""The allow-list (issue 21) and its edges (issue 26): every host-bearing argument of every
driver is host-checked once a worker allows it, and refused (naming the setting) until then;
a spec *instance* passing through validation again stays trusted; docs/security.md's table
is the one the declarations generate.

The host-bearing arguments are listed here, from the drivers' documentation, independently
of the declarations in handles.specs._sqlalchemy: dropping one there fails a test here.
"""

from __future__ import annotations

import importlib
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

import handles
from handles import DatabaseSpec, FileSpec, SpecError
from handles._allow import allow_table, canonical_host, conninfo_params, host_matches
from handles._kinds import BUILTIN

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = (
    "HANDLES_ALLOW_SECRETS",
    "HANDLES_ALLOW_HOSTS",
    "HANDLES_ALLOW_OPTIONS",
    "HANDLES_ALLOW_PATHS",
    "HANDLES_ALLOW_PICKLE_WEIGHTS",
    "HANDLES_ALLOW_ARCHIVES",
)
EVIL = "evil.example"


@pytest.fixture(autouse=True)
def _defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)


# Every argument through which each driver takes a host (or a connection string that
# holds one, or a file that names one), with a value that points at EVIL.
LIBPQ = {
    "host": EVIL,
    "hostaddr": "192.0.2.7",
    "conninfo": f"host={EVIL} port=5432",
    "dsn": f"postgresql://app@{EVIL}:5432/db",
    "service": "evil",
    "servicefile": "/tmp/evil-pg_service.conf",
}
HOST_ARGUMENTS: dict[str, dict[str, Any]] = {
    "postgresql+psycopg": LIBPQ,
    "postgresql+psycopg_async": LIBPQ,
    "postgresql+psycopg2": LIBPQ,
    "postgresql": LIBPQ,
    "postgresql+asyncpg": {
        "host": EVIL,
        "dsn": f"postgresql://app@{EVIL}/db",
        "service": "evil",
    },
    "mysql+pymysql": {
        "host": EVIL,
        "unix_socket": "/tmp/evil.sock",
        "read_default_file": "/tmp/evil.cnf",
    },
}
CASES = [
    (driver, name, value, place)
    for driver, arguments in HOST_ARGUMENTS.items()
    for name, value in arguments.items()
    for place in ("query", "connect_args")
]


def _doc(kind: str, driver: str, name: str, value: Any, place: str) -> dict[str, Any]:
    url = f"{driver}://app@db.internal:5432/db"
    if place == "query":
        from urllib.parse import quote

        return {"kind": kind, "url": f"{url}?{name}={quote(str(value), safe='')}"}
    return {"kind": kind, "url": url, "connect_args": {name: value}}


@pytest.mark.parametrize("kind", ["database", "async-database"])
@pytest.mark.parametrize(
    ("driver", "name", "value", "place"), CASES, ids=[f"{d}-{n}-{p}" for d, n, _, p in CASES]
)
def test_every_host_argument_of_every_driver_is_checked(
    monkeypatch, *, kind, driver, name, value, place
):
    field = "url" if place == "query" else f"connect_args.{name}"
    doc = _doc(kind, driver, name, value, place)
    # Not on the allow-list: refused, naming the field, the key and the setting.
    with pytest.raises(SpecError) as info:
        handles.spec_from_json(doc)
    assert f"HANDLES_ALLOW_OPTIONS={kind}:{name}" in dict(info.value.problems)[field]
    # Allowed by the worker: the host check still sees where it points.
    monkeypatch.setenv("HANDLES_ALLOW_OPTIONS", f"{kind}:{name}")
    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "db.internal")
    with pytest.raises(SpecError) as info:
        handles.spec_from_json(doc)
    messages = [m for f, m in info.value.problems if f == field]
    assert messages, info.value.problems
    assert all("may not reach host" in m or "names no host" in m for m in messages)
    # And the same argument pointing at the listed host passes, where a host can be told.
    if name in ("host", "conninfo", "dsn"):
        fine = str(value).replace(EVIL, "db.internal")
        assert handles.spec_from_json(_doc(kind, driver, name, fine, place)).kind == kind


@pytest.mark.parametrize(
    ("url", "connect_args"),
    [
        ("postgresql+psycopg://app@db.internal,evil.example/db", {}),
        ("postgresql+psycopg://app@db.internal/db?host=db.internal&host=evil.example", {}),
        ("postgresql+psycopg://app@db.internal/db?host=evil.example:5432", {}),  # SA's form
        ("postgresql+psycopg://app@db.internal/db?host=[::2]:5432", {}),
        ("postgresql+psycopg://app@db.internal/db", {"host": "db.internal,evil.example"}),
        ("postgresql+psycopg://app@db.internal/db", {"hostaddr": 3221225991}),  # 192.0.2.7
        ("postgresql+psycopg://app@db.internal/db", {"conninfo": "host='evil.example'"}),
        ("postgresql+psycopg://app@db.internal/db", {"dsn": "postgres://a@x,evil.example/d"}),
        ("postgresql+psycopg:///db", {}),  # no host: PGHOST or a socket decides
    ],
)
def test_host_lists_numbers_and_connection_strings_are_read_as_libpq_reads_them(
    url, connect_args, monkeypatch
):
    monkeypatch.setenv("HANDLES_ALLOW_OPTIONS", "database:host*,database:conninfo,database:dsn")
    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "db.internal")
    with pytest.raises(SpecError, match=r"may not reach host|names no host"):
        handles.spec_from_json({"kind": "database", "url": url, "connect_args": connect_args})


def test_sqlalchemys_host_and_port_form_is_read_as_a_host(monkeypatch):
    monkeypatch.setenv("HANDLES_ALLOW_OPTIONS", "database:host")
    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "db.internal,db2.internal")
    url = "postgresql+psycopg://app@db.internal/db?host=db.internal:5432&host=db2.internal:5433"
    assert handles.spec_from_json({"kind": "database", "url": url}).kind == "database"
    # libpq's comma-separated lists, each host checked on its own.
    for url in (
        "postgresql+psycopg://app@db.internal,db2.internal/db",
        "postgresql+psycopg://app@db.internal/db?host=db.internal,db2.internal",
    ):
        assert handles.spec_from_json({"kind": "database", "url": url}).kind == "database"


def test_a_secret_with_no_host_is_refused_even_when_allowed(monkeypatch):
    monkeypatch.setenv("HANDLES_ALLOW_SECRETS", "env:PGPW")
    doc = {"kind": "database", "url": "postgresql+psycopg://app@/db", "password": "env:PGPW"}
    with pytest.raises(SpecError, match="names no host the worker can check"):
        handles.spec_from_json(doc)


@pytest.mark.parametrize(
    ("host", "pattern", "matches"),
    [
        ("2130706433", "127.0.0.1", True),
        ("0x7f.1", "127.0.0.1", True),
        ("0177.0.0.1", "127.0.0.1", True),
        ("127.1", "127.0.0.*", True),
        ("2130706433", "db.internal", False),
        ("[::1]", "::1", True),
        ("evil.example,db.internal", "*.internal", False),  # a list is never one host
        ("db.internal evil", "db.internal*", False),
        ("DB.Internal", "db.internal", True),
        ("10.evil.example", "10.*", False),  # an address pattern never matches a name
        ("0x0a.1", "10.*", True),
    ],
)
def test_hosts_match_as_resolvers_read_them(host, pattern, matches):
    assert host_matches(host, pattern) is matches
    assert canonical_host("0x7f000001") == "127.0.0.1"


def test_conninfo_is_read_as_libpq_reads_it():
    assert conninfo_params("host='a b' password=x\\'y port = 5") == [
        ("host", "a b"),
        ("password", "x'y"),
        ("port", "5"),
    ]
    assert ("host", "h2") in (conninfo_params("postgresql://u:p@h1:1,h2:2/db") or [])
    assert conninfo_params("not a conninfo") is None


@pytest.mark.parametrize(
    "fields",
    [
        {"url": "postgresql+psycopg://app@h/db?conninfo=password%3Dhunter2"},
        {"url": "postgresql+psycopg://app@h/db", "connect_args": {"conninfo": "password=hunter2"}},
        {
            "url": "postgresql+psycopg://app@h/db",
            "connect_args": {"dsn": "postgres://u:hunter2@h/d"},
        },
        {"url": "postgresql+psycopg://app@h/db?dsn=postgres%3A%2F%2Fu%3Ahunter2%40h%2Fd"},
    ],
)
def test_passwords_inside_connection_strings_are_refused_everywhere(fields):
    for make in (
        lambda: DatabaseSpec(**fields),
        lambda: handles.spec_from_json({"kind": "database", **fields}),
    ):
        with pytest.raises(SpecError, match="literal credential") as info:
            make()
        assert "hunter2" not in str(info.value)


# -- files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "field", "setting"),
    [
        ({"url": "sftp://h/x.csv"}, "url", "file:sftp"),
        ({"url": "ftp://h/x.csv"}, "url", "file:ftp"),
        (
            {"url": "s3://b/k", "storage_options": {"config_kwargs": {"proxies": {"https": "x"}}}},
            "storage_options.config_kwargs.proxies.https",
            "file:s3.config_kwargs.proxies.https",
        ),
        (
            {"url": "https://h/x", "storage_options": {"client_kwargs": {"base_url": "x"}}},
            "storage_options.client_kwargs.base_url",
            "file:https.client_kwargs.base_url",
        ),
        ({"url": "https://h/x", "secrets": {"path": "env:X"}}, "secrets.path", "file:https.path"),
        (
            {"url": "memory://b/x", "secrets": {"token": "env:X"}},
            "secrets.token",
            "file:memory.token",
        ),
    ],
)
def test_file_options_outside_the_protocols_list_are_refused(doc, field, setting, monkeypatch):
    monkeypatch.setenv("HANDLES_ALLOW_SECRETS", "env:X")
    with pytest.raises(SpecError) as info:
        handles.spec_from_json({"kind": "file", **doc})
    problems = dict(info.value.problems)
    assert f"HANDLES_ALLOW_OPTIONS={setting}" in problems[field]
    assert str(info.value).startswith("FileSpec.")


def test_widened_file_options_are_still_host_checked(monkeypatch):
    monkeypatch.setenv("HANDLES_ALLOW_OPTIONS", "file:https.*")
    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "files.internal")
    doc = {
        "kind": "file",
        "url": "https://files.internal/x.csv",
        "storage_options": {"proxy": "http://evil.example:3128"},
    }
    with pytest.raises(SpecError, match=r"may not reach host 'evil\.example'"):
        handles.spec_from_json(doc)
    doc["storage_options"] = {"simple_links": True}
    assert handles.spec_from_json(doc).kind == "file"


# -- instances stay trusted (issue 26) ------------------------------------------------------


def _instances(tmp_path: Path) -> list[handles.Spec[Any]]:
    made: list[handles.Spec[Any]] = [
        DatabaseSpec(url="postgresql+psycopg://app@db.internal/sales", password="env:PGPW"),
        FileSpec(url="s3://b/k", secrets={"key": "env:K"}),
    ]
    if importlib.util.find_spec("transformers") is not None:
        from handles import HFPipelineSpec

        made.append(HFPipelineSpec(task="text-classification", model="/m", trust_remote_code=True))
    if importlib.util.find_spec("torch") is not None:
        from handles import TorchModelSpec
        from support import tiny_models as tm

        weights = tm.save_pickle(tmp_path / "w.pt")
        made.append(
            TorchModelSpec(factory="tiny-mlp", weights=str(weights), allow_pickle_weights=True)
        )
    return made


def test_a_spec_instance_validated_again_stays_trusted(tmp_path):
    for spec in _instances(tmp_path):
        cls = type(spec)
        assert cls.model_validate(spec) is spec
        assert TypeAdapter(cls).validate_python(spec) is spec
        # Its JSON is data, though: untrusted as ever.
        with pytest.raises(SpecError, match="untrusted"):
            handles.spec_from_json(spec.model_dump_json())


def test_a_prefect_flow_parameter_given_an_instance_stays_trusted():
    prefect = pytest.importorskip("prefect")

    @prefect.flow
    def load(db: DatabaseSpec) -> str:
        return db.url

    spec = DatabaseSpec(url="postgresql+psycopg://app@db.internal/sales", password="env:PGPW")
    assert load.validate_parameters({"db": spec})["db"] is spec
    with pytest.raises(Exception, match="HANDLES_ALLOW_SECRETS"):
        load.validate_parameters({"db": spec.model_dump(mode="json")})


# -- the docs --------------------------------------------------------------------------------

TABLE = re.compile(
    r"<!-- allow-list: generated .*? -->\n(.*?)\n<!-- end of the allow-list -->", re.DOTALL
)


def generated_table() -> str:
    classes = [
        (name, getattr(importlib.import_module(info.module), info.class_name))
        for name, info in BUILTIN.items()
    ]
    return allow_table(classes)


def test_the_security_page_shows_the_allow_list_the_kinds_declare():
    page = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    found = TABLE.search(page)
    assert found is not None, "docs/security.md lost its allow-list markers"
    assert found.group(1).strip() == generated_table(), (
        "docs/security.md's allow-list differs from the declarations; paste this:\n"
        + generated_table()
    )


# -- every endpoint option of every protocol (issue 26) ---------------------------------------

# Independent of handles.specs.file.PROTOCOLS: where each store takes its endpoint.
ENDPOINT_OPTIONS: dict[str, dict[str, Any]] = {
    "s3": {
        "endpoint_url": "http://evil.example:9000",
        "client_kwargs": {"endpoint_url": "http://evil.example:9000"},
    },
    "gcs": {"endpoint_url": "http://evil.example"},
    "abfs": {"account_name": "evil", "account_host": "evil.example"},
}
ENDPOINT_CASES = [
    (protocol, name, value)
    for protocol, options in ENDPOINT_OPTIONS.items()
    for name, value in options.items()
]


@pytest.mark.parametrize(
    ("protocol", "name", "value"), ENDPOINT_CASES, ids=[f"{p}-{n}" for p, n, _ in ENDPOINT_CASES]
)
def test_every_endpoint_option_of_every_protocol_is_host_checked(
    monkeypatch, *, protocol, name, value
):
    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "bucket,*.internal")
    doc = {"kind": "file", "url": f"{protocol}://bucket/x.csv", "storage_options": {name: value}}
    with pytest.raises(SpecError) as info:
        handles.spec_from_json(doc)
    endpoint = [(f, m) for f, m in info.value.problems if f.startswith("storage_options.")]
    assert endpoint, info.value.problems
    assert all("may not reach host" in m for _, m in endpoint), endpoint


def test_an_object_store_without_an_endpoint_reaches_its_own_host(monkeypatch):
    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "bucket")
    with pytest.raises(SpecError, match=r"may not reach host 's3\.amazonaws\.com'"):
        handles.spec_from_json({"kind": "file", "url": "s3://bucket/x.csv"})
    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "bucket,*.amazonaws.com")
    assert handles.spec_from_json({"kind": "file", "url": "s3://bucket/x.csv"}).kind == "file"


# -- secrets scrubbed from build errors -------------------------------------------------------


def test_a_secret_echoed_by_a_filesystem_shows_as_its_reference(monkeypatch):
    # fsspec's DirFileSystem builds its target filesystem from target_protocol= and, for an
    # unknown one, says which protocol it could not find: the secret put there by a trusted spec.
    pytest.importorskip("fsspec")
    value = "scrub-me-4f1d2c"
    monkeypatch.setenv("HANDLES_TEST_SCRUB", value)
    spec = FileSpec(
        url="dir://x.txt",
        storage_options={"path": "/"},
        secrets={"target_protocol": "env:HANDLES_TEST_SCRUB"},
    )
    with pytest.raises(handles.HandlesError) as info:
        spec.get()
    import traceback

    text = "".join(traceback.format_exception(info.value))
    assert value not in text
    assert "<env:HANDLES_TEST_SCRUB>" in text, text
    assert len(handles.registry()) == 0


# -- HF reads safetensors only unless allowed ------------------------------------------------


def test_hf_reads_a_pickle_checkpoint_only_when_allowed(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    import torch
    from safetensors.torch import load_file

    from support import tiny_models as tm

    folder = tm.save_tiny_hf(tmp_path / "model")
    for weights in folder.glob("*.safetensors"):  # the same weights, as a pickle checkpoint
        torch.save(load_file(weights), folder / "pytorch_model.bin")
        weights.unlink()
    doc = {"kind": "hf-pipeline", "task": "text-classification", "model": str(folder)}
    spec = handles.spec_from_json(doc)
    with pytest.raises(handles.HandlesError, match=r"safetensors|model\.safetensors"):
        spec.get()
    assert len(handles.registry()) == 0
    with pytest.raises(SpecError, match="HANDLES_ALLOW_PICKLE_WEIGHTS=1"):
        handles.spec_from_json({**doc, "allow_pickle_weights": True})
    with pytest.raises(SpecError, match=r"pipeline_kwargs\.model_kwargs"):
        handles.spec_from_json({**doc, "pipeline_kwargs": {"model_kwargs": {"x": 1}}})
    monkeypatch.setenv("HANDLES_ALLOW_PICKLE_WEIGHTS", "1")
    allowed = handles.spec_from_json({**doc, "allow_pickle_weights": True})
    assert allowed.get()("good film")  # read with torch.load(weights_only=True)
    handles.registry().evict(allowed)


@pytest.mark.parametrize(
    ("query", "refused"),
    [
        ("sslmode=disable", True),
        ("sslmode=allow", True),
        ("sslmode=verify-full", False),
        ("gssencmode=disable", True),
        ("channel_binding=disable", True),
        ("channel_binding=require", False),
    ],
)
def test_from_data_tls_can_be_made_stricter_never_turned_off(monkeypatch, *, query, refused):
    doc = {"kind": "database", "url": f"postgresql+psycopg://app@db.internal/db?{query}"}
    if not refused:
        assert handles.spec_from_json(doc).kind == "database"
        return
    key = query.partition("=")[0]
    with pytest.raises(SpecError, match=f"HANDLES_ALLOW_OPTIONS=database:{key}"):
        handles.spec_from_json(doc)
    monkeypatch.setenv("HANDLES_ALLOW_OPTIONS", f"database:{key}")  # the worker's choice
    assert handles.spec_from_json(doc).kind == "database"


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from([*"0123456789.x", "0x", "7f", "ff", "::", ":"]), max_size=12))
def test_numeric_hosts_are_read_as_the_resolver_reads_them(parts):
    # What getaddrinfo (libpq, aiohttp, botocore) makes of a numeric host is what the check
    # compares; never a DNS query (AI_NUMERICHOST).
    text = "".join(parts)
    try:
        found = socket.getaddrinfo(text, None, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return
    address = str(found[0][4][0])
    assert canonical_host(text) == canonical_host(address), (text, address)


def test_a_secret_put_where_the_endpoint_goes_is_refused(monkeypatch):
    # Its value, read on the worker, would choose the host: no check could see it.
    monkeypatch.setenv("HANDLES_ALLOW_OPTIONS", "file:s3.endpoint_url")
    monkeypatch.setenv("HANDLES_ALLOW_SECRETS", "env:HANDLES_TEST_ENDPOINT")
    monkeypatch.setenv("HANDLES_ALLOW_HOSTS", "bucket,*.amazonaws.com")
    doc = {
        "kind": "file",
        "url": "s3://bucket/x.csv",
        "secrets": {"endpoint_url": "env:HANDLES_TEST_ENDPOINT"},
    }
    with pytest.raises(SpecError) as info:
        handles.spec_from_json(doc)
    assert "names no host" in dict(info.value.problems)["secrets.endpoint_url"]


def test_archives_from_json_need_the_worker_setting(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from support import tiny_models as tm

    doc = {"kind": "torch", "archive": str(tm.save_torchscript(tmp_path / "m.pt"))}
    with pytest.raises(SpecError) as info:
        handles.spec_from_json(doc)
    assert "HANDLES_ALLOW_ARCHIVES=1" in dict(info.value.problems)["archive"]
    monkeypatch.setenv("HANDLES_ALLOW_ARCHIVES", "1")
    assert handles.spec_from_json(doc).archive == doc["archive"]
