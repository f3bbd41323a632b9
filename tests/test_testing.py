"""handles.testing: each check fails, naming its property, on a kind that really breaks it.

Every broken kind below makes one mistake a plugin author could make (forgetting
`return`, caching objects in a module-level dict, using `hash()`, ...) on top of
`LexiconSpec`, a correct kind written as a third-party package would write it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import pytest
from pydantic import Field, PrivateAttr, field_serializer, field_validator

from handles import BuildError, Identity, Placement, Scope, Spec, testing

# -- a correct kind: a word list read from a file ---------------------------------


class Lexicon:
    def __init__(self, words: frozenset[str]) -> None:
        self.words = words
        self.closed = False

    def __contains__(self, word: str) -> bool:
        if self.closed:
            raise RuntimeError("lexicon is closed")
        return word in self.words

    def close(self) -> None:
        self.closed = True


class LexiconSpec(Spec[Lexicon]):
    kind: Literal["testing-lexicon"] = "testing-lexicon"
    path: Annotated[str, Identity]
    lowercase: Annotated[bool, Identity] = True
    log_level: Annotated[str, Placement] = "info"

    def build(self) -> Lexicon:
        text = Path(self.path).read_text(encoding="utf-8")
        return Lexicon(frozenset(text.lower().split() if self.lowercase else text.split()))


@pytest.fixture
def words(tmp_path: Path) -> str:
    path = tmp_path / "words.txt"
    path.write_text("Apple banana cherry\n", encoding="utf-8")
    return str(path)


def test_a_correct_kind_keeps_the_whole_contract(words, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("Damson elderberry\n", encoding="utf-8")
    testing.assert_contract(
        LexiconSpec(path=words),
        identity={"path": str(other), "lowercase": False},
        placement={"log_level": "debug"},
        broken=LexiconSpec(path=str(tmp_path / "missing.txt")),
        alive=lambda lexicon: "apple" in lexicon,
    )


class ReadmeSpec(Spec[str]):
    kind: Literal["testing-readme"] = "testing-readme"
    path: Annotated[str, Identity]

    def build(self) -> str:
        return Path(self.path).read_text(encoding="utf-8")


def test_assert_contract_wants_a_broken_spec_of_the_same_kind(words):
    with pytest.raises(ValueError, match="'testing-lexicon' one is needed"):
        testing.assert_contract(
            LexiconSpec(path=words), identity={"lowercase": False}, broken=ReadmeSpec(path=words)
        )


def broken(prop: str, detail: str) -> Any:
    """pytest.raises for the AssertionError naming `prop`, whose message then says `detail`."""
    pattern = f"^contract broken: {re.escape(prop)}: (?s:.*){re.escape(detail)}"
    return pytest.raises(AssertionError, match=pattern)


# -- one value: iterating what it describes ---------------------------------------


class IterableLexiconSpec(LexiconSpec):
    kind: Literal["testing-iterable-lexicon"] = "testing-iterable-lexicon"  # type: ignore[assignment]

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        return iter(self.get().words)


def test_one_value_fails_for_a_spec_that_iterates(words):
    with broken("one value", "iter() accepts"):
        testing.check_one_value(IterableLexiconSpec(path=words))


# -- pickle: the object remembered on the spec ------------------------------------


class MemoLexiconSpec(LexiconSpec):
    kind: Literal["testing-memo-lexicon"] = "testing-memo-lexicon"  # type: ignore[assignment]
    _built: Lexicon | None = PrivateAttr(default=None)

    def build(self) -> Lexicon:
        self._built = super().build()
        return self._built


def test_pickle_fails_for_a_spec_that_keeps_its_object(words):
    with broken("pickle", "a used MemoLexiconSpec pickles differently"):
        testing.check_pickle(MemoLexiconSpec(path=words))


# -- JSON: a friendly dump that does not validate back ----------------------------


class TimedLexiconSpec(LexiconSpec):
    kind: Literal["testing-timed-lexicon"] = "testing-timed-lexicon"  # type: ignore[assignment]
    timeout: Annotated[float, Placement] = 5.0

    @field_serializer("timeout", when_used="json")
    def _seconds(self, value: float) -> str:
        return f"{value}s"


def test_json_fails_for_a_dump_that_does_not_validate_back(words):
    with broken("JSON", "TimedLexiconSpec.timeout"):
        testing.check_json(TimedLexiconSpec(path=words))


# -- canonical dump: a validator that is not idempotent ----------------------------


class TaggedLexiconSpec(LexiconSpec):
    kind: Literal["testing-tagged-lexicon"] = "testing-tagged-lexicon"  # type: ignore[assignment]
    tags: Annotated[tuple[str, ...], Identity] = ()

    @field_validator("tags")
    @classmethod
    def _with_default_tag(cls, tags: tuple[str, ...]) -> tuple[str, ...]:
        return (*tags, "default")  # added again each time the dump is validated


def test_canonical_dump_fails_for_a_validator_that_is_not_idempotent(words):
    with broken("canonical dump", "validating the dump again changes it"):
        testing.check_canonical_dump(TaggedLexiconSpec(path=words))


# -- input order: a fingerprint that follows the order its input came in ----------------


class SourcesLexiconSpec(LexiconSpec):
    kind: Literal["testing-sources-lexicon"] = "testing-sources-lexicon"  # type: ignore[assignment]
    sources: Annotated[dict[str, str], Identity] = Field(default_factory=dict)  # label -> file

    def fingerprint(self) -> Any:
        # The mistake: sizes listed in the dict's order, which is the caller's.
        return [Path(p).stat().st_size for p in self.sources.values()]


class FilesLexiconSpec(LexiconSpec):
    kind: Literal["testing-files-lexicon"] = "testing-files-lexicon"  # type: ignore[assignment]
    files: Annotated[frozenset[str], Identity] = frozenset()

    def fingerprint(self) -> Any:
        # The same mistake with a set: its iteration order, which insertion and hash seed move.
        return [Path(p).stat().st_size for p in self.files]


def test_input_order_fails_for_a_fingerprint_in_dict_order(words, tmp_path):
    sources = {}
    for label, text in (("a", "x"), ("b", "yy")):
        (tmp_path / label).write_text(text, encoding="utf-8")
        sources[label] = str(tmp_path / label)
    spec = SourcesLexiconSpec(path=words, sources=sources)
    with broken("input order", "built with its dict keys and set items in reversed order"):
        testing.check_input_order(spec)


def files_whose_set_order_follows_insertion(folder: Path) -> list[str]:
    """Files of distinct sizes whose frozenset iterates differently when built backwards."""
    paths: list[str] = []
    for size in range(1, 400):
        path = folder / f"file{size}"
        path.write_text("x" * size, encoding="utf-8")
        paths.append(str(path))
        ordered = sorted(paths, key=json.dumps)
        if list(frozenset(ordered)) != list(frozenset(reversed(ordered))):
            return paths
    raise AssertionError("no two insertion orders gave two iteration orders")


def test_input_order_fails_for_a_fingerprint_in_set_order(words, tmp_path):
    files = files_whose_set_order_follows_insertion(tmp_path)
    spec = FilesLexiconSpec(path=words, files=files)
    with broken("input order", "cache_key() of a FilesLexiconSpec built with its dict keys"):
        testing.check_input_order(spec)


def test_input_order_passes_a_kind_whose_dicts_and_sets_only_reach_the_key_through_its_dump(
    words, tmp_path
):
    files = files_whose_set_order_follows_insertion(tmp_path)
    spec = TaggedLexiconSpec(path=words, tags=("b", "a"))  # a tuple: its order is meaning
    testing.check_input_order(spec)
    testing.check_input_order(SetLexiconSpec(path=words, files=files, labels={"b": 1, "a": 2}))


class SetLexiconSpec(LexiconSpec):
    kind: Literal["testing-set-lexicon"] = "testing-set-lexicon"  # type: ignore[assignment]
    files: Annotated[frozenset[str], Identity] = frozenset()
    labels: Annotated[dict[str, int], Identity] = Field(default_factory=dict)


# -- canonical fingerprint: JSON text written in whatever order a dict came in --------------


class MetaLexiconSpec(LexiconSpec):
    kind: Literal["testing-meta-lexicon"] = "testing-meta-lexicon"  # type: ignore[assignment]

    def fingerprint(self) -> Any:
        # The mistake: the sidecar's metadata dumped without sort_keys, so the same
        # metadata written out in another order moves every key.
        meta = json.loads(Path(self.path + ".meta.json").read_text(encoding="utf-8"))
        return json.dumps(meta)


class OptionsLexiconSpec(LexiconSpec):
    kind: Literal["testing-options-lexicon"] = "testing-options-lexicon"  # type: ignore[assignment]
    options: Annotated[dict[str, str], Identity] = Field(default_factory=dict)

    def fingerprint(self) -> Any:
        return json.dumps(self.options)  # the mistake: no sort_keys


def test_canonical_fingerprint_fails_for_json_text_with_unsorted_keys(words):
    Path(words + ".meta.json").write_text('{"version": "2", "lang": "en"}', encoding="utf-8")
    with broken("canonical fingerprint", "JSON text whose keys are not sorted (version, lang)"):
        testing.check_fingerprint(MetaLexiconSpec(path=words))


def test_a_fingerprint_dumping_a_dict_field_fails_even_when_the_spec_is_written_in_order(words):
    spec = OptionsLexiconSpec(path=words, options={"a": "1", "b": "2"})  # sorted as written
    assert (
        spec.cache_key()
        == OptionsLexiconSpec.model_validate_json(spec.model_dump_json()).cache_key()
    )
    with broken("canonical fingerprint", "JSON text whose keys are not sorted (b, a)"):
        testing.check_fingerprint(spec)
    with broken("input order", "cache_key()"):
        testing.check_input_order(spec)


class NoJsonFingerprintSpec(LexiconSpec):
    kind: Literal["testing-no-json-fingerprint"] = "testing-no-json-fingerprint"  # type: ignore[assignment]

    def fingerprint(self) -> Any:
        return {"size": float("nan")}  # the mistake: no JSON form


def test_canonical_fingerprint_fails_for_data_with_no_json_form(words):
    with broken("canonical fingerprint", "no JSON form"):
        testing.check_fingerprint(NoJsonFingerprintSpec(path=words))


# -- roles: what the object is, marked as where it lives ----------------------------


class MislabelledLexiconSpec(Spec[Lexicon]):
    kind: Literal["testing-mislabelled-lexicon"] = "testing-mislabelled-lexicon"
    path: Annotated[str, Placement]  # should be Identity: another file is another object
    log_level: Annotated[str, Placement] = "info"

    def build(self) -> Lexicon:
        return Lexicon(frozenset(Path(self.path).read_text(encoding="utf-8").split()))


def test_roles_fail_for_an_identity_field_marked_placement(words, tmp_path):
    spec = MislabelledLexiconSpec(path=words)
    with broken("placement/identity roles", "changing 'path' keeps cache_key()"):
        testing.check_roles(
            spec, identity={"path": str(tmp_path / "other.txt")}, placement={"log_level": "debug"}
        )


def test_roles_fail_when_placement_fields_are_left_unchecked(words, tmp_path):
    with broken("placement/identity roles", "placement fields ('log_level',) but none changed"):
        testing.check_roles(LexiconSpec(path=words), identity={"lowercase": False})


# -- key stability: Python's hash() in the fingerprint -----------------------------


class HashedLexiconSpec(LexiconSpec):
    kind: Literal["testing-hashed-lexicon"] = "testing-hashed-lexicon"  # type: ignore[assignment]

    def fingerprint(self) -> Any:
        return hash(self.path)  # seeded per process: PYTHONHASHSEED


def test_key_stability_fails_for_a_fingerprint_using_hash(words):
    spec = HashedLexiconSpec(path=words)
    assert spec.cache_key() == HashedLexiconSpec(path=words).cache_key()  # fine in one process
    with broken("key stability across hash seeds", "with PYTHONHASHSEED=1"):
        testing.check_key_stable_across_processes(spec)


EXEC_KIND = """
from typing import Annotated, Any, Literal
from handles import Identity, Spec

