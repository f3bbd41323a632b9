"""`handles schema`: every field described; a default made by a factory shown as specs get it."""

from __future__ import annotations

import json

import pytest

from handles import SqliteSpec
from handles._cli import main
from handles._kinds import BUILTIN


def schema_of(kind: str, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["schema", kind]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("kind", sorted(BUILTIN))
def test_every_field_has_a_description_naming_its_role(kind, capsys):
    properties = schema_of(kind, capsys)["properties"]
    for name, prop in properties.items():
        assert prop.get("description"), f"{kind}.{name} has no description"
        assert prop["description"].startswith(prop["x-handles-role"]), (kind, name)


def test_pragmas_default_is_what_a_spec_that_leaves_it_out_gets(capsys):
    properties = schema_of("sqlite", capsys)["properties"]
    assert properties["pragmas"]["default"] == SqliteSpec(memory="m").pragmas
    assert properties["pragmas"]["default"]["journal_mode"] == "wal"
    assert properties["read_only"]["default"] is False  # pydantic's own defaults stay
