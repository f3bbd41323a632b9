from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import handles

TESTS_DIR = Path(__file__).parent


@pytest.fixture(autouse=True)
def _fresh_registry():
    """Every test starts and ends with nothing live in this process's registry."""
    handles.registry().close()
    yield
    handles.registry().close()


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for child Python processes that import the tests' support kinds."""
    env = dict(os.environ)
    paths = [str(TESTS_DIR), *[p for p in sys.path if p]]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env
