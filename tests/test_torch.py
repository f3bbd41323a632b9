"""TorchModelSpec on CPU with tiny real modules: factories, weights, archives, devices, close."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
import weakref
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("safetensors")

import torch

import handles
from handles import BuildError, SpecError, TorchModelSpec
from handles.specs import _device
from handles.specs.torch import model_factory, registered_factories
from support import tiny_models as tm

CUDA = torch.cuda.is_available()


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return tm.save_safetensors(tmp_path / "tiny.safetensors")


def expected_output(seed: int = 0) -> torch.Tensor:
    with torch.inference_mode():
        return tm.seeded_mlp(seed).eval()(tm.sample_input())


def run(model: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model(tm.sample_input().to(next(model.parameters()).device))


def test_factory_with_safetensors_weights_gives_the_saved_model_in_eval_mode(weights):
    model = TorchModelSpec(factory="tiny-mlp", weights=weights).get()
    assert isinstance(model, tm.TinyMLP)
    assert not model.training, "eval() by default: dropout must be off"
    torch.testing.assert_close(run(model), expected_output())
    assert next(model.parameters()).device.type == ("cuda" if CUDA else "cpu")


def test_eval_mode_false_leaves_training_on(weights):
    model = TorchModelSpec(factory="tiny-mlp", weights=weights, eval_mode=False).get()
    assert model.training


def test_kwargs_reach_the_factory_and_dtype_casts(tmp_path):
    path = tm.save_safetensors(tmp_path / "w.safetensors", hidden=4)
    spec = TorchModelSpec(factory="tiny-mlp", kwargs={"hidden": 4}, weights=path, dtype="float64")
    model = spec.get()
    assert model.fc1.out_features == 4
    assert {p.dtype for p in model.parameters()} == {torch.float64}


def test_cache_key_follows_identity_not_device_or_permission(weights, tmp_path):
    spec = TorchModelSpec(factory="tiny-mlp", weights=weights)
    same = [spec.replace(device="cpu"), spec.replace(allow_pickle_weights=True)]
    assert {s.cache_key() for s in same} == {spec.cache_key()}
    moved = [
        spec.replace(kwargs={"hidden": 16}),
        spec.replace(weights=str(tmp_path / "other.safetensors")),
        spec.replace(dtype="float16"),
        spec.replace(eval_mode=False),
        spec.replace(strict=False),
    ]
    assert len({s.cache_key() for s in [spec, *moved]}) == 1 + len(moved)


def test_path_objects_are_accepted_and_dumped_as_strings(weights):
    spec = TorchModelSpec(factory="tiny-mlp", weights=weights)
    assert spec.weights == str(weights)
    assert spec == TorchModelSpec(factory="tiny-mlp", weights=str(weights))


def test_pickle_weights_load_only_with_the_opt_in(tmp_path):
    path = tm.save_pickle(tmp_path / "tiny.pt")
    with pytest.raises(SpecError, match=r"TorchModelSpec\.weights: .*allow_pickle_weights"):
        TorchModelSpec(factory="tiny-mlp", weights=path)
    model = TorchModelSpec(factory="tiny-mlp", weights=path, allow_pickle_weights=True).get()
    torch.testing.assert_close(run(model), expected_output())


class _Payload:
    """Unpickling this touches a file: proof that pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_opted_in_pickle_still_refuses_anything_but_tensors(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"fc1.weight": torch.zeros(16, 8), "payload": _Payload(marker)}, path)
    spec = TorchModelSpec(factory="tiny-mlp", weights=path, allow_pickle_weights=True)
    with pytest.raises(BuildError, match=r"weights_only=True\) refused") as info:
        spec.get()
    assert "TorchModelSpec.weights" in str(info.value)
    assert not marker.exists(), "torch.load ran code from the checkpoint"
    assert spec not in handles.registry()


@pytest.mark.parametrize("saver", ["save_torchscript", "save_exported"])
def test_archives_load_and_match_the_module(tmp_path, saver):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated
        path = getattr(tm, saver)(tmp_path / "tiny.archive")
        model = TorchModelSpec(archive=path).get()
    torch.testing.assert_close(run(model), expected_output())


