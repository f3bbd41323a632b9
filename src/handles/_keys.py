"""Canonical JSON and digests: the only way handles turns data into a key.

Never `hash()` (seeded per process) or `str()` of a dict (ordering, addresses).
Every value a spec field may hold has one canonical JSON form, the same in every
process and hash seed, and equal values get equal forms (docs/cache-keys.md has
the table). The few types that have none are refused when a kind's class is
defined (`refuse_unkeyable_fields`), not when its first key is computed.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime as dt
import enum
import hashlib
import json
import math
import typing
import uuid
from collections.abc import Mapping
from decimal import Decimal
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr
from pydantic_core import PydanticSerializationError, to_jsonable_python

# Past these, a value has no canonical form worth keeping: deeper nesting
# exhausts recursive encoders, bigger integers exceed int->str limits.
MAX_DEPTH = 64
MAX_INT_BITS = 1024

_NO_SOURCE: Any = object()
# A decimal is written in plain digits up to this exponent, beyond in exponent form.
_PLAIN_DIGITS = 64


def canonical(value: Any, source: Any = _NO_SOURCE) -> Any:
    """`value` in canonical form: mappings sorted by key, sets sorted, tuples as lists.

    Alone, `value` is any data (a fingerprint, a key's payload) and comes back as
    JSON data: sets and frozensets sorted by the canonical JSON of their items,
    enums as their values, paths as posix strings, aware datetimes and times in
    UTC, decimals normalized, UUIDs and models as pydantic writes them.

    With `source`, `value` is what pydantic dumped from the Python value `source`
    (a spec's own dump, in either mode): the two are walked together, so a set
    dumped as a list in its iteration order is sorted, a decimal written as
    "1.50" becomes "1.5", and a field serializer's own output is left as it is
    but for mapping order. A Python-mode dump keeps its types (sets stay sets).
    """
    if source is _NO_SOURCE:
        return _canonical(value)
    return _dumped(value, source)


def canonical_json(value: Any) -> str:
    """Compact, key-sorted JSON; NaN and infinities are refused (they have no stable form)."""
    return json.dumps(
        canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def digest(value: Any) -> str:
    """SHA-256 hex digest of the canonical JSON of `value`."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


# -- canonical forms -----------------------------------------------------------------


def _canonical(value: Any) -> Any:
    if isinstance(value, str | bool | int | None):
        return value
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, set | frozenset):
        return _sorted_items(_canonical(v) for v in value)
    if isinstance(value, enum.Enum):
        return _canonical(value.value)
    if isinstance(value, BaseModel):
        return _dumped(value.model_dump(mode="json"), value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _canonical({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    converted = _scalar(value)
    if converted is not None:
        return converted
    try:  # what pydantic writes for the rest (timedelta, IP addresses, ...)
        return to_jsonable_python(value)
    except PydanticSerializationError:
        return value  # no JSON form: canonical_json() raises TypeError naming its type


def _dumped(value: Any, source: Any) -> Any:
    """`value`, pydantic's dump of `source`, in canonical form (see `canonical`)."""
    kind = type(value)
    if kind in _AS_THEY_ARE:  # the common case first: every dump walks each field
        return value
    if kind is str:
        return value if type(source) is str else _dumped_scalar(value, source)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return _dumped_scalar(value, source)
    if isinstance(value, dict | Mapping):
        pairs = _paired_items(value, source)
        return {str(k): _dumped(value[k], pairs.get(k, _NO_SOURCE)) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        if isinstance(source, enum.Enum):
            source = source.value
        sources: list[Any] = (
            list(source)
            if isinstance(source, list | tuple | set | frozenset) and len(source) == len(value)
            else [_NO_SOURCE] * len(value)
        )
        items = [_dumped(v, s) for v, s in zip(value, sources, strict=True)]
        # A set's items come in iteration order, which hash seeds and insertion order move.
        return _sorted_items(items) if isinstance(source, set | frozenset) else items
    if isinstance(value, PurePath):
        return value.as_posix()
    return value  # numbers, bools, None; and in Python mode sets, decimals, datetimes as they are


_AS_THEY_ARE = frozenset({int, bool, type(None)})


def _paired_items(value: Mapping[Any, Any], source: Any) -> dict[Any, Any]:
    """{dumped key: the Python value it was dumped from}, where that can be told."""
    if isinstance(source, BaseModel):
        fields = source.__dict__
        return {k: fields[k] for k in value if k in fields}
    if dataclasses.is_dataclass(source) and not isinstance(source, type):
        names = {f.name for f in dataclasses.fields(source)}
        return {k: getattr(source, k) for k in value if k in names}
    if isinstance(source, Mapping) and len(source) == len(value):
        # pydantic writes a mapping's items in their order, keys converted (1 -> "1").
        return {k: v for k, v in zip(value, source.values(), strict=True)}
    return {}


def _dumped_scalar(text: str, source: Any) -> Any:
    """A string pydantic wrote for `source`, made canonical where its form can vary."""
    if isinstance(source, enum.Enum):
        return _dumped_scalar(text, source.value)
    if isinstance(source, PurePath) and text == str(source):
        return source.as_posix()
    if isinstance(source, Decimal | dt.datetime | dt.time) and _reads_as(text, source):
        return _scalar(source)
    return text


def _reads_as(text: str, source: Decimal | dt.datetime | dt.time) -> bool:
    """Whether `text` is `source` written out (not a field serializer's own string)."""
    try:
        if isinstance(source, Decimal):
            return Decimal(text) == source
        parse = dt.datetime if isinstance(source, dt.datetime) else dt.time
        return parse.fromisoformat(text) == source
    except (ArithmeticError, ValueError):
        return False


def _scalar(value: Any) -> str | None:
    """The canonical string of a decimal, path, UUID, date, time or datetime; else None."""
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        if value.utcoffset() is None:
            return value.isoformat()
        return _zulu(value.astimezone(dt.UTC).isoformat())
    if isinstance(value, dt.time):
        offset = value.utcoffset()
        if offset is None:
            return value.isoformat()
        moment = dt.datetime.combine(dt.date(2000, 1, 1), value.replace(tzinfo=None)) - offset
        return _zulu(moment.time().replace(tzinfo=dt.UTC).isoformat())
    if isinstance(value, dt.date):
        return value.isoformat()
    return None


def _float(value: float) -> float:
    # -0.0 == 0.0, so equal specs must not dump "-0.0" for one of them.
    return 0.0 if value == 0 else value


def _decimal(value: Decimal) -> str:
    # Decimal("1.50") == Decimal("1.5"): one form for equal values, the shortest.
    if not value.is_finite():
        return str(value)  # refused as input (pydantic's allow_inf_nan); kept visible here
    if value == 0:
        return "0"
    normal = value.normalize()
    # Plain digits while they stay short; past that, the exponent form ("1E+100").
    return format(normal, "f") if abs(normal.adjusted()) <= _PLAIN_DIGITS else str(normal)


def _zulu(iso: str) -> str:
    # pydantic's own spelling of UTC, so a UTC value dumps the same either way.
    return iso.removesuffix("+00:00") + "Z" if iso.endswith("+00:00") else iso


def _sorted_items(items: Any) -> list[Any]:
    return sorted(items, key=canonical_json)


# -- values that have no canonical form ------------------------------------------------


def unkeyable(value: Any, path: str = "") -> tuple[str, str] | None:
    """(dotted path, why) of a part of `value` that has no canonical JSON form, or None.

    Lone surrogates (no UTF-8 form), NaN and infinities (no JSON form), nesting
    deeper than MAX_DEPTH and integers wider than MAX_INT_BITS. Iterative, so any
    depth of input is safe to check.
    """
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, PurePath):
            item = str(item)
        if isinstance(item, str):
            bad = _surrogate(item)
            if bad is not None:
                return where, f"contains a lone surrogate ({bad}): not valid Unicode, no UTF-8 form"
        elif isinstance(item, float):
            if not math.isfinite(item):
                what = "NaN" if math.isnan(item) else "infinite"
                return where, f"is {what}, which has no JSON form (it would be stored as null)"
        elif isinstance(item, int) and not isinstance(item, bool):
            if item.bit_length() > MAX_INT_BITS:
                return where, f"is an integer wider than {MAX_INT_BITS} bits"
        elif isinstance(item, Mapping | list | tuple | set | frozenset):
            if depth >= MAX_DEPTH:  # named by its field: the full path would be as deep
                return where.split(".", 1)[0], f"is nested more than {MAX_DEPTH} levels deep"
            pairs = item.items() if isinstance(item, Mapping) else enumerate(item)
            for key, child in pairs:
                child_where = _join(where, key)
                if isinstance(key, str) and _surrogate(key) is not None:
                    return child_where, "has a key with a lone surrogate: not valid Unicode"
                stack.append((child, child_where, depth + 1))
    return None


def _surrogate(text: str) -> str | None:
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"U+{ord(text[exc.start]):04X}"
    return None


def _join(where: str, key: Any) -> str:
    name = str(key).encode("utf-8", "backslashreplace").decode("utf-8")
    return f"{where}.{name}" if where else name


# -- field types that have no canonical form ----------------------------------------------

_NO_FORM: dict[Any, str] = {
    bytes: "bytes have no JSON form that reads back (JSON writes them as UTF-8 text, and "
    "bytes that are not UTF-8 cannot be written at all): use str, or base64 text in a str",
    SecretStr: "SecretStr dumps as '**********', so every secret would give one key: "
    "use handles.SecretRef, which names where the secret lives",
    SecretBytes: "SecretBytes dumps as '**********', so every secret would give one key: "
    "use handles.SecretRef, which names where the secret lives",
    type: "a class has no JSON form: name it by its import path in a str",
    collections.abc.Callable: "a function has no JSON form: name it by its import path in a str",
    collections.abc.Iterable: "an Iterable field is validated into a one-shot iterator that a "
    "dump consumes: use tuple[...] (or frozenset[...] if order does not matter)",
    collections.abc.Iterator: "an iterator is consumed by the first dump: use tuple[...]",
    collections.abc.Generator: "a generator is consumed by the first dump: use tuple[...]",
}

# Refused with their subclasses too; the abstract types above only as themselves
# (a list is an Iterable, and fine).
_NO_FORM_SUBCLASSED = (bytes, SecretStr, SecretBytes)


def refuse_unkeyable_fields(cls: type[BaseModel]) -> None:
    """TypeError naming class and field if a field's type has no canonical JSON form.

    Checked where the class is defined, through Optional, Annotated, containers,
    nested models and dataclasses, so a kind never fails at its first key instead.
    """
    for name, field in cls.model_fields.items():
        found = _no_form(field.annotation, set())
        if found is not None:
            where, why = found
            inside = f" ({where})" if where else ""
            raise TypeError(f"{cls.__name__}.{name}{inside}: {why}")


def _no_form(annotation: Any, seen: set[int]) -> tuple[str, str] | None:
    """(where inside, why) for the first part of `annotation` with no canonical form."""
    if id(annotation) in seen:
        return None  # a recursive model: its fields are being checked already
    seen.add(id(annotation))
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return None  # values, checked when the spec is validated
    if origin is typing.Annotated:
        return _no_form(typing.get_args(annotation)[0], seen)
    if origin is not None:  # list[X], X | None, Callable[..., X], type[X], ...
        if origin in _NO_FORM:
            return "", _NO_FORM[origin]
        for part in typing.get_args(annotation):
            found = _no_form(part, seen)
            if found is not None:
                return found
        return None
    if not isinstance(annotation, type):
        return None  # Any, TypeVars, forward references: checked by value, when dumped
    if annotation in _NO_FORM:
        return "", _NO_FORM[annotation]
    refused = next((t for t in _NO_FORM_SUBCLASSED if issubclass(annotation, t)), None)
    if refused is not None:
        return "", _NO_FORM[refused]
    return _in_fields(annotation, seen)


def _in_fields(annotation: type, seen: set[int]) -> tuple[str, str] | None:
    """`_no_form` of each field of a model or dataclass type: where names the field."""
    if issubclass(annotation, BaseModel):
        fields: list[tuple[str, Any]] = [
            (name, f.annotation) for name, f in annotation.model_fields.items()
        ]
    elif dataclasses.is_dataclass(annotation):
        try:
            hints = typing.get_type_hints(annotation, include_extras=True)
        except (NameError, TypeError):
            return None  # unresolvable forward references: pydantic reports those
        fields = [(f.name, hints.get(f.name)) for f in dataclasses.fields(annotation)]
    else:
        return None
    for name, inner in fields:
        found = _no_form(inner, seen)
        if found is not None:
            where, why = found
            return f"{annotation.__name__}.{name}{'.' + where if where else ''}", why
    return None
