"""Malformed torch and hf-pipeline specs: each fails with a message naming class and field,
at construction (SpecError) or at the first get() (BuildError), and nothing is cached.

The table has the shape every kind shares (tests/support/bad_input.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it
pytest.importorskip("torch")
pytest.importorskip("safetensors")

import torch

from handles import HFPipelineSpec, TorchModelSpec
from handles.specs.torch import model_factory
from support import tiny_models as tm
from support.bad_input import Bad, check, params

CUDA = torch.cuda.is_available()


@model_factory("returns-a-number")
def returns_a_number() -> int:
    return 42


def no_cuda() -> None:
    if CUDA:
        pytest.skip("this machine has CUDA; tests/gpu checks indexes past the last GPU")


def weights(tmp: Path, **kwargs: Any) -> str:
    return str(tm.save_safetensors(tmp / "w.safetensors", **kwargs))


def hf_model(tmp: Path) -> str:
    return str(tm.save_tiny_hf(tmp / "model"))


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


MLP = {"factory": "tiny-mlp"}
TEXT = {"task": "text-classification"}

CASES = [
    # -- at construction: the spec's shape ------------------------------------------
    Bad("unregistered factory", TorchModelSpec,
        lambda t: TorchModelSpec(factory="resnet-huge"),
        "factory", "construct", "registered factories: "),
    Bad("code path as factory", TorchModelSpec,
        lambda t: TorchModelSpec(factory="os:system"),
        "factory", "construct", "no model factory by that name"),
    Bad("neither factory nor archive", TorchModelSpec, lambda t: TorchModelSpec(),
        "factory", "construct", "exactly one of factory="),
    Bad("both factory and archive", TorchModelSpec,
        lambda t: TorchModelSpec(**MLP, archive="m.pt2"),
        "archive", "construct", "exactly one of factory="),
    Bad("weights with an archive", TorchModelSpec,
        lambda t: TorchModelSpec(archive="m.pt2", weights="w.st"),
        "weights", "construct", "goes with factory="),
    Bad("kwarg the factory lacks", TorchModelSpec,
        lambda t: TorchModelSpec(**MLP, kwargs={"hiden": 3}),
        "kwargs", "construct", "unexpected keyword argument 'hiden'"),
    Bad("kwargs not JSON", TorchModelSpec,
        lambda t: TorchModelSpec(**MLP, kwargs={"act": object()}),
        "kwargs.act", "construct", "JSON"),
    Bad("NaN in kwargs", TorchModelSpec,
        lambda t: TorchModelSpec(**MLP, kwargs={"hidden": float("nan")}),
        "kwargs", "construct", "NaN"),
    Bad("pickle weights without opt-in", TorchModelSpec,
        lambda t: TorchModelSpec(**MLP, weights="m.pth"),
        "weights", "construct", "allow_pickle_weights=True"),
    Bad("invalid device", TorchModelSpec, lambda t: TorchModelSpec(**MLP, device="gpu0"),
        "device", "construct", "device: is not a device"),
    Bad("negative cuda index", TorchModelSpec, lambda t: TorchModelSpec(**MLP, device="cuda:-1"),
        "device", "construct", "is not a device"),
    Bad("dtype typo", TorchModelSpec, lambda t: TorchModelSpec(**MLP, dtype="flaot16"),
        "dtype", "construct", "did you mean 'float16'"),
    Bad("dtype alias", TorchModelSpec, lambda t: TorchModelSpec(**MLP, dtype="fp16"),
        "dtype", "construct", "did you mean 'float16'"),
    Bad("hf empty task", HFPipelineSpec, lambda t: HFPipelineSpec(task=" ", model="m"),
        "task", "construct", "must not be empty"),
    Bad("hf dtype typo", HFPipelineSpec,
        lambda t: HFPipelineSpec(**TEXT, model="m", dtype="bfloat61"),
        "dtype", "construct", "did you mean 'bfloat16'"),
    Bad("hf invalid device", HFPipelineSpec,
        lambda t: HFPipelineSpec(**TEXT, model="m", device="cuda0"),
        "device", "construct", "is not a device"),
    Bad("hf remote code via kwargs", HFPipelineSpec,
        lambda t: HFPipelineSpec(**TEXT, model="m", pipeline_kwargs={"trust_remote_code": True}),
        "pipeline_kwargs", "construct", "own field trust_remote_code="),
    Bad("hf device via kwargs", HFPipelineSpec,
        lambda t: HFPipelineSpec(**TEXT, model="m", pipeline_kwargs={"device_map": "auto"}),
        "pipeline_kwargs", "construct", "own field device="),
    # -- at the first get(): what only the files or the machine can tell ---------------
    Bad("weights of the wrong shape", TorchModelSpec,
        lambda t: TorchModelSpec(**MLP, weights=weights(t, hidden=5)),
        "weights", "build", "size mismatch for fc1.weight"),
    Bad("missing weights file", TorchModelSpec,
        lambda t: TorchModelSpec(**MLP, weights=str(t / "absent.safetensors")),
        "weights", "build", "no such file"),
    Bad("corrupt weights file", TorchModelSpec,
        lambda t: TorchModelSpec(**MLP, weights=write(t / "w.safetensors", b"not weights")),
        "weights", "build", "neither a safetensors file nor a torch.save checkpoint"),
    Bad("pickle content under a safetensors name", TorchModelSpec,
        lambda t: TorchModelSpec(**MLP, weights=str(tm.save_pickle(t / "w.safetensors"))),
        "weights", "build", "allow_pickle_weights=True"),
    Bad("checkpoint that is not a state dict", TorchModelSpec,
        lambda t: TorchModelSpec(**MLP, allow_pickle_weights=True,
                                 weights=_saved(t / "w.pt", [torch.zeros(2)])),
        "weights", "build", "not a state dict"),
    Bad("factory returning no module", TorchModelSpec,
        lambda t: TorchModelSpec(factory="returns-a-number"),
        "factory", "build", "returned int, not a torch.nn.Module"),
    Bad("checkpoint passed as archive", TorchModelSpec,
        lambda t: TorchModelSpec(archive=str(tm.save_pickle(t / "m.pt"))),
        "archive", "build", "looks like a torch.save checkpoint"),
    Bad("missing archive", TorchModelSpec,
        lambda t: TorchModelSpec(archive=str(t / "m.pt2")), "archive", "build", "no such file"),
    Bad("cuda index past the last GPU", TorchModelSpec,
        lambda t: TorchModelSpec(**MLP, device="cuda:99"), "device", "build", "cuda:99",
        needs=no_cuda),
    Bad("hf unknown task", HFPipelineSpec,
        lambda t: HFPipelineSpec(task="sentiment-analyzer", model=hf_model(t)),
        "task", "build", "known tasks: "),
    Bad("hf model folder without config", HFPipelineSpec,
        lambda t: HFPipelineSpec(**TEXT, model=_without_config(t)),
        "model", "build", "no config.json"),
    Bad("hf model folder that does not exist", HFPipelineSpec,
        lambda t: HFPipelineSpec(**TEXT, model=str(t / "nowhere")),
        "model", "build", "no such directory"),
    Bad("hf model path is a file", HFPipelineSpec,
        lambda t: HFPipelineSpec(**TEXT, model=write(t / "model.bin", b"x")),
        "model", "build", "is a file"),
    Bad("hf tokenizer folder that does not exist", HFPipelineSpec,
        lambda t: HFPipelineSpec(**TEXT, model=hf_model(t), tokenizer=str(t / "tok")),
        "tokenizer", "build", "no such directory"),
    Bad("hf cuda without a GPU", HFPipelineSpec,
        lambda t: HFPipelineSpec(**TEXT, model=hf_model(t), device="cuda"),
        "device", "build", "no CUDA device", needs=no_cuda),
]  # fmt: skip


def _saved(path: Path, obj: Any) -> str:
    torch.save(obj, path)
    return str(path)


def _without_config(tmp: Path) -> str:
    folder = Path(hf_model(tmp))
    (folder / "config.json").unlink()
    return str(folder)


def test_at_least_fifteen_malformed_model_specs():
    assert len(CASES) >= 15


@pytest.mark.parametrize("case", params(CASES))
def test_malformed_model_spec(case: Bad, tmp_path: Path) -> None:
    check(case, tmp_path)
