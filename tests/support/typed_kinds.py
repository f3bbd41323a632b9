"""A kind with a field of every type a spec may hold, and specs of it built from equal
input written in different orders, for tests/test_keys_types.py (in this process and
in fresh ones under other hash seeds: both build them with `specs()`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from handles import Identity, Placement, Spec

# Enough words that a set of them iterates in another order under each hash seed,
# and that two of them share a slot (so insertion order moves the iteration order
# within one process too) but for odds of about 1 in 10**8.
WORDS = tuple(f"word-{i}" for i in range(200))
NUMBERS = tuple(range(1000, 1040))


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Window(BaseModel):
    model_config = ConfigDict(frozen=True)

    size: int = 1
    names: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True)
class Point:
    y: float
    x: float


UTC_PLUS_2 = dt.timezone(dt.timedelta(hours=2))
DEFAULT_WHEN = dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)


class TypedSpec(Spec[dict[str, Any]]):
    """One field per row of the table in docs/cache-keys.md."""

    kind: Literal["test-typed"] = "test-typed"
    text: Annotated[str, Identity] = "héllo"
    number: Annotated[int, Identity] = 2**70
    ratio: Annotated[float, Identity] = 0.1
    flag: Annotated[bool, Identity] = True
    nothing: Annotated[int | None, Identity] = None
    tags: Annotated[frozenset[str], Identity] = frozenset()
    ids: Annotated[set[int], Identity] = Field(default_factory=set)
    ordered: Annotated[tuple[str, ...], Identity] = ()
    listed: Annotated[list[str], Identity] = Field(default_factory=list)
    options: Annotated[dict[str, int], Identity] = Field(default_factory=dict)
    color: Annotated[Color, Identity] = Color.RED
    level: Annotated[Level, Identity] = Level.LOW
    when: Annotated[dt.datetime, Identity] = DEFAULT_WHEN
    local: Annotated[dt.datetime, Identity] = dt.datetime(2024, 5, 1, 12, 30)
    day: Annotated[dt.date, Identity] = dt.date(2024, 5, 1)
    at: Annotated[dt.time, Identity] = dt.time(9, 15, tzinfo=dt.UTC)
    span: Annotated[dt.timedelta, Identity] = dt.timedelta(hours=1, microseconds=5)
    amount: Annotated[Decimal, Identity] = Decimal("1.5")
    where: Annotated[PurePosixPath, Identity] = PurePosixPath("/data/words.txt")
    uid: Annotated[uuid.UUID, Identity] = uuid.UUID("12345678-1234-5678-1234-567812345678")
    window: Annotated[Window, Identity] = Window()
    point: Annotated[Point, Identity] = Point(y=1.0, x=2.0)
    extra: Annotated[Any, Identity] = None
    log_level: Annotated[str, Placement] = "info"

    def build(self) -> dict[str, Any]:
        return dict(self)


def specs() -> dict[str, TypedSpec]:
    """Specs by label; labels with one prefix before "/" are equal specs from reordered input."""
    words, numbers = list(WORDS), list(NUMBERS)
    return {
        "defaults": TypedSpec(),
        "tags/forward": TypedSpec(tags=frozenset(words)),
        "tags/backward": TypedSpec(tags=frozenset(reversed(words))),
        "tags/list": TypedSpec(tags=words[::3] + words[1::3] + words[2::3]),
        "ids/forward": TypedSpec(ids=set(numbers)),
        "ids/backward": TypedSpec(ids=set(reversed(numbers))),
        "options/forward": TypedSpec(options={w: i for i, w in enumerate(words)}),
        "options/backward": TypedSpec(options={w: i for i, w in reversed(list(enumerate(words)))}),
        "window/forward": TypedSpec(window=Window(names=frozenset(words))),
        "window/backward": TypedSpec(window={"names": list(reversed(words)), "size": 1}),
        "extra/forward": TypedSpec(extra={"set": set(words), "b": 1, "a": [1, 2]}),
        "extra/backward": TypedSpec(extra={"a": [1, 2], "b": 1, "set": set(reversed(words))}),
        "when/utc": TypedSpec(when=dt.datetime(2024, 6, 1, 10, 0, tzinfo=dt.UTC)),
        "when/plus2": TypedSpec(when=dt.datetime(2024, 6, 1, 12, 0, tzinfo=UTC_PLUS_2)),
        "when/text": TypedSpec(when="2024-06-01T12:00:00+02:00"),
        "at/utc": TypedSpec(at=dt.time(10, 15, tzinfo=dt.UTC)),
        "at/plus2": TypedSpec(at=dt.time(12, 15, tzinfo=UTC_PLUS_2)),
        "amount/short": TypedSpec(amount=Decimal("2.5")),
        "amount/long": TypedSpec(amount=Decimal("2.500")),
        "amount/text": TypedSpec(amount="2.50"),
        "ratio/zero": TypedSpec(ratio=0.0),
        "ratio/negative-zero": TypedSpec(ratio=-0.0),
        "color/member": TypedSpec(color=Color.BLUE),
        "color/value": TypedSpec(color="blue"),
        "where/path": TypedSpec(where=PurePosixPath("/data/other.txt")),
        "where/text": TypedSpec(where="/data/other.txt"),
        "ordered": TypedSpec(ordered=("b", "a")),
        "ordered-other": TypedSpec(ordered=("a", "b")),
        "listed": TypedSpec(listed=["b", "a"]),
        "span": TypedSpec(span=dt.timedelta(days=-1, seconds=5)),
        "local": TypedSpec(local=dt.datetime(2024, 5, 1, 12, 30, 0, 250)),
        "point": TypedSpec(point=Point(y=-0.0, x=3.5)),
        "placement": TypedSpec(log_level="debug"),
    }


def report() -> dict[str, Any]:
    """What a process computes: each spec's key and dump, and the raw orders sets took here."""
    return {
        "specs": {
            label: [spec.cache_key(), spec._instance_key(), spec.model_dump_json()]
            for label, spec in specs().items()
        },
        "set_order": list(frozenset(WORDS)),
    }
