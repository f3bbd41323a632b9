"""Models at scale: what the model kinds report as their memory, weights shared by mapping,
writes to mapped weights, and the registry's byte budget with real models.

Memory facts, not timings: the PSS-based copies figure is asserted. Linux only where
/proc is read (the mapping and PSS tests skip elsewhere, saying so).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it
pytest.importorskip("torch")
pytest.importorskip("safetensors")

import torch
from safetensors.torch import load_file, save_file

import handles
from handles import HFPipelineSpec, TorchModelSpec
from support import tiny_models as tm

LINUX = pytest.mark.skipif(
    not Path("/proc/self/smaps_rollup").exists(), reason="reads /proc (Linux)"
)


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.nbytes for t in [*module.parameters(), *module.buffers()])


def mapped_from(path: Path, tensor: torch.Tensor) -> bool:
    """Whether `tensor`'s data lies in a mapping of the file `path` in this process."""
    where = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[5] == str(path.resolve()):
            low, high = (int(x, 16) for x in parts[0].split("-"))
            if low <= where < high:
                return True
    return False


# -- accounting ---------------------------------------------------------------


def test_torch_nbytes_are_the_parameters_and_buffers_on_their_device(tmp_path):
    weights = tm.save_safetensors(tmp_path / "w.safetensors", hidden=64)
    spec = TorchModelSpec(factory="tiny-mlp", kwargs={"hidden": 64}, weights=weights, device="cpu")
    model = spec.get()
    expected = module_bytes(model)
    assert expected == 4 * (8 * 64 + 64 + 64 * 2 + 2)
    assert spec.nbytes(model) == {"cpu": expected}
    stats = handles.registry().stats()[spec.cache_key()]
    assert (stats.nbytes, stats.device_nbytes) == (expected, {})


def test_tied_weights_count_once_and_stay_tied(tmp_path):
    weights = tm.save_tied_lm(tmp_path / "tied.safetensors")
    spec = TorchModelSpec(factory="tied-lm", weights=weights, strict=False, device="cpu")
    model = spec.get()
    assert model.out.weight is model.embed.weight, "loading must not untie them"
    assert spec.nbytes(model) == {"cpu": 50 * 16 * 4 + 16 * 4}  # the embedding once, the buffer
    torch.manual_seed(0)
    original = tm.TiedLM().eval()
    ids = torch.arange(10)
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), original(ids))


def test_a_storage_shared_by_views_counts_once():
    from handles.specs._device import tensors_nbytes

    fused = torch.zeros(6, 4)
    assert tensors_nbytes([fused[:3], fused[3:], fused]) == {"cpu": 96}
    assert tensors_nbytes([torch.empty(3, device="meta")]) == {}


def test_hf_nbytes_are_the_models_parameters_and_buffers(tmp_path):
    pytest.importorskip("transformers")
    spec = HFPipelineSpec(
        task="text-classification", model=tm.save_tiny_hf(tmp_path / "hf"), device="cpu"
    )
    pipe = spec.get()
    counted = spec.nbytes(pipe)
    assert set(counted) == {"cpu"}
    # Tied or not, never more than the sum over names, never less than the parameters.
    distinct = {t.data_ptr(): t.nbytes for t in pipe.model.parameters()}
    assert sum(distinct.values()) <= counted["cpu"] <= module_bytes(pipe.model)
    assert handles.registry().stats()[spec.cache_key()].nbytes == counted["cpu"]


def test_spacy_nbytes_count_vectors_and_component_parameters(tmp_path):
    spacy = pytest.importorskip("spacy")
    from handles import SpacySpec

    nlp = spacy.blank("en")
    nlp.vocab.vectors = spacy.vectors.Vectors(shape=(100, 32))
    nlp.to_disk(tmp_path / "vectors")
    only_vectors = SpacySpec(path=str(tmp_path / "vectors"))
    assert only_vectors.nbytes(only_vectors.get()) == {"cpu": 100 * 32 * 4}

    textcat = nlp.add_pipe("textcat")
    textcat.add_label("POS")
    textcat.add_label("NEG")
    nlp.initialize()
    params = sum(
        node.get_param(name).nbytes
        for node in textcat.model.walk()
        for name in node.param_names
        if node.has_param(name)
    )
    assert params > 0
    nlp.to_disk(tmp_path / "textcat")
    with_textcat = SpacySpec(path=str(tmp_path / "textcat"))
    assert with_textcat.nbytes(with_textcat.get()) == {"cpu": 100 * 32 * 4 + params}


