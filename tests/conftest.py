from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
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


@pytest.fixture
def run_python(subprocess_env: dict[str, str]) -> Callable[[str], str]:
    """Run a script in a fresh interpreter that sees tests/; return its stdout, stripped."""

    def run(script: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", script],
            env=subprocess_env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return out.stdout.strip()

    return run
