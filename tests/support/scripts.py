"""Run a script as a user would (`python script.py`); a failure shows what it printed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# What a user's shell keeps is kept (PREFECT_* included): the examples set only
# what they need, with defaults where the user has not chosen.
SCRIPT_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1"}
SHOWN = 6000  # characters of output in a failure message: the end, where errors are


def run_script(script: Path, cwd: Path, timeout: float) -> str:
    """Run `script`; its output (stdout and stderr, interleaved), or a test failure showing it.

    The script runs in a process group of its own: on timeout the whole group
    (servers and workers it started) is stopped, not abandoned.
    """
    env = {**SCRIPT_ENV, **os.environ}
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
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
        pytest.fail(f"{script.name} ran past {timeout} s; its output ends:\n{output[-SHOWN:]}")
    if process.returncode != 0:
        pytest.fail(
            f"{script.name} exited with status {process.returncode}; its output ends:\n"
            f"{output[-SHOWN:]}"
        )
    return output