class ExecLexiconSpec(Spec[str]):
    kind: Literal["testing-exec-lexicon"] = "testing-exec-lexicon"
    path: Annotated[str, Identity]

    def fingerprint(self) -> Any:
        return HASHED and hash(self.path)

    def build(self) -> str:
        return self.path
"""


@pytest.mark.parametrize("hashed", [False, True])
def test_a_kind_no_fresh_process_can_import_reaches_it_by_value(hashed, monkeypatch):
    pytest.importorskip("cloudpickle")
    module = types.ModuleType(f"testing_exec_kind_{hashed}")  # no file: as docs and notebooks
    monkeypatch.setitem(sys.modules, module.__name__, module)
    module.HASHED = hashed  # type: ignore[attr-defined]
    exec(EXEC_KIND.replace("testing-exec", f"testing-exec-{hashed}"), module.__dict__)
    spec = module.ExecLexiconSpec(path="/words.txt")
    if not hashed:
        testing.check_key_stable_across_processes(spec)
        return
    with broken("key stability across hash seeds", "with PYTHONHASHSEED=1"):
        testing.check_key_stable_across_processes(spec)


# -- reuse: a build that forgets to return -------------------------------------------


class ForgetfulLexiconSpec(LexiconSpec):
    kind: Literal["testing-forgetful-lexicon"] = "testing-forgetful-lexicon"  # type: ignore[assignment]

    def build(self) -> Lexicon:
        super().build()  # type: ignore[return-value]  # the mistake: no return


def test_reuse_fails_for_a_build_that_returns_none(words):
    with broken("reuse", "get() returned None"):
        testing.check_reuse(ForgetfulLexiconSpec(path=words))


# -- single-flight and fork: objects cached in the kind's own module ------------------

_OPEN: dict[str, Lexicon] = {}  # "reuse open lexicons": a cache beside the registry's
_OPEN_LOCK = threading.Lock()


class CachingLexiconSpec(LexiconSpec):
    kind: Literal["testing-caching-lexicon"] = "testing-caching-lexicon"  # type: ignore[assignment]

    def build(self) -> Lexicon:
        with _OPEN_LOCK:
            if self.path not in _OPEN:
                _OPEN[self.path] = super().build()
            return _OPEN[self.path]


class ThreadCachingLexiconSpec(CachingLexiconSpec):
    kind: Literal["testing-thread-caching-lexicon"] = "testing-thread-caching-lexicon"  # type: ignore[assignment]
    scope: ClassVar[Scope] = "thread"  # a thread-bound object, shared anyway by the cache


@pytest.fixture(autouse=True)
def _empty_caches() -> Iterator[None]:
    yield
    _OPEN.clear()
    _GAVE_UP.clear()
    _SHARED.clear()


def test_single_flight_fails_for_thread_objects_shared_across_threads(words):
    with broken("single-flight", "8 threads made 1 objects in 8 builds"):
        testing.check_single_flight(ThreadCachingLexiconSpec(path=words), threads=8)


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@needs_fork
def test_fork_fails_for_a_child_that_gets_the_parents_object(words):
    with broken("fork", "the child got the parent's object"):
        testing.check_fork(CachingLexiconSpec(path=words))


@needs_fork
def test_fork_fails_when_the_parents_object_stops_working(words):
    def closed_meanwhile(lexicon: Lexicon) -> None:
        lexicon.close()  # as a child that shut down a shared session would
        assert "apple" in lexicon

    with broken("fork", "stopped working after a child ran: RuntimeError"):
        testing.check_fork(LexiconSpec(path=words), alive=closed_meanwhile)


# -- one object per event loop: a loop-scoped kind that shares one object -----------------

_SHARED: dict[str, Lexicon] = {}


class LoopLexiconSpec(LexiconSpec):
    kind: Literal["testing-loop-lexicon"] = "testing-loop-lexicon"  # type: ignore[assignment]
    scope: ClassVar[Scope] = "loop"


class SharedLoopLexiconSpec(LoopLexiconSpec):
    kind: Literal["testing-shared-loop-lexicon"] = "testing-shared-loop-lexicon"  # type: ignore[assignment]

    async def abuild(self) -> Lexicon:
        if self.path not in _SHARED:  # "one lexicon is enough": but each loop needs its own
            _SHARED[self.path] = self.build()
        return _SHARED[self.path]


def test_one_object_per_loop_fails_for_a_kind_sharing_one_object(words):
    with broken("one object per event loop", "two event loops got one Lexicon"):
        testing.check_one_object_per_loop(SharedLoopLexiconSpec(path=words))


def test_one_object_per_loop_passes_a_loop_scoped_kind_and_restores_its_methods(words):
    testing.check_one_object_per_loop(LoopLexiconSpec(path=words))
    assert "ateardown" not in LoopLexiconSpec.__dict__
    assert "teardown" not in LoopLexiconSpec.__dict__
    testing.check_one_object_per_loop(LexiconSpec(path=words))  # process scope: nothing to do


# -- failure not cached: giving up for good, and hiding the cause ----------------------

_GAVE_UP: dict[str, Lexicon] = {}


class GiveUpLexiconSpec(LexiconSpec):
    kind: Literal["testing-give-up-lexicon"] = "testing-give-up-lexicon"  # type: ignore[assignment]

    def build(self) -> Lexicon:
        if self.path in _GAVE_UP:  # "don't retry a missing file": the failure is cached
            return _GAVE_UP[self.path]
        try:
            return super().build()
        except OSError:
            _GAVE_UP[self.path] = Lexicon(frozenset())
            raise


class CauselessLexiconSpec(LexiconSpec):
    kind: Literal["testing-causeless-lexicon"] = "testing-causeless-lexicon"  # type: ignore[assignment]

    def build(self) -> Lexicon:
        try:
            return super().build()
        except OSError:
            message = f"{type(self).__name__}: no lexicon at {self.path}"
            raise BuildError(message, kind=self.kind) from None


def test_failure_not_cached_fails_for_a_kind_that_remembers_its_failure(tmp_path):
    with broken("failure not cached", "get() #2 of the broken spec returned a Lexicon"):
        testing.check_failure_not_cached(GiveUpLexiconSpec(path=str(tmp_path / "missing")))


def test_failure_not_cached_fails_for_a_build_error_without_its_cause(tmp_path):
    spec = CauselessLexiconSpec(path=str(tmp_path / "missing"))
    with broken("failure not cached", "the BuildError has no cause"):
        testing.check_failure_not_cached(spec)
    with broken("failure not cached", "4 of 4 waiters got no BuildError with a cause"):
        testing.check_failure_reaches_every_waiter(spec, threads=4)


# -- teardown order: a teardown that reaches its object through get() -----------------

_REOPENS = {"on": False}  # on only inside the test, so the suite's own close() stays finite


class ReopeningLexiconSpec(LexiconSpec):
    kind: Literal["testing-reopening-lexicon"] = "testing-reopening-lexicon"  # type: ignore[assignment]

    def teardown(self, value: Lexicon) -> None:
        if _REOPENS["on"]:
            value = self.get()  # the mistake: builds a new object while the registry closes
        value.close()


def test_teardown_order_fails_when_teardown_builds_again(words, monkeypatch):
    monkeypatch.setitem(_REOPENS, "on", True)
    with broken("teardown order", "2 objects live after close()"):
        testing.check_teardown_order(
            ReopeningLexiconSpec(path=words), identity={"lowercase": False}
        )


def test_teardown_order_check_restores_the_kinds_teardown(words):
    testing.check_teardown_order(LexiconSpec(path=words), identity={"lowercase": False})
    assert "teardown" not in LexiconSpec.__dict__


# -- errors from a kind become the property's failure ------------------------------------


def test_an_error_inside_a_check_is_reported_as_its_property(tmp_path):
    missing = LexiconSpec(path=str(tmp_path / "missing"))
    with broken("reuse", "FileNotFoundError") as info:
        testing.check_reuse(missing)
    assert isinstance(info.value.__cause__, BuildError)


def test_importing_handles_leaves_testing_and_test_tools_alone(run_python):
    out = run_python(
        "import sys, handles\n"
        "assert 'handles.testing' not in sys.modules\n"
        "import handles.testing\n"
        "print(sorted(m for m in ('pytest', 'cloudpickle') if m in sys.modules))\n"
    )
    assert out == "[]"
