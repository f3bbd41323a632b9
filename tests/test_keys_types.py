"""One canonical form for every value a field may hold (the table in docs/cache-keys.md).

Keys and dumps are the same in this process and in fresh ones under four hash
seeds; equal input written in another order is one spec, one key, one live
object; a field type with no canonical form is refused where its class is defined.
"""

from __future__ import annotations

import collections.abc
import datetime as dt
import json
import re
import subprocess
import sys
import typing
from decimal import Decimal
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, SecretStr

import handles
from handles import Identity, Spec
from handles._keys import canonical, digest
from support import typed_kinds
from support.typed_kinds import TypedSpec

SEEDS = ("1", "2", "3", "4")
REPORT = "import json; from support import typed_kinds; print(json.dumps(typed_kinds.report()))"


def groups() -> dict[str, list[str]]:
    """Labels of typed_kinds.specs() by group: "tags/forward" and "tags/backward" are one."""
    found: dict[str, list[str]] = {}
    for label in typed_kinds.specs():
        found.setdefault(label.split("/")[0], []).append(label)
    return found


def test_every_field_type_keys_alike_in_every_process_and_hash_seed(subprocess_env):
    # One interpreter per seed, all at once; each computes every spec's keys and dump.
    children = [
        subprocess.Popen(
            [sys.executable, "-c", REPORT],
            env={**subprocess_env, "PYTHONHASHSEED": seed},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in SEEDS
    ]
    outputs = [child.communicate(timeout=120) for child in children]
    for seed, child, (_, err) in zip(SEEDS, children, outputs, strict=True):
        assert child.returncode == 0, f"PYTHONHASHSEED={seed}: {err}"
    reports = [json.loads(out) for out, _ in outputs]
    here = typed_kinds.report()
    for seed, report in zip(SEEDS, reports, strict=True):
        for label, (key, instance_key, dump) in here["specs"].items():
            assert report["specs"][label] == [key, instance_key, dump], (seed, label)
    # Not vacuous: these seeds do iterate the same set in different orders.
    assert len({tuple(r["set_order"]) for r in reports}) > 1


def test_equal_input_in_any_order_is_one_spec_one_key_one_live_object():
    specs = typed_kinds.specs()
    for labels in groups().values():
        first, *others = (specs[label] for label in labels)
        for other in others:
            assert other == first
            assert hash(other) == hash(first)
            assert other.model_dump_json() == first.model_dump_json()
            assert other.cache_key() == first.cache_key()
        before = handles.registry().stats().get(first.cache_key())
        objects = {id(spec.get()) for spec in (first, *others)}
        assert len(objects) == 1, labels
        builds = handles.registry().stats()[first.cache_key()].builds
        assert builds - (before.builds if before else 0) == 1, labels


def test_the_orders_given_really_differ():
    # What the previous test holds equal came in different orders.
    specs = typed_kinds.specs()
    assert list(specs["tags/forward"].tags) != list(specs["tags/backward"].tags)
    assert list(specs["options/forward"].options) != list(specs["options/backward"].options)


def test_different_values_get_different_keys():
    specs = typed_kinds.specs()
    keys = {label.split("/")[0]: spec.cache_key() for label, spec in specs.items()}
    by_key: dict[str, list[str]] = {}
    for group, key in keys.items():
        by_key.setdefault(key, []).append(group)
    # Only placement and the values equal to the defaults share the defaults' key.
    assert sorted(by_key[keys["defaults"]]) == ["defaults", "placement"]
    assert all(len(names) == 1 for key, names in by_key.items() if key != keys["defaults"])


def test_every_dump_reads_back_to_the_same_key():
    for label, spec in typed_kinds.specs().items():
        text = spec.model_dump_json()
        again = handles.spec_from_json(text)
        assert again.cache_key() == spec.cache_key(), label
        assert again.model_dump_json() == text, label
        if not label.startswith("extra"):  # an untyped field reads a set back as a list
            assert again == spec, label


def test_canonical_forms_in_the_dump():
    dumped = json.loads(typed_kinds.specs()["when/plus2"].model_dump_json())
    assert dumped["when"] == "2024-06-01T10:00:00Z"
    assert dumped["local"] == "2024-05-01T12:30:00"  # naive: as written, no offset invented
    dumped = json.loads(typed_kinds.specs()["amount/long"].model_dump_json())
    assert dumped["amount"] == "2.5"
    tags = json.loads(typed_kinds.specs()["tags/backward"].model_dump_json())["tags"]
    assert tags == sorted(tags, key=json.dumps)
    assert json.loads(TypedSpec(ratio=-0.0).model_dump_json())["ratio"] == 0.0
    python_mode = typed_kinds.specs()["tags/forward"].model_dump()
    assert isinstance(python_mode["tags"], frozenset)  # Python mode keeps its types


def test_canonical_data_for_fingerprints():
    assert canonical({"b": {3, 1, 2}, "a": (1, Decimal("1.50"))}) == {
        "a": [1, "1.5"],
        "b": [1, 2, 3],
    }
    moment = dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert canonical(moment) == "2024-01-01T10:00:00Z"
    assert canonical(typed_kinds.Color.BLUE) == "blue"
    assert canonical(typed_kinds.Window(names=frozenset("ba"))) == {"names": ["a", "b"], "size": 1}
    assert canonical(typed_kinds.Point(y=1.0, x=-0.0)) == {"x": 0.0, "y": 1.0}
    assert digest({"s": frozenset(typed_kinds.WORDS)}) == digest({"s": sorted(typed_kinds.WORDS)})
    with pytest.raises(TypeError, match="not JSON serializable"):
        digest({"what": object()})


class JsonNumbersSpec(Spec[int]):
    kind: Literal["test-json-numbers"] = "test-json-numbers"
    value: Annotated[Any, Identity] = None

    def build(self) -> int:
        return 0


def test_json_numbers_keep_their_type_and_equal_specs_still_hash_equal():
    # Python holds 1 == 1.0 == True; JSON and the libraries specs configure do not.
    one, one_float, true = (JsonNumbersSpec(value=v) for v in (1, 1.0, True))
    assert one == one_float == true
    assert hash(one) == hash(one_float) == hash(true)
    assert len({one.cache_key(), one_float.cache_key(), true.cache_key()}) == 3


class Blob(BaseModel):
    raw: bytes = b""


REFUSED = [
    (bytes, "bytes have no JSON form"),
    (bytes | None, "bytes have no JSON form"),
    (list[bytes], "bytes have no JSON form"),
    (Annotated[dict[str, bytes], Identity], "bytes have no JSON form"),
    (SecretStr, "use handles.SecretRef"),
    (collections.abc.Callable[[int], int], "a function has no JSON form"),
    (typing.Iterable[str], "one-shot iterator"),
    (type[int], "a class has no JSON form"),
    (Blob, "bytes have no JSON form"),
]


@pytest.mark.parametrize(("annotation", "why"), REFUSED, ids=[str(a) for a, _ in REFUSED])
def test_a_field_type_with_no_canonical_form_is_refused_where_the_class_is_defined(annotation, why):
    where = " (Blob.raw)" if annotation is Blob else ""
    with pytest.raises(TypeError, match=rf"^RefusedSpec\.payload{re.escape(where)}: .*{why}"):

        class RefusedSpec(Spec[int]):
            kind: Literal["test-refused"] = "test-refused"
            payload: annotation  # type: ignore[valid-type]

    assert "test-refused" not in handles.known_kinds()
