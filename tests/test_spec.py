"""The spec base: validation errors, canonical dumps, keys, secrets, copies."""

from __future__ import annotations

import json
import pickle
from typing import Annotated, Literal

import pytest

import handles
from handles import Identity, Placement, SecretRef, Spec, SpecError
from handles._keys import canonical_json, digest
from handles._secrets import mask_url_password, split_url_password
from support.kinds import EchoSpec, Resource


class Configured(Spec[Resource]):
    kind: Literal["test-configured"] = "test-configured"
    name: Annotated[str, Identity]
    options: dict[str, int] = {}  # noqa: RUF012 (pydantic copies field defaults)
    tags: tuple[str, ...] = ()
    password: SecretRef | None = None
    timeout: Annotated[float, Placement] = 1.0

    def build(self) -> Resource:
        if self.password is not None:
            self.password.resolve(self.kind, "password")
        return Resource(self.name)


def test_roles_come_from_field_definitions():
    assert Configured.identity_fields == ("name", "options", "tags", "password")
    assert Configured.placement_fields == ("timeout",)
    schema = Configured.model_json_schema()
    assert schema["properties"]["timeout"]["x-handles-role"] == "placement"
    assert schema["properties"]["name"]["x-handles-role"] == "identity"


def test_mapping_order_does_not_matter():
    one = Configured(name="a", options={"x": 1, "y": 2})
    two = Configured(name="a", options={"y": 2, "x": 1})
    assert one == two
    assert hash(one) == hash(two)
    assert (
        one.model_dump_json()
        == two.model_dump_json()
        == (
            '{"kind":"test-configured","name":"a","options":{"x":1,"y":2},'
            '"password":null,"tags":[],"timeout":1.0}'
        )
    )
    assert one.cache_key() == two.cache_key()


def test_key_is_a_pinned_digest_of_the_canonical_identity():
    # Pinned: a change here silently invalidates every cache users persisted.
    spec = EchoSpec(name="pinned")
    expected = digest(
        {
            "format": 1,
            "kind": "test-echo",
            "schema": 1,
            "identity": {"name": "pinned", "version": 1},
        }
    )
    assert spec.cache_key() == expected
    assert len(expected) == 64
    assert set(expected) <= set("0123456789abcdef")


def test_canonical_json_refuses_nan():
    with pytest.raises(ValueError, match="not JSON compliant"):
        canonical_json({"x": float("nan")})


def test_bad_input_names_kind_and_field():
    with pytest.raises(SpecError) as info:
        Configured(name=3, timeout="soon", bogus=1)
    message = str(info.value)
    assert "Configured.name: Input should be a valid string" in message
    assert "Configured.timeout:" in message
    assert "Configured.bogus: Extra inputs are not permitted" in message
    assert isinstance(info.value, ValueError)
    assert {field for field, _ in info.value.problems} == {"name", "timeout", "bogus"}
    assert info.value.__cause__ is None, "no pydantic traceback chained"


def test_model_validate_and_json_raise_spec_error():
    with pytest.raises(SpecError, match=r"Configured\.name"):
        Configured.model_validate({"kind": "test-configured"})
    with pytest.raises(SpecError, match=r"Configured\.name"):
        Configured.model_validate_json('{"kind": "test-configured"}')


def test_specs_are_frozen():
    spec = Configured(name="a")
    with pytest.raises(ValueError, match="frozen"):
        spec.name = "b"  # type: ignore[misc]


def test_replace_validates_and_gets_a_fresh_key():
    spec = Configured(name="a")
    key = spec.cache_key()
    changed = spec.replace(name="b")
    assert changed.cache_key() != key
    with pytest.raises(SpecError):
        spec.replace(timeout="never")


def test_model_copy_with_update_does_not_reuse_cached_keys():
    spec = Configured(name="a")
    spec.cache_key()
    assert spec.model_copy(update={"name": "b"}).cache_key() != spec.cache_key()


def test_secret_reference_never_shows_the_value(monkeypatch, tmp_path):
    monkeypatch.setenv("HANDLES_TEST_SECRET", "hunter2-value")
    spec = Configured(name="s", password="env:HANDLES_TEST_SECRET")
    shown = [repr(spec), str(spec), spec.model_dump_json(), spec.cache_key()]
    shown.append(pickle.dumps(spec).decode("latin-1"))
    assert not any("hunter2" in text for text in shown)
    assert json.loads(spec.model_dump_json())["password"] == {"env": "HANDLES_TEST_SECRET"}
    assert spec.password is not None
    assert spec.password.resolve() == "hunter2-value"
    key = spec.cache_key()
    monkeypatch.setenv("HANDLES_TEST_SECRET", "another-value")
    assert Configured(name="s", password="env:HANDLES_TEST_SECRET").cache_key() == key


def test_secret_from_file(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    ref = SecretRef(file=str(secret))
    assert ref.resolve() == "from-file"
    assert repr(ref) == f"SecretRef(file={str(secret)!r})"
    assert SecretRef.model_validate(f"file:{secret}") == ref


def test_secret_literal_is_refused():
    with pytest.raises(SpecError, match="not a literal value"):
        Configured(name="s", password="hunter2")
    with pytest.raises(ValueError, match="exactly one"):
        SecretRef(env="A", file="/b")


def test_unset_secret_is_a_build_error_naming_the_reference(monkeypatch):
    monkeypatch.delenv("HANDLES_TEST_MISSING", raising=False)
    spec = Configured(name="s", password="env:HANDLES_TEST_MISSING")
    with pytest.raises(handles.BuildError, match="HANDLES_TEST_MISSING is not set") as info:
        spec.get()
    assert isinstance(info.value.__cause__, SpecError)


@pytest.mark.parametrize(
    ("url", "masked", "password"),
    [
        ("postgresql://u:s3cret@db:5432/x", "postgresql://u:***@db:5432/x", "s3cret"),
        ("postgresql+psycopg://u@db/x", "postgresql+psycopg://u@db/x", None),
        ("s3://bucket/key", "s3://bucket/key", None),
    ],
)
def test_url_password_masking(url, masked, password):
    assert split_url_password(url) == (masked, password)
    assert mask_url_password(url) == masked


def test_a_kind_without_build_says_so():
    class NoBuild(Spec[int]):
        kind: Literal["test-no-build"] = "test-no-build"

    with pytest.raises(handles.BuildError, match="does not define build"):
        NoBuild().get()


def test_validation_through_model_validate_names_the_field_once():
    for attempt in (
        lambda: Configured.model_validate({"name": 3}),
        lambda: Configured.model_validate_json('{"name": 3}'),
        lambda: handles.spec_from_json('{"kind": "test-configured", "name": 3}'),
    ):
        with pytest.raises(SpecError) as info:
            attempt()
        assert info.value.problems == [("name", "Input should be a valid string")]
        assert str(info.value) == "Configured.name: Input should be a valid string"
