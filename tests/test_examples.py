"""Every script in examples/ runs to the end and exits 0.

quickstart.py and prefect_specs.py (the README's demos) are run by test_docs.py.

Most examples start a Prefect server or worker processes, or load models, and
take from a few seconds to about a minute each on this project's 2-core
machines: they are marked slow and run here only with HANDLES_RUN_EXAMPLES=1,
because `nox -s examples` runs every script anyway. The fast ones run always.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_BY_TEST_DOCS = {"quickstart.py", "prefect_specs.py"}
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if p.name not in RUN_BY_TEST_DOCS)

# Measured under 2 s each; a script not listed here is treated as slow, so a new
# heavy example can never lengthen CI by accident.
FAST = {"data_file.py", "data_sql.py"}
RUN_SLOW = os.environ.get("HANDLES_RUN_EXAMPLES") == "1"
SKIP_SLOW = "run by nox -s examples (set HANDLES_RUN_EXAMPLES=1 to run it here)"


def cases() -> list[object]:
    slow = [pytest.mark.slow, pytest.mark.skipif(not RUN_SLOW, reason=SKIP_SLOW)]
    return [
        pytest.param(script, id=script.name, marks=[] if script.name in FAST else slow)
        for script in EXAMPLES
    ]


def run_script(script: Path, cwd: Path, timeout: float) -> tuple[int, str]:
    """Run `script` in a process group of its own; on timeout, stop the whole group."""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # servers and workers it starts go in its group
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)  # lets the script stop what it started
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        pytest.fail(f"{script.name} ran past {timeout} s:\n{output[-4000:]}")
    return process.returncode, output


@pytest.mark.parametrize("script", cases())
def test_example_runs(script, tmp_path):
    # Under pytest's own 300 s limit, so the group is stopped here, not abandoned.
    timeout = 60 if script.name in FAST else 270
    returncode, output = run_script(script, tmp_path, timeout)
    assert returncode == 0, f"{script.name} exited {returncode}:\n{output[-4000:]}"


def test_fast_examples_exist():
    assert not FAST - {p.name for p in EXAMPLES}, "FAST names a script that is gone"
