"""Field roles: does a field change the live object (identity) or only where it lives (placement)?

Mark a field in its definition::

    path: Annotated[str, Identity]             # changes the result: enters cache_key()
    device: Annotated[str, Placement] = "cpu"  # does not: stays out of cache_key()

A field with no marker is identity: a wrongly excluded field would make two
different resources share a cache entry, a wrongly included one only costs a miss.
Every field's JSON schema says its role as `x-handles-role`, marked or not
(`kind` is identity too: it enters every key).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import GetJsonSchemaHandler
from pydantic.config import JsonDict
from pydantic.fields import FieldInfo
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

RoleName = Literal["identity", "placement"]


class FieldRole:
    """Annotated marker carrying a field's role; also shown in the JSON schema."""

    __slots__ = ("name",)

    def __init__(self, name: RoleName) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name.capitalize()

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        schema["x-handles-role"] = self.name
        return schema


Identity = FieldRole("identity")
Placement = FieldRole("placement")


def role_of(field: FieldInfo) -> RoleName:
    for item in field.metadata:
        if isinstance(item, FieldRole):
            return item.name
    return "identity"


def split_roles(fields: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(identity names, placement names) of a model's fields, in definition order."""
    identity = tuple(name for name, f in fields.items() if role_of(f) == "identity")
    placement = tuple(name for name, f in fields.items() if role_of(f) == "placement")
    return identity, placement


def mark_roles(schema: JsonDict, model: type[Any]) -> None:
    """`json_schema_extra` for specs: `x-handles-role` on every property.

    A marker writes its role where its field's schema is made; a field without
    one is identity (`role_of`) but would show no role, so it is written here.
    """
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return
    for name, field in getattr(model, "model_fields", {}).items():
        prop = properties.get(field.alias or name)
        if isinstance(prop, dict):
            prop.setdefault("x-handles-role", role_of(field))
