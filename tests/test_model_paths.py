"""The path rule for the model kinds: SpacySpec.path, TorchModelSpec.weights and .archive,
HFPipelineSpec.model and .tokenizer (when local) resolve where the spec is made.

One file named from two working directories is one spec and one key; a spec made in one
working directory loads the same files after a chdir and in a process started elsewhere;
hub ids and package names stay exactly as written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it

import handles
from handles import HFPipelineSpec, SpacySpec, TorchModelSpec
from handles._keys import digest
from handles._spec import KEY_FORMAT

TEXT = "a good film"


@dataclass(frozen=True)
class PathCase:
    """One path field of one kind, and how to make, save and use what it names."""

    name: str
    field: str
    leaf: str  # the file or folder's name
    requires: tuple[str, ...]
    save: Callable[[Path, int], Path]  # writes variant 0 or 1 of the files at the path
    make: Callable[[Any, Path], handles.Spec[Any]]  # (the field's value, the saved path)
    tell: Callable[[Any], Any]  # what tells the live objects of variants 0 and 1 apart

    def ready(self) -> None:
        for module in self.requires:
            pytest.importorskip(module)

    def saved(self, folder: Path, variant: int = 0) -> Path:
        """Variant `variant` saved as `folder`/models/`leaf`."""
        (folder / "models").mkdir(parents=True, exist_ok=True)
        return self.save(folder / "models" / self.leaf, variant)


def _tiny_models() -> Any:
    from support import tiny_models

    return tiny_models


def _save_pipeline(path: Path, variant: int) -> Path:
    from support.tiny_spacy import save_tiny_pipeline

    return save_tiny_pipeline(path, name=("tiny_ner", "other_ner")[variant])


def _run_module(model: Any) -> list[list[float]]:
    import torch

    with torch.inference_mode():
        out = model(_tiny_models().sample_input(1))
    return [[round(x, 4) for x in row] for row in out.tolist()]


def _run_pipeline(pipe: Any) -> list[tuple[str, float]]:
    return [(r["label"], round(r["score"], 4)) for r in pipe(TEXT, top_k=None)]


def _save_tokenizer(path: Path, variant: int) -> Path:
    # The model folder holds its tokenizer too; `tokenizer=` names the same folder.
    return _tiny_models().save_tiny_hf(path, seed=variant)


CASES = [
    PathCase(
        "spacy-path",
        "path",
        "x",
        ("spacy",),
        _save_pipeline,
        lambda value, saved: SpacySpec(path=value),
        lambda nlp: nlp.meta["name"],
    ),
    PathCase(
        "torch-weights",
        "weights",
        "x.safetensors",
        ("torch", "safetensors"),
        lambda path, variant: _tiny_models().save_safetensors(path, seed=variant),
        lambda value, saved: TorchModelSpec(factory="tiny-mlp", weights=value, device="cpu"),
        _run_module,
    ),
    PathCase(
        "torch-archive",
        "archive",
        "x.pt2",
        ("torch",),
        lambda path, variant: _tiny_models().save_exported(path, seed=variant),
        lambda value, saved: TorchModelSpec(archive=value, device="cpu"),
        _run_module,
    ),
    PathCase(
        "hf-model",
        "model",
        "x",
        ("torch", "transformers"),
        lambda path, variant: _tiny_models().save_tiny_hf(path, seed=variant),
        lambda value, saved: HFPipelineSpec(task="text-classification", model=value, device="cpu"),
        _run_pipeline,
    ),
    PathCase(
        "hf-tokenizer",
        "tokenizer",
        "x",
        ("torch", "transformers"),
        _save_tokenizer,
        lambda value, saved: HFPipelineSpec(
            task="text-classification", model=str(saved), tokenizer=value, device="cpu"
        ),
        _run_pipeline,
    ),
]
BY_FIELD = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])


@BY_FIELD
def test_every_spelling_of_one_path_is_one_spec_and_one_key(case, tmp_path, monkeypatch):
    case.ready()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # where `~` expands
    (tmp_path / "sub").mkdir()  # `sub/../models/x` names an existing path (transformers' test)
    saved = case.saved(tmp_path)
    leaf = case.leaf
    spellings = [
        f"models/{leaf}",
        f"./models/{leaf}",
        f"sub/../models/{leaf}",
        f"models//{leaf}/" if saved.is_dir() else f"models//{leaf}",
        f"~/models/{leaf}",
        str(saved),
        Path(f"models/{leaf}"),
        saved,
    ]
    specs = [case.make(spelling, saved) for spelling in spellings]
    assert {getattr(spec, case.field) for spec in specs} == {str(saved)}
    assert all(spec == specs[0] for spec in specs)
    assert len({spec.cache_key() for spec in specs}) == 1
    assert len({spec.model_dump_json() for spec in specs}) == 1


@BY_FIELD
def test_a_spec_made_before_a_chdir_loads_the_same_files(case, tmp_path, monkeypatch):
    case.ready()
    first, second = tmp_path / "first", tmp_path / "second"
    saved = case.saved(first, 0)
    decoy = case.saved(second, 1)  # the same relative path, other files
    monkeypatch.chdir(first)
    spec = case.make(f"models/{case.leaf}", saved)
    key = spec.cache_key()

    monkeypatch.chdir(second)
    assert getattr(spec, case.field) == str(saved)
    assert spec.replace().cache_key() == key, "revalidated elsewhere: the same key"
    loaded = case.tell(spec.get())
    there = case.make(f"models/{case.leaf}", decoy)  # made here: names the decoy
    assert getattr(there, case.field) == str(decoy)
    assert there.cache_key() != key
    assert case.tell(there.get()) != loaded, "the spec made first loaded its own files"


_REBUILD = """
import importlib, json, sys
import handles
for module in sys.argv[2:]:
    importlib.import_module(module)  # registers what the spec names (a factory)
