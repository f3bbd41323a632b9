"""Atomic local writes (issue 9 item 5): the temp file never has a wider mode than the target
(or than the umask allows, for a new target), is removed when the write fails, and what
killed writers leave is removed by the next write of the same target, never a live
writer's. Writers are real processes, killed with SIGKILL.
"""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from handles import FileSpec
from handles.specs._atomic import _temp_prefix, remove_leftovers, temp_name_for

pytest.importorskip("fsspec")
pytestmark = pytest.mark.skipif(os.name != "posix", reason="modes, SIGKILL and flock are POSIX")

KILLS = 30

# Writes `chunks` x 64 KiB through FileSpec, printing "writing" after the first;
# with "hold", waits for a line on stdin before finishing (a live writer).
WRITER = """
import sys
from handles import FileSpec
path, fill, chunks, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "hold"
with FileSpec(url=path, mode="wb").open() as f:
    for i in range(chunks):
        f.write(bytes([fill]) * 65536)
        if i == 0:
            f.flush()
            print("writing", flush=True)
    if hold:
        sys.stdin.readline()
print("done", flush=True)
"""


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def writer(path: Path, env: dict[str, str], fill: int, *, hold: bool) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(fill), "64", "hold" if hold else "go"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def write(path: Path, data: bytes) -> None:
    with FileSpec(url=str(path), mode="wb").open() as f:
        f.write(data)


@pytest.mark.parametrize("target_mode", [0o600, 0o640, 0o664])
def test_the_temp_file_has_the_targets_mode_from_the_start(tmp_path, target_mode):
    target = tmp_path / "private.txt"
    target.write_text("old")
    target.chmod(target_mode)
    with umask(0o022), FileSpec(url=str(target), mode="w").open() as f:
        (temp,) = temps(tmp_path)
        assert mode_of(temp) == target_mode, "before a byte is written"
        f.write("new secret")
    assert mode_of(target) == target_mode
    assert target.read_text() == "new secret"
    assert temps(tmp_path) == []


@pytest.mark.parametrize(("mask", "expected"), [(0o077, 0o600), (0o022, 0o644), (0o027, 0o640)])
def test_a_new_target_gets_what_the_umask_allows(tmp_path, mask, expected):
    target = tmp_path / "new.txt"
    with umask(mask), FileSpec(url=str(target), mode="w").open() as f:
        (temp,) = temps(tmp_path)
        assert mode_of(temp) == expected
        f.write("x")
    assert mode_of(target) == expected


def fail_midway(target: Path) -> None:
    with FileSpec(url=str(target), mode="wb").open() as f:
        f.write(b"partial")
        raise RuntimeError("midway")


def test_a_failed_write_removes_its_temp_and_keeps_the_target(tmp_path):
    target = tmp_path / "kept.bin"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="midway"):
        fail_midway(target)
    assert target.read_bytes() == b"previous"
    assert temps(tmp_path) == []


def test_a_long_target_name_gets_a_temp_name_that_fits(tmp_path):
    target = tmp_path / ("n" * 250)
    write(target, b"long name")
    assert target.read_bytes() == b"long name"
    assert len(Path(temp_name_for(str(target))).name.encode()) < 255


def test_leftovers_of_killed_writers_go_with_the_next_write(tmp_path, subprocess_env):
    target = tmp_path / "data.bin"
    target.write_bytes(b"\0" * 65536)
    rng = random.Random(9)  # kills land at random moments, some before the first byte
    most = 0
    for round_ in range(KILLS):
        child = writer(target, subprocess_env, fill=round_ + 1, hold=True)
        if round_ % 2:
            time.sleep(rng.uniform(0.0, 0.4))
        else:
            assert child.stdout is not None
            assert child.stdout.readline() == "writing\n", child.stderr
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL
        # Each writer removed what the one before it left: at most the latest remains.
        most = max(most, len(temps(tmp_path)))
    assert most <= 1
    assert target.read_bytes() == b"\0" * 65536, "every kill left the old content"
    write(target, b"after the kills")
    assert temps(tmp_path) == []
    assert target.read_bytes() == b"after the kills"
    print(f"\n{KILLS} SIGKILLed writers, at most {most} leftover at a time, 0 after the next write")


def test_a_live_writers_temp_file_is_never_removed(tmp_path, subprocess_env):
    target = tmp_path / "shared.bin"
    live = writer(target, subprocess_env, fill=7, hold=True)
    try:
        assert live.stdout is not None
        assert live.stdout.readline() == "writing\n"
        (theirs,) = temps(tmp_path)
        write(target, b"mine")  # cleans leftovers of the same target: not a live one
        assert remove_leftovers(str(target)) == []
        assert theirs.exists()
        out, err = live.communicate("go\n", timeout=60)
    finally:
        if live.poll() is None:
            live.kill()
    assert live.returncode == 0, err
    assert out.endswith("done\n")
    assert target.read_bytes() == bytes([7]) * 64 * 65536, "the live writer's rename won"
    assert temps(tmp_path) == []


def test_a_leftover_from_a_dead_process_of_another_target_is_left_alone(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    leftover = tmp_path / f"{_temp_prefix(a.name)}{int(dead.stdout)}.0123456789ab.tmp"
    leftover.write_bytes(b"x")
    write(b, b"b")
    assert leftover.exists(), "b's write leaves a's temp files alone"
    write(a, b"a")
    assert not leftover.exists()
