"""Contract cases for the model kinds: a torch factory with safetensors weights, a
TorchScript archive, and a transformers pipeline, all tiny and built per test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from handles.specs.hf import HFPipelineSpec
from handles.specs.torch import TorchModelSpec
from support.cases import KindCase

try:  # registers the "tiny-mlp" factory, which specs read from JSON need
    from support import tiny_models
except ModuleNotFoundError as exc:  # without torch the cases skip, saying so
    if exc.name not in ("torch", "safetensors"):
        raise
    tiny_models = None  # type: ignore[assignment]


def _torch_factory(tmp: Path) -> TorchModelSpec:
    weights = tiny_models.save_safetensors(tmp / "tiny.safetensors")
    return TorchModelSpec(factory="tiny-mlp", weights=str(weights))


def _torch_archive(tmp: Path) -> TorchModelSpec:
    return TorchModelSpec(archive=str(tiny_models.save_exported(tmp / "tiny.pt2")))


def _hf(tmp: Path) -> HFPipelineSpec:
    return HFPipelineSpec(task="text-classification", model=str(tiny_models.save_tiny_hf(tmp)))


def _hf_broken(tmp: Path) -> HFPipelineSpec:
    # A model folder whose config.json is gone: found at build, a BuildError.
    folder = tiny_models.save_tiny_hf(tmp / "no-config")
    (folder / "config.json").unlink()
    return HFPipelineSpec(task="text-classification", model=str(folder))


def _run_mlp(model: Any) -> object:
    return model(tiny_models.sample_input(1))


CASES = [
    KindCase(
        name="torch-factory",
        make=_torch_factory,
        placement_variant=lambda s: s.replace(device="cpu"),
        identity_variant=lambda s: s.replace(dtype="float64"),
        broken=lambda tmp: TorchModelSpec(factory="tiny-mlp", weights=str(tmp / "gone.st")),
        alive=_run_mlp,
        requires=("torch", "safetensors"),
        setup_modules=("support.tiny_models",),  # registers the "tiny-mlp" factory
    ),
    KindCase(
        name="torch-archive",
        make=_torch_archive,
        placement_variant=lambda s: s.replace(device="cpu"),
        identity_variant=lambda s: s.replace(dtype="float64"),
        broken=lambda tmp: TorchModelSpec(archive=str(tmp)),  # a folder, not an archive
        alive=_run_mlp,
        requires=("torch",),
    ),
    KindCase(
        name="hf-pipeline",
        make=_hf,
        placement_variant=lambda s: s.replace(device="cpu"),
        identity_variant=lambda s: s.replace(pipeline_kwargs={"top_k": 2}),
        broken=_hf_broken,
        alive=lambda pipe: pipe("a good film"),
        requires=("torch", "transformers"),
    ),
]
