"""Run every bench/bench_*.py; write docs/benchmarks.md and docs/benchmarks.png from their output.

    python bench/report.py [--only NAME ...]

Each benchmark writes its results with `--json PATH`: a mapping of section name to
either a mapping of label -> number (rendered as a table) or a string (rendered as
a line). Numbers on the page come only from those files.
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
PAGE = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "benchmarks.png"
DATA = ROOT / "docs" / "benchmarks.json"  # the raw results the page is rendered from


def run_benchmarks(only: list[str]) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for script in sorted((ROOT / "bench").glob("bench_*.py")):
            name = script.stem.removeprefix("bench_")
            if only and name not in only:
                continue
            out = Path(tmp) / f"{name}.json"
            print(f"--- {script.relative_to(ROOT)}", flush=True)
            subprocess.run([sys.executable, str(script), "--json", str(out)], check=True, cwd=ROOT)
            results[name] = json.loads(out.read_text(encoding="utf-8"))
    return results


def render(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `nox -s bench` (`bench/report.py`) from the benchmarks' own output on "
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


def chart(results: dict[str, dict[str, Any]]) -> None:
    import matplotlib

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
    fig.savefig(CHART, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], help="benchmark names (bench_NAME.py)")
    parser.add_argument(
        "--render-only", action="store_true", help=f"re-render from {DATA.name}, run nothing"
    )
    args = parser.parse_args()
    if args.render_only:
        results = json.loads(DATA.read_text(encoding="utf-8"))
    else:
        results = run_benchmarks(args.only)
        DATA.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    PAGE.write_text(render(results), encoding="utf-8")
    chart(results)
    print(f"wrote {PAGE.relative_to(ROOT)} and {CHART.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
