"""HFPipelineSpec on CPU with a tiny BERT and a tokenizer built locally; fully offline."""

from __future__ import annotations

import json
import os
import shutil
import weakref
from collections import OrderedDict
from pathlib import Path

import pytest

# Before transformers is imported: huggingface_hub reads it once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("torch")
pytest.importorskip("transformers")

import handles
from handles import BuildError, HFPipelineSpec
from handles.specs import hf
from support import tiny_models as tm


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tm.save_tiny_hf(tmp_path_factory.mktemp("tiny-hf"))


@pytest.fixture
def model_dir(saved_model: Path, tmp_path: Path) -> Path:
    """A private copy: tests that edit files do not disturb the others."""
    return Path(shutil.copytree(saved_model, tmp_path / "model"))


def spec_for(folder: Path, **fields: object) -> HFPipelineSpec:
    return HFPipelineSpec(task="text-classification", model=folder, **fields)


def test_pipeline_loads_offline_from_a_local_folder(model_dir):
    from transformers import Pipeline

    pipe = spec_for(model_dir).get()
    assert isinstance(pipe, Pipeline)
    assert not pipe.model.training
    results = pipe(["a good film", "an awful plot"])
    assert {r["label"] for r in results} <= set(tm.LABELS.values())
    assert spec_for(model_dir).get() is pipe


def test_pipeline_kwargs_and_dtype_reach_transformers(model_dir):
    import torch

    pipe = spec_for(model_dir, pipeline_kwargs={"top_k": 2}, dtype="float64").get()
    assert len(pipe("a good film")[0]) == 2, "top_k=2 gives both labels"
    assert pipe.model.dtype == torch.float64


def test_separate_tokenizer_folder(model_dir, tmp_path):
    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model_dir / name).rename(tokenizer_dir / name)
    pipe = spec_for(model_dir, tokenizer=tokenizer_dir).get()
    assert pipe("a good film")[0]["label"] in tm.LABELS.values()


def test_key_moves_with_weights_and_config_not_with_device_or_saving_version(model_dir, tmp_path):
    spec = spec_for(model_dir)
    key, before = spec.cache_key(), spec.fingerprint()
    assert spec.replace(device="cpu").cache_key() == key

    resaved = tm.save_tiny_hf(tmp_path / "resaved")
    assert spec_for(resaved).fingerprint() == before, "same seed, same files"

    config = json.loads((resaved / "config.json").read_text())
    config["transformers_version"] = "0.0.1"
    (resaved / "config.json").write_text(json.dumps(config, indent=4))
    assert spec_for(resaved).fingerprint() == before, "the saving version is not identity"

    retrained = tm.save_tiny_hf(tmp_path / "retrained", seed=1)
    shutil.copytree(retrained, model_dir, dirs_exist_ok=True)
    assert spec_for(model_dir).cache_key() != key, "new weights at the same path move the key"

    config["id2label"] = {"0": "BAD", "1": "GOOD"}
    (resaved / "config.json").write_text(json.dumps(config))
    changed = spec_for(resaved).fingerprint()["model"]
    assert changed["config.json"] != before["model"]["config.json"]
    assert changed["model.safetensors"] == before["model"]["model.safetensors"]


@pytest.fixture
def digests_read(monkeypatch) -> list[str]:
    """The names of the files whose content hf digests from now on, in order."""
    read: list[str] = []
    original = hf._content_digest

    def counting(path: Path) -> str:
        read.append(path.name)
        return original(path)

    monkeypatch.setattr(hf, "_content_digest", counting)
    return read