def test_the_byte_budget_retires_least_recently_used_models(tmp_path):
    specs = [
        TorchModelSpec(
            factory="square-stack",
            kwargs={"width": 256, "layers": 2},
            weights=tm.save_square_stack(
                tmp_path / f"{i}.safetensors", seed=i, width=256, layers=2
            ),
            device="cpu",
        )
        for i in range(3)
    ]
    size = 2 * (256 * 256 + 256) * 4
    reg = handles.registry()
    reg.max_bytes = int(2.5 * size)
    try:
        for spec in specs:
            spec.get()
        stats = reg.stats()
        live = {i: stats[s.cache_key()].live for i, s in enumerate(specs)}
        assert live == {0: 0, 1: 1, 2: 1}, "the oldest model went to make room"
        assert sum(s.nbytes for s in stats.values()) == 2 * size <= reg.max_bytes
    finally:
        reg.max_bytes = None


# -- shared weights -----------------------------------------------------------


@LINUX
def test_cpu_weights_stay_in_the_files_mapping(tmp_path):
    weights = tm.save_safetensors(tmp_path / "w.safetensors", hidden=64)
    model = TorchModelSpec(factory="tiny-mlp", kwargs={"hidden": 64}, weights=weights).get()
    if next(model.parameters()).is_cuda:
        pytest.skip("on CUDA the weights are copied to the device")
    assert all(mapped_from(weights, p) for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters()), "as the factory made them"


@LINUX
def test_hf_cpu_weights_stay_in_the_files_mapping(tmp_path):
    transformers = pytest.importorskip("transformers")
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("mapped weights are checked with transformers 5 only")
    folder = tm.save_tiny_hf(tmp_path / "hf")
    pipe = HFPipelineSpec(task="text-classification", model=folder, device="cpu").get()
    assert all(mapped_from(folder / "model.safetensors", p) for p in pipe.model.parameters())


@LINUX
def test_a_dtype_conversion_copies(tmp_path):
    weights = tm.save_safetensors(tmp_path / "w.safetensors", hidden=64)
    spec = TorchModelSpec(
        factory="tiny-mlp", kwargs={"hidden": 64}, weights=weights, dtype="float64", device="cpu"
    )
    model = spec.get()
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert not any(mapped_from(weights, p) for p in model.parameters())


def test_a_file_in_another_dtype_is_converted_to_the_modules(tmp_path):
    state = {k: v.half() for k, v in tm.seeded_mlp().state_dict().items()}
    save_file(state, str(tmp_path / "half.safetensors"))
    model = TorchModelSpec(
        factory="tiny-mlp", weights=tmp_path / "half.safetensors", device="cpu"
    ).get()
    assert {p.dtype for p in model.parameters()} == {torch.float32}, "as load_state_dict copies"
    torch.testing.assert_close(model.fc1.weight, state["fc1.weight"].float())


def test_writes_change_this_processs_weights_never_the_file(tmp_path):
    weights = tm.save_safetensors(tmp_path / "w.safetensors")
    before = weights.read_bytes()
    spec = TorchModelSpec(factory="tiny-mlp", weights=weights, device="cpu")
    model = spec.get()
    with torch.no_grad():
        model.fc1.weight.add_(1.0)  # copy-on-write: allowed, private to this process
    expected = load_file(str(weights))["fc1.weight"] + 1.0
    torch.testing.assert_close(model.fc1.weight.detach(), expected)
    del model
    handles.registry().close()
    assert weights.read_bytes() == before
    fresh = spec.get()
    torch.testing.assert_close(fresh.fc1.weight.detach(), load_file(str(weights))["fc1.weight"])


@pytest.mark.slow
@LINUX
@pytest.mark.skipif(sys.platform != "linux", reason="PSS from /proc")
def test_two_spawn_workers_share_one_copy_of_the_weights(tmp_path):
    weights = tm.save_square_stack(tmp_path / "w.safetensors")  # 64 MiB
    spec = TorchModelSpec(factory="square-stack", weights=weights, device="cpu")
    copies = tm.weight_copies(
        functools.partial(tm.hold_spec, spec), weights.stat().st_size, workers=2
    )
    print(f"\n2 spawn workers hold {copies:.2f} copies of the weights")
    assert copies <= 1.3