spec = handles.spec_from_json(sys.argv[1])
print(json.dumps([spec.cache_key(), spec.model_dump(mode="json")]))
"""


@BY_FIELD
def test_a_process_started_elsewhere_rebuilds_the_same_key(
    case, tmp_path, monkeypatch, subprocess_env
):
    case.ready()
    saved = case.saved(tmp_path)
    monkeypatch.chdir(tmp_path)
    spec = case.make(f"models/{case.leaf}", saved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    modules = ["support.tiny_models"] if case.name == "torch-weights" else []
    # The worker reads the spec as JSON: an archive is a program, so it allows them.
    env = {**subprocess_env, "HANDLES_ALLOW_ARCHIVES": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _REBUILD, spec.model_dump_json(), *modules],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,  # its stderr is the failure message
    )
    assert out.returncode == 0, out.stderr
    key, dumped = json.loads(out.stdout)
    assert dumped == spec.model_dump(mode="json")
    assert key == spec.cache_key()


def test_the_rule_reads_no_file(tmp_path, monkeypatch):
    # Validation stays a check of the spec's shape: nothing named must exist here.
    monkeypatch.chdir(tmp_path)
    absent = str(tmp_path / "absent")
    assert SpacySpec(path="absent").path == absent
    assert TorchModelSpec(archive="absent").archive == absent
    assert not (tmp_path / "absent").exists()


def test_hub_ids_and_package_names_stay_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder of these names here
    for model, tokenizer in [("distilbert-base-uncased", None), ("org/model", "org/tokenizer")]:
        spec = HFPipelineSpec(task="text-classification", model=model, tokenizer=tokenizer)
        assert (spec.model, spec.tokenizer) == (model, tokenizer)
    assert SpacySpec(name="en_core_web_sm").name == "en_core_web_sm"


def test_a_hub_id_that_names_a_folder_here_is_that_folder(tmp_path, monkeypatch):
    # transformers loads a local folder before asking the hub; so does the rule.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "model").mkdir(parents=True)
    spec = HFPipelineSpec(task="text-classification", model="org/model")
    assert spec.model == str(tmp_path / "org" / "model")


def _key_with_schema(spec: handles.Spec[Any], schema: int) -> str:
    payload: dict[str, Any] = {
        "format": KEY_FORMAT,
        "kind": spec.kind,
        "schema": schema,
        "identity": spec.identity(),
    }
    content = spec.fingerprint()
    if content is not None:
        payload["content"] = content
    return digest(payload)


NO_SPACY = pytest.mark.skipif(importlib.util.find_spec("spacy") is None, reason="needs spaCy")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda tmp: HFPipelineSpec(task="text-classification", model="org/model"),
            id="hf-pipeline",
        ),
        pytest.param(lambda tmp: TorchModelSpec(archive=str(tmp / "m.pt2")), id="torch"),
        pytest.param(
            lambda tmp: SpacySpec(path=str(_save_pipeline(tmp / "p", 0))),
            id="spacy",
            marks=NO_SPACY,
        ),
    ],
)
def test_keys_moved_once_with_schema_version_2(make, tmp_path, monkeypatch):
    # The path rule changed what these fields mean, so each kind's keys moved once.
    monkeypatch.chdir(tmp_path)
    spec = make(tmp_path)
    assert type(spec).schema_version == 2
    assert spec.cache_key() == _key_with_schema(spec, 2)
    assert spec.cache_key() != _key_with_schema(spec, 1)


# -- where the model kinds take what they share ----------------------------------------


def test_path_fields_come_from_the_path_rule_module():
    from handles.specs import _device, _paths, hf, spacy, torch

    assert not hasattr(_device, "PathStr")
    assert "PathStr" not in _device.__all__
    for module in (spacy, torch, hf):
        assert not hasattr(module, "KIND"), "errors are labelled by the spec's class"
    assert hf.PathStr is _paths.PathStr
    assert spacy.PathStr is _paths.PathStr
    assert torch.LocalPath is _paths.LocalPath