def test_untrusted_json_cannot_name_code_to_import():
    text = '{"kind": "torch", "factory": "os:system", "kwargs": {"command": "touch /tmp/x"}}'
    with pytest.raises(SpecError) as info:
        handles.spec_from_json(text)
    message = str(info.value)
    assert "TorchModelSpec.factory" in message
    assert "registered factories: " in message
    assert "tiny-mlp" in message


def test_an_unpickled_spec_is_checked_again_at_build(weights):
    # Unpickling skips validation; build() looks the factory up again.
    spec = TorchModelSpec.model_construct(factory="not-registered", weights=str(weights))
    clone = pickle.loads(pickle.dumps(spec))
    with pytest.raises(BuildError, match=r"TorchModelSpec\.factory: no model factory"):
        clone.get()


def test_factory_registry_refuses_silent_replacement():
    def other() -> torch.nn.Module:
        return torch.nn.Linear(1, 1)

    with pytest.raises(ValueError, match="already registered"):
        model_factory("tiny-mlp")(other)
    model_factory("tiny-mlp")(tm.tiny_mlp)  # the same function again is fine
    assert registered_factories()["tiny-mlp"] is tm.tiny_mlp
    with pytest.raises(TypeError):
        registered_factories()["x"] = other  # type: ignore[index]
    try:
        model_factory("tiny-mlp", clobber=True)(other)
        assert registered_factories()["tiny-mlp"] is other
    finally:
        model_factory("tiny-mlp", clobber=True)(tm.tiny_mlp)


def test_close_waits_for_a_holder_then_empties_the_module(weights):
    spec = TorchModelSpec(factory="tiny-mlp", weights=weights)
    model = spec.get()
    handles.registry().close()
    # A caller still holds it: it keeps working (never torn down under a user).
    torch.testing.assert_close(run(model), expected_output())
    freed = weakref.ref(model.fc1.weight)
    del model
    handles.registry().close()  # the next safe point after the last user let go
    weight = freed()
    assert weight is None or weight.numel() == 0, "its memory is freed"
    del weight
    torch.testing.assert_close(run(spec.get()), expected_output())


def test_spawn_pool_builds_each_model_once_per_worker(tmp_path):
    specs = [
        TorchModelSpec(factory="tiny-mlp", weights=tm.save_safetensors(tmp_path / "w.st")),
        handles.HFPipelineSpec(task="text-classification", model=tm.save_tiny_hf(tmp_path / "hf")),
    ]
    results = tm.run_in_spawn_pool(specs, calls=40, workers=2)
    assert len(results) == 40
    assert len({r["pid"] for r in results}) == 2
    assert os.getpid() not in {r["pid"] for r in results}
    assert all(r["builds"] == [1, 1] for r in results), [r["builds"] for r in results]
    assert all(r["outputs"] == results[0]["outputs"] for r in results)


# -- devices ------------------------------------------------------------------


@pytest.mark.skipif(CUDA, reason="checks the CPU fallback; this machine has CUDA")
def test_auto_is_cpu_without_cuda(weights):
    model = TorchModelSpec(factory="tiny-mlp", weights=weights, device="auto").get()
    assert next(model.parameters()).device == torch.device("cpu")


def test_worker_slots_go_round_robin_over_gpus():
    assert [_device.gpu_for_slot(slot, 3) for slot in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_slots_are_exclusive_between_processes_and_freed_with_them(tmp_path):
    claim = (
        "import sys; from pathlib import Path\n"
        "from handles.specs._device import claim_slot\n"
        "print(claim_slot(Path(sys.argv[1]))[0])\n"
    )

    def slot_of_a_new_process() -> int:
        done = subprocess.run(
            [sys.executable, "-c", claim, str(tmp_path)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return int(done.stdout)

    mine, fd = _device.claim_slot(tmp_path)
    assert mine == 0
    try:
        assert slot_of_a_new_process() == 1, "slot 0 is held by this process"
        assert slot_of_a_new_process() == 1, "the last process ended, so slot 1 is free again"
    finally:
        assert fd is not None
        os.close(fd)
    assert slot_of_a_new_process() == 0
