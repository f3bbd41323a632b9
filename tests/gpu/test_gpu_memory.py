"""Byte accounting and the device budget on a real CUDA device (see conftest.py here)."""

from __future__ import annotations

from pathlib import Path

import pytest

import handles

pytestmark = pytest.mark.gpu

WIDTH, LAYERS = 1024, 2  # 8 MiB of float32 weights and 8 KiB of biases per model
MODEL_BYTES = LAYERS * (WIDTH * WIDTH + WIDTH) * 4


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tm(torch):
    from support import tiny_models

    return tiny_models


@pytest.fixture
def specs(tm, tmp_path: Path):
    """Three different models of MODEL_BYTES each, on cuda:0."""
    shape = {"width": WIDTH, "layers": LAYERS}
    return [
        handles.TorchModelSpec(
            factory="square-stack",
            kwargs=shape,
            weights=str(tm.save_square_stack(tmp_path / f"{i}.safetensors", seed=i, **shape)),
            device="cuda:0",
        )
        for i in range(3)
    ]


def allocated(torch) -> int:
    torch.cuda.synchronize(0)
    return int(torch.cuda.memory_allocated(0))


def test_a_cuda_model_reports_device_bytes_not_host_bytes(torch, specs):
    torch.cuda.init()
    before = allocated(torch)
    model = specs[0].get()
    assert specs[0].nbytes(model) == {"cuda:0": MODEL_BYTES}
    stats = handles.registry().stats()[specs[0].cache_key()]
    assert (stats.nbytes, stats.device_nbytes) == (0, {"cuda:0": MODEL_BYTES})
    assert allocated(torch) - before == MODEL_BYTES  # sizes are multiples of 512 bytes


def test_the_device_budget_retires_models_by_bytes_and_frees_them(torch, specs):
    torch.cuda.init()
    torch.cuda.empty_cache()
    before = allocated(torch)
    reg = handles.registry()
    reg.max_device_bytes = {"cuda:0": int(2.5 * MODEL_BYTES)}
    try:
        for spec in specs:
            with torch.inference_mode():
                spec.get()(torch.ones(1, WIDTH, device="cuda:0"))  # used, not held
        stats = reg.stats()
        live = [stats[s.cache_key()].live if s.cache_key() in stats else 0 for s in specs]
        assert live == [0, 1, 1], "the least recently used model went to make room"
        used = sum(s.device_nbytes.get("cuda:0", 0) for s in stats.values())
        assert used == 2 * MODEL_BYTES <= reg.max_device_bytes["cuda:0"]
        # The retired model was torn down (nobody held it): its memory is back.
        assert allocated(torch) - before == 2 * MODEL_BYTES
    finally:
        reg.max_device_bytes = {}
    reg.close()
    assert allocated(torch) == before
