"""Every field's JSON schema says its role (`x-handles-role`), marked or not.

The role shown must be the one the key uses: identity fields (and `kind`) enter
`cache_key()`, placement fields do not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Annotated, Any, Literal

import pytest

from handles import Spec
from handles._fields import Placement
from handles._kinds import known_kinds, load_kind

BUILT_IN = sorted(n for n, info in known_kinds().items() if info.module.startswith("handles."))


class UnmarkedSpec(Spec[dict[str, Any]]):
    """A third-party kind that marks one field and leaves two unmarked."""

    kind: Literal["test-unmarked-roles"] = "test-unmarked-roles"
    name: str
    note: str | None = None
    timeout: Annotated[float, Placement] = 1.0

    def build(self) -> dict[str, Any]:
        return {"name": self.name}


def expected_roles(cls: type[Spec[Any]]) -> dict[str, str]:
    roles = {name: "identity" for name in cls.identity_fields}
    roles |= {name: "placement" for name in cls.placement_fields}
    return {"kind": "identity", **roles}


@pytest.mark.parametrize("name", [*BUILT_IN, "unmarked"])
def test_every_field_has_its_role(name):
    cls = UnmarkedSpec if name == "unmarked" else load_kind(name)
    properties = cls.model_json_schema()["properties"]
    shown = {field: prop.get("x-handles-role") for field, prop in properties.items()}
    assert shown == expected_roles(cls)
    assert set(shown) == set(cls.model_fields)


def test_an_unmarked_field_is_identity_in_schema_and_key():
    assert UnmarkedSpec.identity_fields == ("name", "note")
    schema = UnmarkedSpec.model_json_schema()["properties"]
    assert schema["note"]["x-handles-role"] == "identity"
    assert schema["timeout"]["x-handles-role"] == "placement"
    # The schema's word agrees with the key: `note` moves it, `timeout` does not.
    spec = UnmarkedSpec(name="a")
    assert spec.replace(note="b").cache_key() != spec.cache_key()
    assert spec.replace(timeout=2.0).cache_key() == spec.cache_key()


def test_cli_schema_marks_every_property():
    out = subprocess.run(
        [sys.executable, "-m", "handles", "schema", "file"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    properties = json.loads(out.stdout)["properties"]
    assert {name for name, prop in properties.items() if "x-handles-role" not in prop} == set()
