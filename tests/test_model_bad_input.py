"""Malformed torch and hf-pipeline specs: each fails with a message naming kind and field,
at construction (SpecError) or at the first get() (BuildError), and nothing is cached."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it
pytest.importorskip("torch")
pytest.importorskip("safetensors")

import torch

import handles
from handles import BuildError, HFPipelineSpec, SpecError, TorchModelSpec
from handles.specs.torch import model_factory
from support import tiny_models as tm

CUDA = torch.cuda.is_available()


@model_factory("returns-a-number")
def returns_a_number() -> int:
    return 42


@dataclass(frozen=True)
class Bad:
    """`make(tmp)` gives the spec's fields (refused at construction) or a spec (refused at get)."""

    id: str
    cls: type[Any]
    make: Callable[[Path], Any]
    field: str
    says: str  # a phrase the message must contain


def weights(tmp: Path, **kwargs: Any) -> str:
    return str(tm.save_safetensors(tmp / "w.safetensors", **kwargs))


def hf_model(tmp: Path) -> str:
    return str(tm.save_tiny_hf(tmp / "model"))


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


MLP = {"factory": "tiny-mlp"}
TEXT = {"task": "text-classification"}

AT_CONSTRUCTION = [
    Bad("unregistered factory", TorchModelSpec, lambda t: {"factory": "resnet-huge"},
        "factory", "registered factories: "),
    Bad("code path as factory", TorchModelSpec, lambda t: {"factory": "os:system"},
        "factory", "no model factory named 'os:system'"),
    Bad("neither factory nor archive", TorchModelSpec, lambda t: {},
        "factory", "exactly one of factory="),
    Bad("both factory and archive", TorchModelSpec, lambda t: {**MLP, "archive": "m.pt2"},
        "archive", "exactly one of factory="),
    Bad("weights with an archive", TorchModelSpec,
        lambda t: {"archive": "m.pt2", "weights": "w.st"}, "weights", "goes with factory="),
    Bad("kwarg the factory lacks", TorchModelSpec, lambda t: {**MLP, "kwargs": {"hiden": 3}},
        "kwargs", "unexpected keyword argument 'hiden'"),
    Bad("kwargs not JSON", TorchModelSpec, lambda t: {**MLP, "kwargs": {"act": object()}},
        "kwargs.act", "JSON"),
    Bad("NaN in kwargs", TorchModelSpec, lambda t: {**MLP, "kwargs": {"hidden": float("nan")}},
        "kwargs", "NaN"),
    Bad("pickle weights without opt-in", TorchModelSpec, lambda t: {**MLP, "weights": "m.pth"},
        "weights", "allow_pickle_weights=True"),
    Bad("invalid device", TorchModelSpec, lambda t: {**MLP, "device": "gpu0"},
        "device", "'gpu0' is not a device"),
    Bad("negative cuda index", TorchModelSpec, lambda t: {**MLP, "device": "cuda:-1"},
        "device", "is not a device"),
    Bad("dtype typo", TorchModelSpec, lambda t: {**MLP, "dtype": "flaot16"},
        "dtype", "did you mean 'float16'"),
    Bad("dtype alias", TorchModelSpec, lambda t: {**MLP, "dtype": "fp16"},
        "dtype", "did you mean 'float16'"),
    Bad("hf empty task", HFPipelineSpec, lambda t: {"task": " ", "model": "m"},
        "task", "must not be empty"),
    Bad("hf dtype typo", HFPipelineSpec, lambda t: {**TEXT, "model": "m", "dtype": "bfloat61"},
        "dtype", "did you mean 'bfloat16'"),
    Bad("hf invalid device", HFPipelineSpec, lambda t: {**TEXT, "model": "m", "device": "cuda0"},
        "device", "is not a device"),
    Bad("hf remote code via kwargs", HFPipelineSpec,
        lambda t: {**TEXT, "model": "m", "pipeline_kwargs": {"trust_remote_code": True}},
        "pipeline_kwargs", "own field trust_remote_code="),
    Bad("hf device via kwargs", HFPipelineSpec,
        lambda t: {**TEXT, "model": "m", "pipeline_kwargs": {"device_map": "auto"}},
        "pipeline_kwargs", "own field device="),
]  # fmt: skip

