"""Malformed spaCy specs: each fails naming SpacySpec and the field, and caches nothing.

Shape problems are SpecErrors at construction. Problems only the model can
reveal are SpecErrors from `cache_key()` (and so from the first `get()`) when the
meta cannot be read, or BuildErrors from the first `get()` when loading fails.
The table has the shape every kind shares (tests/support/bad_input.py); failures
whose cause is not a SpecError (spaCy's own) are tests of their own below.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import handles
from handles import BuildError, SpacySpec
from support.bad_input import Bad, check, params
from support.tiny_spacy import save_tiny_pipeline

pytest.importorskip("spacy", reason="the spaCy kind needs spaCy (handles[spacy])")


def _empty_dir(tmp: Path) -> SpacySpec:
    (tmp / "empty").mkdir()
    return SpacySpec(path=str(tmp / "empty"))


def _a_file(tmp: Path) -> SpacySpec:
    (tmp / "model.bin").write_bytes(b"\0")
    return SpacySpec(path=str(tmp / "model.bin"))


def _corrupt_meta(tmp: Path) -> SpacySpec:
    path = save_tiny_pipeline(tmp / "p")
    (path / "meta.json").write_text("{not json", encoding="utf-8")
    return SpacySpec(path=str(path))


def _meta_without_version(tmp: Path) -> SpacySpec:
    path = save_tiny_pipeline(tmp / "p")
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    del meta["version"]
    (path / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return SpacySpec(path=str(path))


def _unknown_component(field: str):
    # spaCy itself ignores unknown names, which would quietly run a component
    # the user meant to switch off.
    def make(tmp: Path) -> SpacySpec:
        path = save_tiny_pipeline(tmp / "p")
        return SpacySpec(path=str(path), **{field: ["sentencizer", "nerr"]})

    return make


# The message names the unknown component and lists the components there are.
LISTED = "no component 'nerr'; its components are sentencizer, entity_ruler, merge_entities"

CASES = [
    # -- at construction: the spec's shape ------------------------------------------
    Bad("neither-name-nor-path", SpacySpec, lambda t: SpacySpec(),
        "path", "construct", "needs name="),
    Bad("both", SpacySpec, lambda t: SpacySpec(name="en_core_web_sm", path="x"),
        "path", "construct", "not both"),
    Bad("dashed-name", SpacySpec, lambda t: SpacySpec(name="en-core-web-sm"),
        "name", "construct", "'en_core_web_sm'"),
    Bad("path-as-name", SpacySpec, lambda t: SpacySpec(name="models/ner"),
        "name", "construct", "use path="),
    Bad("dotted-name", SpacySpec, lambda t: SpacySpec(name="en_core_web_sm.v3"),
        "name", "construct", "importable"),
    Bad("empty-path", SpacySpec, lambda t: SpacySpec(path=""), "path", "construct", "empty"),
    Bad("blank-component", SpacySpec, lambda t: SpacySpec(path="p", disable=["ner", " "]),
        "disable", "construct", "empty"),
    Bad("disabled-and-excluded", SpacySpec,
        lambda t: SpacySpec(path="p", disable=["ner"], exclude="ner"),
        "exclude", "construct", "also in disable"),
    Bad("batch-size-0", SpacySpec, lambda t: SpacySpec(path="p", batch_size=0),
        "batch_size", "construct", "greater than"),
    Bad("typo-field", SpacySpec, lambda t: SpacySpec(path="p", disable="ner", exlude=["x"]),
        "exlude", "construct"),
    Bad("disable-not-a-list", SpacySpec, lambda t: SpacySpec(path="p", disable=3),
        "disable", "construct"),
    Bad("bad-json", SpacySpec,
        lambda t: handles.spec_from_json(json.dumps({"kind": "spacy", "name": 42})),
        "name", "construct"),
    # -- when the key is computed (meta.json) -----------------------------------------
    Bad("unknown-package", SpacySpec,
        lambda t: SpacySpec(name="en_core_web_handles_nonexistent"),
        "name", "key", "no spaCy pipeline package"),
    Bad("package-not-a-pipeline", SpacySpec, lambda t: SpacySpec(name="json"),
        "name", "key", "no meta.json"),
    Bad("plain-module", SpacySpec, lambda t: SpacySpec(name="this"),
        "name", "key", "not a spaCy pipeline"),
    Bad("no-dir", SpacySpec, lambda t: SpacySpec(path=str(t / "nope")),
        "path", "key", "does not exist"),
    Bad("dir-not-a-pipeline", SpacySpec, _empty_dir, "path", "key", "not a spaCy pipeline"),
    Bad("path-is-a-file", SpacySpec, _a_file, "path", "key", "is a file"),
    Bad("corrupt-meta", SpacySpec, _corrupt_meta, "path", "key", "cannot read"),
    Bad("meta-without-version", SpacySpec, _meta_without_version, "path", "key", "version"),
    # -- at build: checked against the pipeline's meta ------------------------------------
    Bad("unknown-disabled-component", SpacySpec, _unknown_component("disable"),
        "disable", "build", LISTED),
    Bad("unknown-excluded-component", SpacySpec, _unknown_component("exclude"),
        "exclude", "build", LISTED),
]  # fmt: skip


@pytest.mark.parametrize("case", params(CASES))
def test_malformed_spacy_spec(case: Bad, tmp_path: Path) -> None:
    # "key" cases: the shape is fine, so construction reads no file; `cache_key()`
    # and so the first `get()` fail before any build.
    check(case, tmp_path)


# -- at build, with spaCy's own errors as the cause ---------------------------------


def test_pipeline_that_spacy_cannot_load_is_a_build_error_then_recovers(tmp_path):
    path = save_tiny_pipeline(tmp_path / "p")
    config = (path / "config.cfg").read_text(encoding="utf-8")
    (path / "config.cfg").unlink()
    spec = SpacySpec(path=str(path))
    with pytest.raises(BuildError) as info:
        spec.get()
    assert "SpacySpec(" in str(info.value)
    assert info.value.kind == "SpacySpec"  # as messages name it
    assert info.value.spec is not None
    assert info.value.spec.kind == "spacy"
    assert info.value.__cause__ is not None
    assert spec not in handles.registry()

    # Nothing half-built was kept: once the file is back, the same spec loads.
    (path / "config.cfg").write_text(config, encoding="utf-8")
    assert spec.get().pipe_names == ["sentencizer", "entity_ruler", "merge_entities"]
    stats = handles.registry().stats()[spec.cache_key()]
    assert (stats.builds, stats.errors) == (1, 1)


def test_component_from_a_missing_plugin_is_a_build_error(tmp_path):
    # A pipeline saved with a custom component whose package is not installed
    # in this worker: spaCy cannot find the factory.
    path = save_tiny_pipeline(tmp_path / "p")
    config = path / "config.cfg"
    config.write_text(
        config.read_text(encoding="utf-8").replace(
            'factory = "entity_ruler"', 'factory = "handles_test_missing_plugin"'
        ),
        encoding="utf-8",
    )
    spec = SpacySpec(path=str(path))
    with pytest.raises(BuildError) as info:
        spec.get()
    assert "could not build SpacySpec(" in str(info.value)
    assert "handles_test_missing_plugin" in str(info.value)
    assert spec not in handles.registry()
