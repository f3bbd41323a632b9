"""bench/report.py's exit status, with small stand-in benchmarks instead of the real ones.

A copy of report.py runs in a temporary project whose bench/ holds scripts that
write results as the real ones do (a goal met, a goal missed), fail, or write
nothing. A `--quick` run checks that the scripts work: it exits 0 when every one
ran, whatever its too-few rounds say of the goals; a full run fails on a missed goal.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPORT = Path(__file__).resolve().parent.parent / "bench" / "report.py"

WRITES_RESULTS = """
import json, sys
path = sys.argv[sys.argv.index("--json") + 1]
quick = "--quick" in sys.argv
results = {{
    "title": "{name}",
    "ratios": {{"speed": {ratio}}},
    "goals": {{"speed": ">= 1.0"}},
    "met": {{"speed": {ratio} >= 1.0}},
    "mode": "quick" if quick else "full",
}}
open(path, "w").write(json.dumps(results))
"""

SCRIPTS = {
    "fast": WRITES_RESULTS.format(name="fast", ratio=2.0),
    "slow": WRITES_RESULTS.format(name="slow", ratio=0.5),
    "crash": "raise SystemExit(3)",
    "silent": "print('forgot to write --json')",
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    bench = tmp_path / "bench"
    bench.mkdir()
    shutil.copy(REPORT, bench / "report.py")
    for name, body in SCRIPTS.items():
        (bench / f"bench_{name}.py").write_text(body)
    return tmp_path


def report(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "bench/report.py", *args],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("only", "quick", "status"),
    [
        (["fast"], False, 0),
        (["fast"], True, 0),
        (["fast", "slow"], False, 1),  # a full run fails on a missed goal
        (["fast", "slow"], True, 0),  # a quick one only checks that the scripts ran
        (["fast", "crash"], True, 1),
        (["fast", "crash"], False, 1),
        (["fast", "silent"], True, 1),
    ],
)
def test_exit_status(project, only, quick, status):
    out = report(project, "--only", *only, *(["--quick"] if quick else []))
    assert out.returncode == status, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    data = json.loads((project / "bench" / "out" / "benchmarks.json").read_text())
    # A failing script does not stop the others: their results are in the report.
    assert set(data) == set(only) - {"crash", "silent"}
    assert all(r["mode"] == ("quick" if quick else "full") for r in data.values())
    if "slow" in only:
        assert "MISSED slow: speed = 0.50 (goal >= 1.0)" in out.stdout
    for name in {"crash", "silent"} & set(only):
        assert f"FAILED {name}:" in out.stdout


def test_a_partial_run_is_judged_on_what_it_ran(project):
    # The report keeps the results of benchmarks not run now; their goals were judged
    # by the run that made them, so a later partial run does not fail on them.
    assert report(project, "--only", "slow").returncode == 1
    later = report(project, "--only", "fast")
    assert later.returncode == 0, later.stdout + later.stderr
    data = json.loads((project / "bench" / "out" / "benchmarks.json").read_text())
    assert set(data) == {"fast", "slow"}


def test_exit_status_table():
    spec = importlib.util.spec_from_file_location("bench_report", REPORT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    status = module.exit_status
    assert status([], [], quick=False) == 0
    assert status([], [], quick=True) == 0
    assert status([], ["core: x"], quick=False) == 1
    assert status([], ["core: x"], quick=True) == 0
    assert status(["core: exit status 1"], [], quick=True) == 1
    assert status(["core: exit status 1"], [], quick=False) == 1
