"""Malformed spaCy specs: each fails naming SpacySpec and the field, and caches nothing.

Shape problems are SpecErrors at construction. Problems only the model can
reveal are SpecErrors from `cache_key()` (and so from the first `get()`) when the
meta cannot be read, or BuildErrors from the first `get()` when loading fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import handles
from handles import BuildError, SpacySpec, SpecError
from support.tiny_spacy import save_tiny_pipeline

pytest.importorskip("spacy", reason="the spaCy kind needs spaCy (handles[spacy])")


def assert_nothing_cached() -> None:
    # Each test starts with an empty registry (conftest), so anything live is ours.
    assert len(handles.registry()) == 0


# -- at construction ----------------------------------------------------------------

CONSTRUCTION = [
    pytest.param({}, "path", "needs name=", id="neither-name-nor-path"),
    pytest.param({"name": "en_core_web_sm", "path": "x"}, "path", "not both", id="both"),
    pytest.param({"name": "en-core-web-sm"}, "name", "'en_core_web_sm'", id="dashed-name"),
    pytest.param({"name": "models/ner"}, "name", "use path=", id="path-as-name"),
    pytest.param({"name": "en_core_web_sm.v3"}, "name", "importable", id="dotted-name"),
    pytest.param({"path": ""}, "path", "empty", id="empty-path"),
    pytest.param({"path": "p", "disable": ["ner", " "]}, "disable", "empty", id="blank-component"),
    pytest.param(
        {"path": "p", "disable": ["ner"], "exclude": "ner"},
        "exclude",
        "also in disable",
        id="disabled-and-excluded",
    ),
    pytest.param({"path": "p", "batch_size": 0}, "batch_size", "greater than", id="batch-size-0"),
    pytest.param({"path": "p", "disable": "ner", "exlude": ["x"]}, "exlude", "", id="typo-field"),
    pytest.param({"path": "p", "disable": 3}, "disable", "", id="disable-not-a-list"),
]


@pytest.mark.parametrize(("data", "field", "fragment"), CONSTRUCTION)
def test_bad_shape_is_a_spec_error_at_construction(data: dict[str, Any], field, fragment):
    with pytest.raises(SpecError) as info:
        SpacySpec(**data)
    message = str(info.value)
    assert f"SpacySpec.{field}" in message
    assert fragment in message
    assert info.value.kind == "SpacySpec"
    assert_nothing_cached()


def test_bad_json_is_a_spec_error():
    with pytest.raises(SpecError, match=r"SpacySpec\.name"):
        handles.spec_from_json(json.dumps({"kind": "spacy", "name": 42}))


# -- when the key is computed (meta.json) --------------------------------------------


def _empty_dir(tmp: Path) -> dict[str, Any]:
    (tmp / "empty").mkdir()
    return {"path": str(tmp / "empty")}


def _a_file(tmp: Path) -> dict[str, Any]:
    (tmp / "model.bin").write_bytes(b"\0")
    return {"path": str(tmp / "model.bin")}


def _corrupt_meta(tmp: Path) -> dict[str, Any]:
    path = save_tiny_pipeline(tmp / "p")
    (path / "meta.json").write_text("{not json", encoding="utf-8")
    return {"path": str(path)}


def _meta_without_version(tmp: Path) -> dict[str, Any]:
    path = save_tiny_pipeline(tmp / "p")
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    del meta["version"]
    (path / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return {"path": str(path)}


KEY_TIME = [
    pytest.param(
        lambda tmp: {"name": "en_core_web_handles_nonexistent"},
        "name",
        "no spaCy pipeline package",
        id="unknown-package",
    ),
    pytest.param(lambda tmp: {"name": "json"}, "name", "no meta.json", id="package-not-a-pipeline"),
    pytest.param(lambda tmp: {"name": "this"}, "name", "not a spaCy pipeline", id="plain-module"),
    pytest.param(lambda tmp: {"path": str(tmp / "nope")}, "path", "does not exist", id="no-dir"),
    pytest.param(_empty_dir, "path", "not a spaCy pipeline", id="dir-not-a-pipeline"),
    pytest.param(_a_file, "path", "is a file", id="path-is-a-file"),
    pytest.param(_corrupt_meta, "path", "cannot read", id="corrupt-meta"),
    pytest.param(_meta_without_version, "path", "version", id="meta-without-version"),
]


@pytest.mark.parametrize(("make", "field", "fragment"), KEY_TIME)
def test_missing_or_unreadable_model_is_a_spec_error_at_first_use(tmp_path, make, field, fragment):
    spec = SpacySpec(**make(tmp_path))  # the shape is fine: no filesystem at construction
    with pytest.raises(SpecError) as info:
        spec.cache_key()
    assert f"SpacySpec.{field}" in str(info.value)
    assert fragment in str(info.value)
    with pytest.raises(SpecError, match=rf"SpacySpec\.{field}"):
        spec.get()
    # (`spec in registry()` needs the key, which is exactly what cannot be computed.)
    assert_nothing_cached()


# -- at build -------------------------------------------------------------------


@pytest.mark.parametrize("field", ["disable", "exclude"])
def test_unknown_component_is_a_build_error_naming_the_field(tmp_path, field):
    # spaCy itself ignores unknown names, which would quietly run a component
    # the user meant to switch off.
    path = save_tiny_pipeline(tmp_path / "p")
    spec = SpacySpec(path=str(path), **{field: ["sentencizer", "nerr"]})
    with pytest.raises(BuildError) as info:
        spec.get()
    message = str(info.value)
    assert f"SpacySpec.{field}" in message
    assert "'nerr'" in message
    assert "entity_ruler" in message, "lists the components there are"
    assert isinstance(info.value.__cause__, SpecError)
    assert spec not in handles.registry()
    assert handles.registry().stats()[spec.cache_key()].errors == 1


def test_pipeline_that_spacy_cannot_load_is_a_build_error_then_recovers(tmp_path):
    path = save_tiny_pipeline(tmp_path / "p")
    config = (path / "config.cfg").read_text(encoding="utf-8")
    (path / "config.cfg").unlink()
    spec = SpacySpec(path=str(path))
    with pytest.raises(BuildError) as info:
        spec.get()
    assert "SpacySpec(" in str(info.value)
    assert info.value.kind == "spacy"
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
