"""Validation errors never echo a value they were given (docs/security.md).

Every field of every built-in kind is given a sentinel in each shape it might take
(bare, in a list, as a mapping's value, inside a URL's user, password, path or
query, after a prefix), from Python (trusted) and from JSON (untrusted). Where
that is refused, the sentinel must not appear in the error's message, repr or
formatted traceback. A mapping's keys are names (a pragma, an option, a storage
option) and may be named; so may what a worker must allow for a spec from JSON (a
protocol, a host, a secret reference): those positions are not filled with it.
"""

from __future__ import annotations

import json
import traceback
from typing import Any, Literal

import pytest
from pydantic import field_validator

from handles import Spec, SpecError
from handles._kinds import known_kinds, load_kind
from handles.specs._sqlite_pragmas import DEFAULT_PRAGMAS

S = "zq5entinelq"
NUMBER = 987654321

# A valid spec of each kind, to which one field at a time is given the sentinel.
BASE: dict[str, dict[str, Any]] = {
    "async-database": {"url": "postgresql+asyncpg://u@127.0.0.1/db"},
    "database": {"url": "postgresql+psycopg://u@127.0.0.1/db"},
    "file": {"url": "memory://bucket/data.txt"},
    "hf-pipeline": {"task": "text-classification", "model": "org/model"},
    "spacy": {"name": "en_core_web_sm"},
    "sqlite": {"path": "/tmp/app.db"},
    "torch": {"factory": "echo-net"},
}

# Keys tried in every mapping field, with the sentinel as their value: what the kinds
# check by name (every pragma, credential-like options, the hub's and torch's).
MAPPING_KEYS = sorted(
    {
        *DEFAULT_PRAGMAS,
        *("auto_vacuum", "busy_timeout", "cache_size", "journal_size_limit", "locking_mode"),
        *("mmap_size", "page_size", "secure_delete", "temp_store", "threads"),
        *("wal_autocheckpoint", "automatic_index", "query_only", "trusted_schema"),
        *("password", "passwd", "sslpassword", "host", "hostaddr", "port", "dsn", "sslmode"),
        *("service", "user", "application_name", "connect_timeout", "ssl", "timeout"),
        *("key", "secret", "token", "endpoint_url", "client_kwargs", "username", "anon"),
        *("account_name", "account_key", "use_auth_token", "trust_remote_code", "device"),
        *("revision", "batch_size", "torch_dtype", "model_kwargs", "width", "depth"),
        "x",
    }
)

# The sentinel where it is a value. From JSON a URL's scheme and host are also what
# the worker must allow, so they are left out there (see the module docstring).
TRUSTED_ONLY = [f"{S}://bucket/data.txt", f"postgresql+psycopg://u@{S}/db", f"x://{S}/y"]
VALUES: list[Any] = [
    S,
    S.upper(),
    f"{S}-x",
    f"{S}.x",
    f"{S} x",
    f"{S}:x",
    f"cuda:{S}",
    f"/{S}",
    f"/x/{S}/",
    f"file:{S}",
    f"memory://u:{S}@h/y",
    f"postgresql+psycopg://u:{S}@h/db",
    f"postgresql+psycopg://u@h/{S}",
    f"postgresql+psycopg://u@h/db?x={S}",
    f"postgresql+psycopg://u@h/db?password={S}",
    f"sqlite:///{S}.db",
    f"memory://bucket/{S}?x={S}",
    [S],
    [S, S],
    NUMBER,
    -NUMBER,
    [NUMBER],
    *({key: v} for key in MAPPING_KEYS for v in (S, NUMBER, [S], {"x": S})),
]


def secret_reference_field(cls: type, field: str) -> bool:
    # A secret reference ('env:NAME') is shown wherever the spec is (repr, JSON): it
    # is what the worker resolves, never the secret, and errors about it may name it.
    return "SecretRef" in str(cls.model_fields[field].annotation)


def exposed(error: BaseException) -> str:
    problems = getattr(error, "problems", [])
    text = "".join(traceback.format_exception(error)) + repr(error) + repr(problems)
    return text.lower()


@pytest.fixture(scope="module", autouse=True)
def echo_factory():
    pytest.importorskip("torch")
    import torch

    from handles.specs.torch import _factories, model_factory

    @model_factory("echo-net")
    def echo_net(width: int = 2, name: str = "n") -> torch.nn.Module:
        return torch.nn.Linear(width, width)

    yield
    _factories.pop("echo-net", None)


@pytest.mark.parametrize("name", sorted(BASE))
def test_no_validation_error_echoes_a_value(name):
    cls = load_kind(name)
    cls(**BASE[name])  # the base is valid: every error below is about the one field
    refused = 0
    leaks: list[str] = []
    for field in cls.model_fields:
        if field == "kind":
            continue
        values = [*VALUES, *TRUSTED_ONLY]
        if "dict[" not in str(cls.model_fields[field].annotation):
            # Every mapping is refused by type alone here: one is enough.
            values = [v for v in values if not isinstance(v, dict)] + [{"x": S}]
        for value in values:
            data = {**BASE[name], field: value}
            attempts = [("python", lambda d=data: cls(**d))]
            from_json = value not in TRUSTED_ONLY and not secret_reference_field(cls, field)
            if from_json:
                text = json.dumps({"kind": name, **data})
                attempts.append(("json", lambda t=text: cls.model_validate_json(t)))
            for how, make in attempts:
                try:
                    make()
                except SpecError as error:
                    refused += 1
                    needle = str(NUMBER) if str(NUMBER) in json.dumps(value) else S
                    if needle in exposed(error):
                        leaks.append(f"{field} from {how} = {value!r}: {error}")
    assert not leaks, "\n".join(leaks[:20])
    assert refused > 100  # the sentinel did reach the validators


def test_every_built_in_kind_is_covered():
    assert set(BASE) == {
        n for n, info in known_kinds().items() if info.module.startswith("handles.")
    }


def test_the_documented_example_still_names_the_field():
    # Not echoing the value must not make the message vague: kind, field and the rule.
    with pytest.raises(SpecError) as caught:
        load_kind("sqlite")(path="/tmp/app.db", pragmas={"synchronous": f"fast-{S}"})
    assert str(caught.value) == (
        "SqliteSpec.pragmas: synchronous must be one of off, normal, full, extra"
    )


class QuotingSpec(Spec[str]):
    """A third-party kind whose validators quote what they were given."""

    kind: Literal["test-quoting-validators"] = "test-quoting-validators"
    name: str
    tags: dict[str, str] | None = None

    @field_validator("name")
    @classmethod
    def _known_name(cls, value: str) -> str:
        raise ValueError(f"{value!r} is not a name I know")

    @field_validator("tags")
    @classmethod
    def _known_tags(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        raise ValueError(f"bad tags {value}")

    def build(self) -> str:
        return self.name


def test_a_third_party_validator_that_quotes_its_value_is_cut_short():
    document = json.dumps({"kind": "test-quoting-validators", "name": S, "tags": {"t": S}})
    for make in (
        lambda: QuotingSpec(name=S, tags={"t": S}),
        lambda: QuotingSpec.model_validate_json(document),
    ):
        with pytest.raises(SpecError) as caught:
            make()
        assert S not in exposed(caught.value)
        assert str(caught.value).splitlines() == [
            "QuotingSpec.name: '...' is not a name I know",
            "  QuotingSpec.tags: bad tags {'t': '...'}",
        ]
