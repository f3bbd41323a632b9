"""Run the GPU tests with this machine's own Python; bring the core's pure dependencies.

    python tests/gpu/run.py [pytest arguments]        # on the GPU machine (what nox -s gpu runs)
    python tests/gpu/run.py --download [--python 3.12] # on a machine with network, once

A GPU machine may have only Python, torch (with CUDA), transformers, safetensors,
numpy and pytest: no pydantic and no network, so no virtual environment can be
built there. `--download` fetches the core's dependencies (pydantic, pydantic-core,
annotated-types, typing-extensions, typing-inspection) as wheels for that
Python into tests/gpu/wheels/ (not tracked). On the GPU machine, where pydantic
cannot be imported, this script unpacks those wheels into a temporary folder,
puts it and src/ on PYTHONPATH, and runs `pytest -m gpu tests/gpu` with
HANDLES_REQUIRE_GPU=1 (no CUDA device fails the run) and HF_HUB_OFFLINE=1.
Standard library only; it never installs anything into the machine's Python.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELS = Path(__file__).resolve().parent / "wheels"
CORE = ("pydantic>=2.7,<3",)


def download(python: str) -> int:
    command = [
        sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--python-version",
        python, "--implementation", "cp", "--platform", "manylinux2014_x86_64",
        "--platform", "manylinux_2_17_x86_64", "--dest", str(WHEELS), *CORE,
    ]  # fmt: skip
    print(" ".join(command), flush=True)
    return subprocess.call(command)


def unpack(folder: Path) -> None:
    wheels = sorted(WHEELS.glob("*.whl"))
    if not wheels:
        sys.exit(
            "pydantic cannot be imported here and tests/gpu/wheels/ is empty: run "
            "`python tests/gpu/run.py --download --python "
            f"{sys.version_info.major}.{sys.version_info.minor}` on a machine with network "
            "and bring tests/gpu/wheels/ along"
        )
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(folder)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--download"]:
        python = argv[2] if argv[1:2] == ["--python"] and len(argv) > 2 else "3.12"
        return download(python)
    env = dict(os.environ, HANDLES_REQUIRE_GPU="1", HF_HUB_OFFLINE="1")
    paths = [str(ROOT / "src")]
    with tempfile.TemporaryDirectory(prefix="handles-gpu-deps-") as deps:
        if importlib.util.find_spec("pydantic") is None:
            unpack(Path(deps))
            paths.append(deps)
            print(f"using the core's dependencies from {WHEELS}", flush=True)
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        command = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", *argv]
        return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