AT_FIRST_GET = [
    Bad("weights of the wrong shape", TorchModelSpec,
        lambda t: TorchModelSpec(**MLP, weights=weights(t, hidden=5)),
        "weights", "size mismatch for fc1.weight"),
    Bad("missing weights file", TorchModelSpec,
        lambda t: TorchModelSpec(**MLP, weights=str(t / "absent.safetensors")),
        "weights", "no such file"),
    Bad("corrupt weights file", TorchModelSpec,
        lambda t: TorchModelSpec(**MLP, weights=write(t / "w.safetensors", b"not weights")),
        "weights", "neither a safetensors file nor a torch.save checkpoint"),
    Bad("pickle content under a safetensors name", TorchModelSpec,
        lambda t: TorchModelSpec(**MLP, weights=str(tm.save_pickle(t / "w.safetensors"))),
        "weights", "allow_pickle_weights=True"),
    Bad("checkpoint that is not a state dict", TorchModelSpec,
        lambda t: TorchModelSpec(**MLP, allow_pickle_weights=True,
                                 weights=_saved(t / "w.pt", [torch.zeros(2)])),
        "weights", "not a state dict"),
    Bad("factory returning no module", TorchModelSpec,
        lambda t: TorchModelSpec(factory="returns-a-number"),
        "factory", "returned int, not a torch.nn.Module"),
    Bad("checkpoint passed as archive", TorchModelSpec,
        lambda t: TorchModelSpec(archive=str(tm.save_pickle(t / "m.pt"))),
        "archive", "looks like a torch.save checkpoint"),
    Bad("missing archive", TorchModelSpec,
        lambda t: TorchModelSpec(archive=str(t / "m.pt2")), "archive", "no such file"),
    Bad("cuda index past the last GPU", TorchModelSpec,
        lambda t: TorchModelSpec(**MLP, device="cuda:99"), "device", "cuda:99"),
    Bad("hf unknown task", HFPipelineSpec,
        lambda t: HFPipelineSpec(task="sentiment-analyzer", model=hf_model(t)),
        "task", "known tasks: "),
    Bad("hf model folder without config", HFPipelineSpec,
        lambda t: HFPipelineSpec(**TEXT, model=_without_config(t)), "model", "no config.json"),
    Bad("hf model folder that does not exist", HFPipelineSpec,
        lambda t: HFPipelineSpec(**TEXT, model=str(t / "nowhere")), "model", "no such directory"),
    Bad("hf model path is a file", HFPipelineSpec,
        lambda t: HFPipelineSpec(**TEXT, model=write(t / "model.bin", b"x")), "model", "is a file"),
    Bad("hf tokenizer folder that does not exist", HFPipelineSpec,
        lambda t: HFPipelineSpec(**TEXT, model=hf_model(t), tokenizer=str(t / "tok")),
        "tokenizer", "no such directory"),
    Bad("hf cuda without a GPU", HFPipelineSpec,
        lambda t: HFPipelineSpec(**TEXT, model=hf_model(t), device="cuda"),
        "device", "no CUDA device"),
]  # fmt: skip


def _saved(path: Path, obj: Any) -> str:
    torch.save(obj, path)
    return str(path)


def _without_config(tmp: Path) -> str:
    folder = Path(hf_model(tmp))
    (folder / "config.json").unlink()
    return str(folder)


def test_at_least_fifteen_malformed_model_specs():
    assert len(AT_CONSTRUCTION) + len(AT_FIRST_GET) >= 15


@pytest.mark.parametrize("bad", AT_CONSTRUCTION, ids=[b.id for b in AT_CONSTRUCTION])
def test_refused_at_construction(bad: Bad, tmp_path):
    with pytest.raises(SpecError) as info:
        bad.cls(**bad.make(tmp_path))
    problems = dict(info.value.problems)
    assert bad.field in problems, info.value.problems
    assert bad.says in problems[bad.field]
    assert f"{bad.cls.__name__}.{bad.field}: " in str(info.value)
    assert "Traceback" not in str(info.value)


@pytest.mark.parametrize("bad", AT_FIRST_GET, ids=[b.id for b in AT_FIRST_GET])
def test_refused_at_first_get_and_not_cached(bad: Bad, tmp_path):
    if CUDA and "cuda" in bad.id:
        pytest.skip("this machine has CUDA; tests/gpu checks indexes past the last GPU")
    spec = bad.make(tmp_path)
    # Another test may have built a spec of the same key (placement aside) before.
    before = handles.registry().stats().get(spec.cache_key())
    builds, errors = (before.builds, before.errors) if before else (0, 0)
    for attempt in (1, 2):
        with pytest.raises(BuildError) as info:
            spec.get()
        message = str(info.value)
        assert f"{bad.cls.__name__}.{bad.field}: " in message, message
        assert bad.says in message, message
        assert isinstance(info.value.__cause__, SpecError), "a clear cause, not a dependency's"
        stats = handles.registry().stats()[spec.cache_key()]
        assert (stats.builds, stats.errors, stats.live) == (builds, errors + attempt, 0)
    assert spec not in handles.registry()
    assert len(handles.registry()) == 0