def test_file_digests_are_computed_once_per_file_version(model_dir, digests_read):
    read = digests_read
    first = spec_for(model_dir).cache_key()
    assert sorted(read) == ["model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    read.clear()
    assert spec_for(model_dir).cache_key() == first
    assert read == [], "a fresh spec instance reuses the digests"
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    assert spec_for(model_dir).cache_key() != first
    assert read == ["model.safetensors"]


def test_digest_cache_stays_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(hf, "_digests", OrderedDict())
    many = hf._DIGESTS_KEPT + 20
    for number in range(many):
        path = tmp_path / f"f{number}"
        path.write_bytes(str(number).encode())
        hf.file_digest(path)
    assert len(hf._digests) == hf._DIGESTS_KEPT

    rewritten = tmp_path / "rewritten"
    for size in range(1, 40):  # each size a new version of the file
        rewritten.write_bytes(b"x" * size)
        hf.file_digest(rewritten)
    assert len(hf._digests) == hf._DIGESTS_KEPT, "stale versions are dropped too"


def test_digest_cache_drops_the_least_recently_used(tmp_path, monkeypatch, digests_read):
    monkeypatch.setattr(hf, "_digests", OrderedDict())
    monkeypatch.setattr(hf, "_DIGESTS_KEPT", 3)
    read = digests_read
    files = {}
    for name in "abcd":
        files[name] = tmp_path / name
        files[name].write_bytes(name.encode())
        hf.file_digest(files[name])
    assert read == ["a", "b", "c", "d"]
    read.clear()
    hf.file_digest(files["b"])  # kept, and now the most recently used
    hf.file_digest(files["a"])  # dropped when d came: read again, dropping c
    hf.file_digest(files["b"])
    hf.file_digest(files["c"])  # read again, dropping d
    assert read == ["a", "c"]
    assert len(hf._digests) == 3


def test_hub_cache_blobs_are_known_by_name_without_reading(tmp_path, monkeypatch):
    blob_hash = "ab" * 32
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / blob_hash).write_bytes(b"weights")
    snapshot = tmp_path / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(tmp_path / "blobs" / blob_hash)

    def refuse(path: Path) -> str:
        raise AssertionError(f"read {path}")

    monkeypatch.setattr(hf, "_content_digest", refuse)
    assert hf.file_digest(snapshot / "model.safetensors") == blob_hash


def test_hub_ids_have_no_fingerprint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    spec = HFPipelineSpec(task="text-classification", model="someone/some-model", revision="abc")
    assert spec.fingerprint() is None
    assert spec.identity()["revision"] == "abc"


def test_remote_code_is_not_run_unless_the_spec_says_so(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    auto_map = {
        "AutoConfig": "configuration_tiny.TinyConfig",
        "AutoModelForSequenceClassification": "modeling_tiny.TinyModel",
    }
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny-x", "auto_map": auto_map}))
    code = 'import pathlib\npathlib.Path(__file__).with_name("CODE-RAN").touch()\n'
    for module in ("configuration_tiny.py", "modeling_tiny.py"):
        (folder / module).write_text(code)
    spec = spec_for(folder)
    assert spec.trust_remote_code is False
    with pytest.raises(BuildError, match="trust_remote_code=True"):
        spec.get()
    assert not (folder / "CODE-RAN").exists()
    assert spec not in handles.registry()


def test_offline_hub_id_missing_from_cache_is_a_build_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE is not set: this test must not reach the network")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.chdir(tmp_path)
    spec = HFPipelineSpec(task="text-classification", model="handles-tests/not-a-model")
    with pytest.raises(BuildError, match="HFPipelineSpec") as info:
        spec.get()
    assert info.value.__cause__ is not None
    assert spec not in handles.registry()


def test_close_frees_the_model_tensors_once_nobody_holds_the_pipeline(model_dir):
    pipe = spec_for(model_dir).get()
    # Weak references: holding the parameters themselves would keep them (a held
    # part of a model is never emptied).
    params = [weakref.ref(p) for p in pipe.model.parameters()]
    handles.registry().close()
    assert all(p().numel() > 0 for p in params), "still held by this test: still working"
    del pipe
    handles.registry().close()
    assert all(p() is None or p().numel() == 0 for p in params)


def test_the_hub_is_offline_for_these_tests():
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE
