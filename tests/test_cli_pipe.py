"""The command line writing into a pipe whose reader has gone (`handles schema sqlite | head -3`).

Each command runs with its standard output on a real pipe whose read end is already
closed, so its first write fails with EPIPE every time (no race with a reader that
might still be reading). It must end quietly with status 141, as a shell reports for
a command ended by SIGPIPE, whether Python buffers standard output or not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from handles import SqliteSpec

SIGPIPE_STATUS = 141


def run_into_closed_pipe(
    args: list[str], *, cwd: Path, unbuffered: bool
) -> subprocess.CompletedProcess[bytes]:
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    try:
        return subprocess.run(
            [sys.executable, "-m", "handles", *args],
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=subprocess.PIPE,
            check=False,
            cwd=cwd,
            env=env,
            timeout=120,
        )
    finally:
        os.close(write_end)


def every_command(tmp_path: Path) -> dict[str, list[str]]:
    (tmp_path / "pipe_tasks.py").write_text(
        "import threading\n"
        "def fine():\n"
        "    return {'n': 3}\n"
        "def bad():\n"
        "    return [threading.Lock()]\n"
    )
    spec_json = SqliteSpec(path=str(tmp_path / "app.db")).model_dump_json()
    return {
        "help": ["--help"],
        "schema help": ["schema", "--help"],
        "schema": ["schema", "sqlite"],
        "kinds": ["kinds"],
        "inspect": ["inspect", spec_json],
        "inspect --json": ["inspect", "--json", spec_json],
        "check, all fine": ["check", "pipe_tasks:fine"],
        "check, a problem": ["check", "pipe_tasks:bad"],
    }


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_every_command_ends_quietly_when_the_reader_has_gone(tmp_path, unbuffered):
    for name, args in every_command(tmp_path).items():
        out = run_into_closed_pipe(args, cwd=tmp_path, unbuffered=unbuffered)
        assert (name, out.returncode, out.stderr) == (name, SIGPIPE_STATUS, b"")


def test_an_open_pipe_still_gets_everything(tmp_path):
    # The same commands with a reader: the fix must not swallow normal output or status.
    for name, args in every_command(tmp_path).items():
        out = subprocess.run(
            [sys.executable, "-m", "handles", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            cwd=tmp_path,
            timeout=120,
        )
        expected = 1 if name == "check, a problem" else 0
        assert (name, out.returncode, out.stderr) == (name, expected, b"")
        assert out.stdout.strip(), name


def test_head_closes_the_pipe_early(tmp_path):
    # As users run it: a shell pipeline into head. Whether the command is still writing
    # when head leaves varies, so only quietness is asserted: never a message or traceback.
    command = f"{sys.executable} -m handles schema sqlite | head -3"
    out = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, check=False, timeout=120
    )
    assert out.returncode == 0
    assert len(out.stdout.splitlines()) == 3
    assert out.stderr == ""
