"""GPU tests: models on CUDA, one load per spawn worker, flat VRAM, memory freed by close().

Run them with `nox -s gpu`, or on a GPU machine that has only Python, torch,
transformers, safetensors, numpy and pytest plus the core's pure dependencies
(pydantic, pydantic-core, annotated-types, typing-inspection, typing-extensions),
from the repository root:

    PYTHONPATH=src HANDLES_REQUIRE_GPU=1 HF_HUB_OFFLINE=1 python -m pytest -m gpu tests/gpu

Nothing here imports Prefect, spaCy, SQLAlchemy or fsspec. With
HANDLES_REQUIRE_GPU=1 a missing CUDA device fails the whole session (exit code
1) instead of skipping, so a GPU job cannot pass without testing anything;
without it, each GPU test skips, saying why.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports transformers


def _cuda_problem() -> str | None:
    """Why CUDA cannot be used here, or None when it can."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no CUDA device"
    return None


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("HANDLES_REQUIRE_GPU") == "1":
        problem = _cuda_problem()
        if problem is not None:
            pytest.exit(f"HANDLES_REQUIRE_GPU=1, but {problem}", returncode=1)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None:
        problem = _cuda_problem()
        if problem is not None:
            pytest.skip(f"needs a CUDA device: {problem}")
