"""Run every bench/bench_*.py; write a report (page, chart, raw JSON) from their output.

    python bench/report.py [--only NAME ...] [--quick] [--update-docs]

The report goes to bench/out/ (not tracked), so a run never changes the checkout;
`--update-docs` writes docs/benchmarks.{md,png,json} instead, for a commit. `--quick`
runs every benchmark briefly, to check that the scripts work: its numbers mean little,
and it cannot update the docs.

Each benchmark writes its results with `--json PATH`: a mapping of section name to
either a mapping of label -> number (rendered as a table) or a string (rendered as
a line). Numbers on the page come only from those files. A benchmark states its
goals in "goals" and whether each was met in "met".

Exit status (the report is written first): 1 when a script fails or writes no
results, and, in a full run, when any goal was missed, so a regression fails the
run. A `--quick` run's numbers are too few to judge, so there a missed goal is
only printed: it exits 0 when every script ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OUT = ROOT / "bench" / "out"  # gitignored
PAGE, CHART, DATA = "benchmarks.md", "benchmarks.png", "benchmarks.json"  # DATA: raw results


def run_benchmarks(only: list[str], quick: bool) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(results by benchmark name, "name: why" for each script that failed).

    Every script runs even after one fails, so one run shows every failure.
    """
    results: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for script in sorted((ROOT / "bench").glob("bench_*.py")):
            name = script.stem.removeprefix("bench_")
            if only and name not in only:
                continue
            out = Path(tmp) / f"{name}.json"
            print(f"--- {script.relative_to(ROOT)}", flush=True)
            command = [sys.executable, str(script), "--json", str(out)]
            command += ["--quick"] if quick else []
            done = subprocess.run(command, check=False, cwd=ROOT)
            if done.returncode != 0:
                failed.append(f"{name}: exit status {done.returncode}")
            elif not out.is_file():
                failed.append(f"{name}: wrote no results")
            else:
                results[name] = json.loads(out.read_text(encoding="utf-8"))
    return results, failed


def render(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `nox -s bench -- --update-docs` (`bench/report.py`) from the benchmarks' "
        "own output on "
        f"{date.today().isoformat()}; nothing on this page is typed by hand. Each benchmark "
        "measures its contenders side by side in one run, so read the ratios: absolute times "
        "move with the machine.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}.",
        "",
        "![ratios](benchmarks.png)",
        "",
    ]
    for name, sections in results.items():
        lines += [f"## {sections.get('title', name)}", ""]
        if "command" in sections:
            lines += [f"`{sections['command']}`", ""]
        for section, body in sections.items():
            if section in ("title", "command", "machine"):
                continue
            if isinstance(body, dict):
                lines += [f"| {section} | value |", "|---|---:|"]
                lines += [f"| {label} | {_fmt(value)} |" for label, value in body.items()]
                lines.append("")
            else:
                lines += [f"{section}: {_fmt(body)}", ""]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) >= 0.01 else f"{value:.2e}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def missed_goals(results: dict[str, dict[str, Any]]) -> list[str]:
    """ "name: ratio = value (goal ...)" for every goal a benchmark reports as missed."""
    missed = []
    for name, sections in results.items():
        for label, met in sections.get("met", {}).items():
            if not met:
                value = sections.get("ratios", {}).get(label)
                shown = f" = {_fmt(value)}" if value is not None else ""
                missed.append(f"{name}: {label}{shown} (goal {sections['goals'][label]})")
    return missed


def exit_status(failed: list[str], missed: list[str], *, quick: bool) -> int:
    """1 if a script failed, or a full run missed a goal; 0 otherwise.

    A quick run checks that the scripts work: its few rounds cannot judge a goal.
    """
    return 1 if failed or (missed and not quick) else 0


def chart(results: dict[str, dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # nox -s bench installs it
        print(f"{path.name} not drawn: matplotlib is not installed")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], []
    for name, sections in results.items():
        for label, value in sections.get("ratios", {}).items():
            labels.append(f"{name}: {label}")
            values.append(value)
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(labels) + 1.2))
    ax.barh(labels, values, color="#3b7dd8")
    ax.axvline(1.0, color="#444", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (see each table for what is divided by what)")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], help="benchmark names (bench_NAME.py)")
    parser.add_argument("--quick", action="store_true", help="a short run that checks the scripts")
    parser.add_argument(
        "--update-docs", action="store_true", help=f"write docs/{PAGE} (+ chart, data)"
    )
    parser.add_argument(
        "--render-only", action="store_true", help=f"re-render from {DATA}, run nothing"
    )
    args = parser.parse_args()
    if args.quick and args.update_docs:
        parser.error("--quick numbers never go into the docs")
    folder = DOCS if args.update_docs else OUT
    folder.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    if args.render_only:
        results = json.loads((folder / DATA).read_text(encoding="utf-8"))
        judged = results
    else:
        results, failed = run_benchmarks(args.only, args.quick)
        judged = results  # only what ran now: kept results were judged by their own run
        if args.only and (folder / DATA).exists():
            # A partial run replaces only its own benchmarks; the page keeps the others'
            # numbers from their last full run (each section says which script made it).
            earlier = json.loads((folder / DATA).read_text(encoding="utf-8"))
            results = {**earlier, **results}
        (folder / DATA).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (folder / PAGE).write_text(render(results), encoding="utf-8")
    chart(results, folder / CHART)
    print(f"wrote {(folder / PAGE).relative_to(ROOT)} (and its chart and data) in {folder}")
    missed = missed_goals(judged)
    for line in missed:
        print(f"MISSED {line}")
    for line in failed:
        print(f"FAILED {line}")
    status = exit_status(failed, missed, quick=args.quick)
    if failed:
        print(f"{len(failed)} benchmark script(s) failed", file=sys.stderr)
    if missed:
        verdict = "not judged in a --quick run" if args.quick else "missed"
        print(f"{len(missed)} benchmark goal(s) {verdict}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
