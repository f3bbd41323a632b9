"""Mutation check: break one critical line at a time and run the tests that must notice.

    python tools/mutation.py [--rev REV] [--only ID_OR_GROUP ...] [--check] [--json PATH]

Each entry of tools/mutations.toml names a module, an exact snippet of it, the
snippet's broken replacement, and the pytest selection that must fail when the
line is broken. For each entry this script writes the broken module into a
temporary copy of the project (src/, tests/ and what the tests read), never into
the checkout, and runs the selection there with PYTHONPATH pointing at the copy's
src/. A pytest plugin checks that `handles` is imported from that copy before any
test runs, so a mutant can never be "killed" or "survive" against the real tree.

Outcomes: killed (the selection failed, or ran past --timeout), survived (it
passed: a line can be broken and no test notices), error (it could not run: the
selection collected nothing, or the unbroken copy already fails it), stale (the
snippet is not in the module exactly once: update the entry). The score of a group
is killed / (killed + survived). Exit status 1 when anything survived or errs.

--rev REV copies the project as committed at REV (`git archive`), e.g. to measure
before and after a change; without it, the working tree as it is now. `--check`
only checks that every snippet is found, which is quick after editing the code.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIST = ROOT / "tools" / "mutations.toml"
# What a test run reads besides src/: its tests, pytest's settings, and the files
# some tests open (docs pages, examples, benchmarks).
COPIED = ("src", "tests", "pyproject.toml", "docs", "examples", "bench", "README.md")

GUARD = '''\
"""Loaded with -p: fail the run before any test if handles is not the mutated copy."""
import os
from pathlib import Path

import pytest


def pytest_sessionstart(session):
    import handles

    expected = Path(os.environ["HANDLES_MUTATION_SRC"]).resolve()
    found = Path(handles.__file__).resolve()
    if not found.is_relative_to(expected):
        raise pytest.UsageError(f"handles imported from {found}, not from the copy {expected}")
'''


@dataclass
class Mutation:
    id: str
    group: str
    module: str
    find: str
    replace: str
    tests: list[str]
    why: str = ""
    line: int = 0
    outcome: str = ""
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Copy:
    root: Path
    originals: dict[str, str] = field(default_factory=dict)

    def text(self, module: str) -> str:
        if module not in self.originals:
            self.originals[module] = (self.root / module).read_text(encoding="utf-8")
        return self.originals[module]

    def write(self, module: str, text: str) -> None:
        (self.root / module).write_text(text, encoding="utf-8")

    def restore(self, module: str) -> None:
        self.write(module, self.originals[module])


def load(path: Path) -> list[Mutation]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    mutations = [Mutation(**entry) for entry in data["mutation"]]
    ids = [m.id for m in mutations]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        sys.exit(f"{path}: ids used twice: {', '.join(duplicates)}")
    return mutations


def make_copy(target: Path, rev: str | None) -> Copy:
    if rev is not None:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", rev, *COPIED],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    else:
        for name in COPIED:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(
                    source, target / name, ignore=shutil.ignore_patterns("__pycache__", "out")
                )
            elif source.exists():
                shutil.copy2(source, target / name)
    guard = target / ".mutation"
    guard.mkdir()
    (guard / "handles_mutation_guard.py").write_text(GUARD, encoding="utf-8")
    return Copy(target)


def locate(copy: Copy, mutation: Mutation) -> bool:
    """Is the snippet in its module exactly once? Sets its line number; marks it stale if not."""
    try:
        text = copy.text(mutation.module)
    except FileNotFoundError:
        mutation.outcome, mutation.detail = "stale", f"no module {mutation.module}"
        return False
    count = text.count(mutation.find)
    if count != 1:
        mutation.outcome = "stale"
        mutation.detail = f"snippet found {count} times in {mutation.module} (must be once)"
        return False
    mutation.line = text[: text.index(mutation.find)].count("\n") + 1
    return True


def run_tests(copy: Copy, tests: list[str], timeout: float) -> tuple[str, str, float]:
    """("passed" | "failed" | "timeout" | "error", what to show, seconds).

    What to show: for a failure, the first test that failed; else pytest's last line.
    """
    env = dict(os.environ)
    src = str(copy.root / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, str(copy.root / ".mutation")])
    env["HANDLES_MUTATION_SRC"] = src
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a mutant never leaves bytecode for the next one
    env.setdefault("CI", "true")
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "handles_mutation_guard",
        "-m",
        "not gpu and not load",
        f"--timeout={int(timeout)}",
        *tests,
    ]
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=copy.root,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so a timeout stops the tests' own children too
    )
    try:
        output, _ = process.communicate(timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return "timeout", f"ran past {timeout:.0f} s", time.perf_counter() - started
    seconds = time.perf_counter() - started
    lines = [line for line in output.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if process.returncode == 0 and re.search(r"\b\d+ passed\b", last):
        return "passed", last, seconds
    if process.returncode != 0 and "Timeout >" in output:  # pytest-timeout stopped a test
        # A test stuck on the broken line (a deadlock, say) noticed it, whichever way
        # pytest-timeout then ends the run (it can end in an internal error).
        return "timeout", last, seconds
    if process.returncode == 1:
        failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
        return "failed", (f"by {failed[0]}" if failed else last), seconds
    # 0 with nothing passed (all skipped), 2 interrupted, 3 internal, 4 usage, 5 nothing collected
    return "error", f"exit status {process.returncode}: {last}", seconds


def mutate(copy: Copy, mutations: list[Mutation], timeout: float) -> None:
    baselines: dict[tuple[str, ...], tuple[str, str]] = {}
    for mutation in mutations:
        if mutation.outcome:  # stale
            print(f"{'stale':9} {mutation.id:24} {mutation.detail}", flush=True)
            continue
        selection = tuple(mutation.tests)
        if selection not in baselines:
            status, last, _ = run_tests(copy, list(selection), timeout)
            baselines[selection] = (status, last)
        status, last = baselines[selection]
        if status != "passed":
            mutation.outcome = "error"
            mutation.detail = f"the unbroken copy does not pass these tests ({status}: {last})"
        else:
            text = copy.text(mutation.module)
            copy.write(mutation.module, text.replace(mutation.find, mutation.replace, 1))
            try:
                status, last, mutation.seconds = run_tests(copy, mutation.tests, timeout)
            finally:
                copy.restore(mutation.module)
            mutation.outcome = {"failed": "killed", "timeout": "killed", "passed": "survived"}.get(
                status, "error"
            )
            mutation.detail = f"timeout: {last}" if status == "timeout" else last
        where = f"{mutation.module}:{mutation.line}"
        print(
            f"{mutation.outcome:9} {mutation.id:24} {where:34} {mutation.seconds:5.1f}s  "
            f"{mutation.detail}",
            flush=True,
        )


def scores(mutations: list[Mutation]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = defaultdict(
        lambda: {"killed": 0, "survived": 0, "error": 0, "stale": 0}
    )
    for mutation in mutations:
        table[mutation.group][mutation.outcome] += 1
    return dict(table)


def print_scores(table: dict[str, dict[str, int]]) -> None:
    print(f"\n{'group':12} {'score':>7} {'killed':>7} {'survived':>9} {'error':>6} {'stale':>6}")
    for group, counts in sorted(table.items()):
        judged = counts["killed"] + counts["survived"]
        score = f"{counts['killed'] / judged:.0%}" if judged else "-"
        print(
            f"{group:12} {score:>7} {counts['killed']:>7} {counts['survived']:>9} "
            f"{counts['error']:>6} {counts['stale']:>6}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", type=Path, default=LIST, help="the mutations (TOML)")
    parser.add_argument("--rev", help="copy the project as committed at REV, not the work tree")
    parser.add_argument("--only", nargs="*", default=[], help="entry ids or groups to run")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per test")
    parser.add_argument("--check", action="store_true", help="only check the snippets are found")
    parser.add_argument("--json", type=Path, help="also write every outcome to this file")
    args = parser.parse_args()
    mutations = load(args.list)
    if args.only:
        mutations = [m for m in mutations if m.id in args.only or m.group in args.only]
    with tempfile.TemporaryDirectory(prefix="handles-mutation-") as tmp:
        copy = make_copy(Path(tmp), args.rev)
        found = [locate(copy, m) for m in mutations]
        if args.check:
            for mutation, ok in zip(mutations, found, strict=True):
                where = f"{mutation.module}:{mutation.line}" if ok else mutation.detail
                print(f"{'ok' if ok else 'stale':6} {mutation.id:24} {where}")
            return 0 if all(found) else 1
        print(f"{len(mutations)} mutations of {args.rev or 'the working tree'} in {tmp}")
        mutate(copy, mutations, args.timeout)
    table = scores(mutations)
    print_scores(table)
    if args.json:
        records = [{k: v for k, v in vars(m).items()} for m in mutations]
        payload = {"rev": args.rev, "scores": table, "mutations": records}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0 if all(m.outcome == "killed" for m in mutations) else 1


if __name__ == "__main__":
    sys.exit(main())
