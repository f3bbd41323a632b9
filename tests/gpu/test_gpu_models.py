"""Model kinds on a real CUDA device (see conftest.py here for how to run these)."""

from __future__ import annotations

from pathlib import Path

import pytest

import handles
from handles import BuildError

pytestmark = pytest.mark.gpu

CALLS = 1000


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tm(torch):
    from support import tiny_models

    return tiny_models


@pytest.fixture
def mlp_spec(tm, tmp_path: Path):
    """A model big enough to see in memory counters (about 1 MB of float32 weights)."""
    kwargs = {"hidden": 32768}
    weights = tm.save_safetensors(tmp_path / "mlp.safetensors", **kwargs)
    return handles.TorchModelSpec(factory="tiny-mlp", kwargs=kwargs, weights=str(weights))


@pytest.fixture
def hf_spec(tm, tmp_path: Path):
    pytest.importorskip("transformers")
    folder = tm.save_tiny_hf(tmp_path / "hf", hidden=64)
    return handles.HFPipelineSpec(task="text-classification", model=str(folder))


def settled(torch) -> tuple[int, int]:
    """(allocated, reserved) bytes on cuda:0 once queued work is done."""
    torch.cuda.synchronize(0)
    return torch.cuda.memory_allocated(0), torch.cuda.memory_reserved(0)


def test_model_lands_on_cuda(torch, mlp_spec, hf_spec):
    for device in ("auto", "cuda", "cuda:0"):
        model = mlp_spec.replace(device=device).get()
        assert {p.device.type for p in model.parameters()} == {"cuda"}, device
    pipe = hf_spec.replace(dtype="float16").get()
    assert pipe.device.type == "cuda"
    assert {p.dtype for p in pipe.model.parameters()} == {torch.float16}
    assert pipe("a good film")[0]["label"] in {"NEG", "POS"}


def test_one_load_per_process_across_two_spawn_workers(tm, mlp_spec, hf_spec):
    specs = [mlp_spec.replace(device="cuda"), hf_spec.replace(device="cuda")]
    results = tm.run_in_spawn_pool(specs, calls=40, workers=2)
    assert len({r["pid"] for r in results}) == 2
    assert all(r["builds"] == [1, 1] for r in results), [r["builds"] for r in results]
    assert all(d.startswith("cuda") for r in results for d in r["devices"])


def test_vram_stays_flat_over_1000_calls(torch, tm, mlp_spec, hf_spec):
    # cuda:0 exactly: the counters below are per device.
    model_spec, pipe_spec = mlp_spec.replace(device="cuda:0"), hf_spec.replace(device="cuda:0")
    x = tm.sample_input(8).to("cuda:0")

    def call_both() -> None:
        with torch.inference_mode():
            model_spec.get()(x)
        pipe_spec.get()("a good film")

    for _ in range(10):  # build, then warm up kernels and the allocator's blocks
        call_both()
    before = settled(torch)
    for i in range(CALLS):
        call_both()
        if i % 100 == 0:  # a spec arriving from another process: new instance, same object
            model_spec = type(model_spec).model_validate_json(model_spec.model_dump_json())
    after = settled(torch)
    print(f"\nallocated/reserved before {before}, after {CALLS} calls {after}")
    assert after == before
    stats = handles.registry().stats()
    assert stats[model_spec.cache_key()].builds == 1
    assert stats[model_spec.cache_key()].hits >= CALLS


def test_close_frees_gpu_memory_once_the_models_are_let_go(torch, mlp_spec, hf_spec):
    torch.cuda.init()
    torch.cuda.empty_cache()
    base_allocated, base_reserved = settled(torch)
    model = mlp_spec.replace(device="cuda:0").get()
    pipe = hf_spec.replace(device="cuda:0").get()
    loaded_allocated, _ = settled(torch)
    assert loaded_allocated > base_allocated
    handles.registry().close()
    # Still held here: never torn down under a user, so still on the device.
    assert settled(torch)[0] == loaded_allocated
    params = [*model.parameters(), *pipe.model.parameters()]
    del model, pipe
    handles.registry().close()  # the next safe point after the last user let go
    allocated, reserved = settled(torch)
    print(f"\nallocated: base {base_allocated}, loaded {loaded_allocated}, closed {allocated}")
    assert allocated == base_allocated
    assert reserved <= base_reserved, "close() returns cached blocks (empty_cache)"
    assert all(p.numel() == 0 for p in params)


def test_cuda_index_past_the_last_gpu_is_a_build_error(torch, mlp_spec):
    count = torch.cuda.device_count()
    spec = mlp_spec.replace(device=f"cuda:{count}")
    with pytest.raises(BuildError, match=rf"TorchModelSpec\.device: .*has {count} CUDA device"):
        spec.get()
    assert spec not in handles.registry()


def test_workers_spread_over_gpus(torch, tm, mlp_spec):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two or more GPUs to see the spreading policy")
    results = tm.run_in_spawn_pool([mlp_spec.replace(device="auto")], calls=8, workers=2)
    by_pid = {r["pid"]: r["devices"][0] for r in results}
    assert len(by_pid) == 2
    assert len(set(by_pid.values())) == 2, f"both workers on one GPU: {by_pid}"
