"""Hostile input (issue 9 item 6): valid JSON of every kind, mutated by hypothesis (any depth,
lone surrogates, 300-character names, NaN and infinities, wrong types, unknown and internal
kinds), gives a SpecError, BuildError or MissingDependencyError and nothing else; a spec
whose build fails leaves nothing in the registry; `handles inspect` prints one line and exits
2. Deterministic (derandomize=True): the same cases every run.

Mutated specs that stay valid are built for real, in a temporary working directory.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import pickle
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

# Before transformers is imported: huggingface_hub reads it once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import handles
from handles import HandlesError
from handles._cli import main
from support.cases import all_cases

LIBRARY_CASES = 2000
CLI_CASES = 600

OUTCOMES: Counter[str] = Counter()

# -- the valid documents -----------------------------------------------------------


@pytest.fixture(scope="module")
def valid_docs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """One valid JSON document per contract case whose packages (and server) are here."""
    docs = []
    base = tmp_path_factory.mktemp("hostile")
    for case in all_cases():
        if any(importlib.util.find_spec(name) is None for name in case.requires):
            continue
        folder = base / case.name
        folder.mkdir()
        try:
            spec = case.make(folder)
        except pytest.skip.Exception:  # PostgreSQL unset
            continue
        doc = spec.model_dump(mode="json")
        doc.pop("delay", None)  # the test kinds sleep that long in build()
        docs.append(doc)
    assert {d["kind"] for d in docs} >= {"sqlite", "database", "file", "test-echo"}
    return docs


# -- mutations ---------------------------------------------------------------------


class Deep:
    """`depth` nested lists (or dicts), written into JSON text without recursion."""

    def __init__(self, depth: int, mapping: bool) -> None:
        self.depth, self.mapping = depth, mapping

    def __repr__(self) -> str:
        return f"Deep({self.depth}, mapping={self.mapping})"

    def value(self) -> Any:
        value: Any = 0
        for _ in range(self.depth):
            value = {"k": value} if self.mapping else [value]
        return value

    def text(self) -> str:
        if self.mapping:
            return '{"k":' * self.depth + "0" + "}" * self.depth
        return "[" * self.depth + "0" + "]" * self.depth


HOSTILE_TEXT = [
    "\udc80",
    "x\ud800y",
    "a" * 300,
    "/" + "a" * 300,
    "é" * 200,
    "\x00",
    "",
    " ",
    "../" * 40,
    "\u202e" * 3,
    "😀" * 80,
    "a" * 50_000,
    "env:PATH",
    "file:/etc/shadow",
]
SUFFIXES = [
    "\udc80",
    "\ud83d",
    "/" + "n" * 300,
    "n" * 300,
    "\x00",
    "?password=hunter2",
    "#frag",
    "/../x",
    " ",
    "é" * 130,
]
KINDS = [
    "sqlite",
    "database",
    "file",
    "torch",
    "spacy",
    "hf-pipeline",
    "sqlite-writer-lock",
    "sqlite-memory",
    "sqlite-engine",
    "file-system",
    "os:system",
    "",
    "\udc80",
    "k" * 300,
]

any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=12).map(
    lambda s: s.lstrip("/\\~")
)  # relative: lands in the test's temporary folder
deep = st.builds(Deep, st.sampled_from([70, 1000, 5000]), st.booleans())
scalars = st.one_of(
    st.sampled_from(HOSTILE_TEXT),
    any_text,
    st.floats(),  # NaN and infinities included
    st.sampled_from([math.nan, math.inf, -math.inf, 10**400, -(2**70), 0, -1]),
    st.integers(),
    st.booleans(),
    st.none(),
)
values = st.one_of(
    scalars,
    deep,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.one_of(st.sampled_from(HOSTILE_TEXT), any_text), scalars, max_size=3),
)


@st.composite
def mutated(draw: st.DrawFn, docs: list[dict[str, Any]]) -> tuple[str, Any, bool]:
    """(what was done, the mutated document, send it as JSON text?).

    Deep nesting stays a `Deep` here (printable), made real by `payload()`.
    """
    doc = json.loads(json.dumps(draw(st.sampled_from(docs))))
    fields = sorted(k for k in doc if k != "kind")
    how = draw(
        st.sampled_from(
            ["set", "suffix", "delete", "kind", "nested", "new field", "several", "whole"]
        )
    )
    for _ in range(draw(st.integers(2, 4)) if how == "several" else 1):
        op = draw(st.sampled_from(["set", "suffix", "nested"])) if how == "several" else how
        field = draw(st.sampled_from(fields))
        if op == "set":
            doc[field] = draw(values)
        elif op == "suffix":
            strings = [f for f in fields if isinstance(doc.get(f), str)] or fields
            field = draw(st.sampled_from(strings))
            doc[field] = f"{doc.get(field) or ''}{draw(st.sampled_from(SUFFIXES))}"
        elif op == "delete":
            doc.pop(field, None)
        elif op == "kind":
            doc["kind"] = draw(st.sampled_from(KINDS))
        elif op == "nested":
            maps = [f for f in fields if isinstance(doc.get(f), dict)] or fields
            field = draw(st.sampled_from(maps))
            inner = doc[field] if isinstance(doc.get(field), dict) else {}
            inner[draw(st.one_of(st.sampled_from(HOSTILE_TEXT), any_text))] = draw(values)
            doc[field] = inner
        elif op == "new field":
            doc[draw(st.one_of(st.sampled_from(HOSTILE_TEXT), any_text))] = draw(values)
    if how == "whole":
        whole = draw(
            st.sampled_from(['"a string"', "[]", "3", "null", "{", '{"kind": 3}', "NaN", "deep"])
        )
        return how, Deep(5000, False) if whole == "deep" else whole, True
    return how, doc, draw(st.booleans())


def payload(doc: Any, text: bool) -> Any:
    """What spec_from_json gets: JSON text, or the dict JSON decodes to."""
    if isinstance(doc, str):
        return doc
    if isinstance(doc, Deep):
        return doc.text()
    return as_text(doc) if text else materialize(doc)


def as_text(doc: dict[str, Any]) -> str:
    """JSON text (NaN, Infinity and lone surrogates as JSON escapes, Deep spelled out)."""
    deeps: list[Deep] = []

    def mark(value: Any) -> Any:
        if isinstance(value, Deep):
            deeps.append(value)
            return f"@@deep{len(deeps) - 1}@@"
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mark(v) for v in value]
        return value

    text = json.dumps(mark(doc), allow_nan=True)
    for index, value in enumerate(deeps):
        text = text.replace(f'"@@deep{index}@@"', value.text())
    return text


def materialize(value: Any) -> Any:
    if isinstance(value, Deep):
        return value.value()
    if isinstance(value, dict):
        return {k: materialize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [materialize(v) for v in value]
    return value


# -- the properties ----------------------------------------------------------------


def live_by_kind() -> Counter[str]:
    live: Counter[str] = Counter()
    for stats in handles.registry().stats().values():
        live[stats.kind] += stats.live
    return live


def exercise(payload: dict[str, Any] | str) -> str:
    """Everything a worker or a user does with a spec from JSON; returns the outcome."""
    registry = handles.registry()
    before = live_by_kind()
    try:
        spec = handles.spec_from_json(payload)
    except HandlesError:
        assert live_by_kind() == before
        return "refused"
    shown = [repr(spec), str(spec), spec.model_dump_json(), json.dumps(spec.model_dump())]
    assert all(isinstance(text, str) for text in shown)
    assert pickle.loads(pickle.dumps(spec)) == spec
    hash(spec)
    try:
        spec.cache_key()
        spec.identity()
        spec.placement()
        assert (spec in registry) in (True, False)
        spec.get()
    except HandlesError:
        # Nothing stays: no kind has more live objects than before. (`spec in
        # registry` may still be true: a FileSpec's filesystem, shared with files
        # an earlier case built, stays for them.)
        grown = live_by_kind() - before
        assert not grown, f"a failed build left an object behind: {grown}"
        return "failed to build"
    return "built"


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # relative paths in mutated specs land here
    for name in ("HANDLES_ALLOW_SECRETS", "HANDLES_ALLOW_HOSTS", "HANDLES_ALLOW_PICKLE_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.mark.usefixtures("in_tmp")
def test_mutated_json_of_every_kind_gives_only_handles_errors(valid_docs):
    @settings(
        max_examples=LIBRARY_CASES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutated(valid_docs))
    def check(case: tuple[str, Any, bool]) -> None:
        how, doc, text = case
        outcome = exercise(payload(doc, text))
        OUTCOMES[outcome] += 1
        event(f"{how}: {outcome}")

    OUTCOMES.clear()
    check()
    handles.registry().close()
    assert sum(OUTCOMES.values()) >= LIBRARY_CASES
    assert OUTCOMES["refused"] > LIBRARY_CASES // 2
    print(f"\n{sum(OUTCOMES.values())} mutated documents: {dict(OUTCOMES)}")


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse's own exit
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.usefixtures("in_tmp")
def test_handles_inspect_prints_one_line_and_exits_2_on_bad_input(valid_docs):
    codes: Counter[int] = Counter()

    @settings(
        max_examples=CLI_CASES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutated(valid_docs), st.booleans())
    def check(case: tuple[str, Any, bool], as_json: bool) -> None:
        _, doc, _ = case
        text = payload(doc, text=True)
        code, out, err = run_cli("inspect", text, *(["--json"] if as_json else []))
        codes[code] += 1
        assert code in (0, 2), err
        if code == 2:
            assert out == ""
            assert err.startswith("handles: ")
            assert err.count("\n") == 1, err
            assert "Traceback" not in err
        else:
            assert err == ""
            if as_json:
                assert json.loads(out)["kind"]

    check()
    assert codes[2] > CLI_CASES // 2
    print(f"\nhandles inspect on {sum(codes.values())} mutated documents: exit codes {dict(codes)}")


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect", '{"kind": "sqlite", "path": "a\\udc80"}'],
        ["inspect", '{"kind": "file", "url": "/tmp/' + "a" * 300 + '/x", "track_content": true}'],
        ["inspect", '{"kind": "sqlite", "path": ' + Deep(5000, False).text() + "}"],
        ["inspect", '{"kind": "file", "url": "/x", "storage_options": {"a": NaN}}'],
        ["inspect", '{"kind": "database", "url": 3, "pool_size": "x", "nope": 1}'],
        ["inspect", "{not json"],
        ["inspect", "/no/such/spec.json"],
        ["inspect", "x" * 5000],
        ["inspect"],
        ["no-such-command"],
    ],
    ids=[
        "surrogate",
        "long name",
        "deep",
        "NaN",
        "several problems",
        "not JSON",
        "no file",
        "long argument",
        "missing argument",
        "unknown command",
    ],
)
def test_each_bad_input_is_one_line_and_exit_2(argv):
    code, out, err = run_cli(*argv)
    assert code == 2
    assert out == ""
    assert err.startswith("handles: ")
    assert err.count("\n") == 1, err


# -- the examples, one by one ------------------------------------------------


def test_a_lone_surrogate_is_a_spec_error_naming_the_field(tmp_path):
    for payload in (
        {"kind": "sqlite", "path": str(tmp_path / "a\udc80.db")},
        '{"kind": "sqlite", "path": "a\\udc80.db"}',
        {"kind": "file", "url": str(tmp_path / "x"), "storage_options": {"k\udc80": 1}},
    ):
        with pytest.raises(handles.SpecError, match="lone surrogate") as info:
            handles.spec_from_json(payload)
        assert info.value.problems[0][0] in ("path", "storage_options")
    with pytest.raises(handles.SpecError, match=r"SqliteSpec\.path: .*lone surrogate"):
        handles.SqliteSpec(path="a\udc80.db")
    assert len(handles.registry()) == 0


def key_then_get(spec: handles.Spec[Any]) -> None:
    spec.cache_key()  # reads the files behind the spec, where the kind has any
    spec.get()


def test_a_300_character_name_is_a_handles_error_from_every_entry_point(tmp_path):
    long_dir = str(tmp_path / ("n" * 300))
    docs = [
        {"kind": "sqlite", "path": long_dir + "/x.db"},
        {"kind": "file", "url": long_dir + "/x", "track_content": True},
        {"kind": "spacy", "path": long_dir},
    ]
    if importlib.util.find_spec("transformers") is not None:
        docs.append({"kind": "hf-pipeline", "task": "fill-mask", "model": long_dir})
    for doc in docs:
        spec = handles.spec_from_json(doc)
        with pytest.raises(HandlesError) as info:
            key_then_get(spec)
        assert type(spec).__name__ in str(info.value)
        assert spec not in handles.registry()
    assert len(handles.registry()) == 0


def test_nan_is_refused_not_stored_as_null(tmp_path):
    target = str(tmp_path / "x")
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(handles.SpecError, match=r"FileSpec\.storage_options: a is"):
            handles.FileSpec(url=target, storage_options={"a": value})
        with pytest.raises(handles.SpecError, match="no JSON form"):
            handles.spec_from_json(
                json.dumps({"kind": "file", "url": target, "storage_options": {"a": value}})
            )
    with pytest.raises(handles.SpecError, match=r"DatabaseSpec\.pool_timeout"):
        handles.spec_from_json('{"kind": "database", "url": "sqlite:///x.db", "pool_timeout": NaN}')


def test_deep_nesting_is_a_spec_error_however_it_arrives():
    for payload in (
        '{"kind": "sqlite", "path": ' + Deep(5000, False).text() + "}",
        {"kind": "sqlite", "path": Deep(5000, False).value()},
        {"kind": "file", "url": "/x", "storage_options": Deep(5000, True).value()},
    ):
        with pytest.raises(handles.SpecError):
            handles.spec_from_json(payload)
    with pytest.raises(handles.SpecError, match="nested more than 64 levels"):
        handles.FileSpec(url="/x", storage_options=Deep(100, True).value())
