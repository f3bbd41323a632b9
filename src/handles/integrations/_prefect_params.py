"""Flow parameters: `AnySpec` takes any kind of spec, or its JSON as a deployment sends it.

Needs no Prefect import: the type is plain pydantic, which Prefect validates flow
parameters with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import PlainValidator, SerializeAsAny, WithJsonSchema

from handles._kinds import spec_from_json
from handles._spec import Spec

__all__ = ["AnySpec"]


def _as_spec(value: Any) -> Spec[Any]:
    # A deployment hands its parameters over as JSON: rebuild the spec its
    # `kind` names (only registered kinds, never an arbitrary import).
    if isinstance(value, Spec):
        return value
    if isinstance(value, str | bytes | Mapping):
        return spec_from_json(value)
    raise ValueError(f"expected a spec or its JSON, got {type(value).__name__}")


AnySpec = Annotated[
    SerializeAsAny[Spec[Any]],
    PlainValidator(_as_spec),
    WithJsonSchema(
        {
            "type": "object",
            "title": "Spec",
            "description": "Any handles spec, as its JSON; `kind` names which.",
            "properties": {"kind": {"type": "string", "title": "Kind"}},
            "required": ["kind"],
            "additionalProperties": True,
        }
    ),
]
"""A flow parameter that takes any kind of spec, or its JSON as a deployment sends it.

Annotate with a concrete kind (`db: SqliteSpec`) where the kind is fixed: its
schema then lists the fields. `Spec[Any]` itself accepts no JSON (the base
class knows no fields) and rejects instances of kinds under flow validation.
"""
