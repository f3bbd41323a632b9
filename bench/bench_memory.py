"""Models at scale: copies of the weights over spawn workers, and the registry's byte budget.

    python bench/bench_memory.py [--json results.json] [--quick]

Copies: 4 spawn workers each hold one model of 64 MiB of float32 weights (a
`square-stack` of 4 Linear(2048, 2048) layers, from a safetensors file) and read
all of it once. The figure is (sum of PSS over the 4 workers) minus (the same
for 4 idle workers that imported the same modules), divided by the weights
file's size; PSS (from /proc/PID/smaps_rollup) splits each shared page among
the processes mapping it, so one copy shared by all counts once. Measured for:

    handles             TorchModelSpec(...).get(): weights mapped, shared
    hand-written        a per-worker functools.cache around load_state_dict(load_file(...))
    handles, float16    TorchModelSpec(dtype="float16"): the conversion copies (0.5 per worker)
    hf-pipeline         HFPipelineSpec of a BERT of about 64 MiB (transformers maps it)

Budget: in this process, `registry().max_bytes = 150 MiB`, then 3 different
64 MiB models are built one after another (none held); after each build the
bytes live (the registry's `stats()`), the models live and this process's PSS
above its level before the first build are printed.

Linux only (reads /proc). `--quick` skips the float16 and HF rows: a check that
the script runs (the 64 MiB size stays: with smaller models the workers' fixed
overheads would blur the copies figure). The measurement code is shared with
tests/test_model_memory.py (tests/support/tiny_models.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the shared measurement code; spawn workers inherit it
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import handles  # noqa: E402
from handles import HFPipelineSpec, TorchModelSpec  # noqa: E402
from handles.specs._device import return_freed_memory  # noqa: E402
from support import tiny_models as tm  # noqa: E402

MiB = 2**20
WORKERS = 4
GOALS = {  # ratio name -> (comparison, bound)
    "handles: copies of the weights over 4 workers": ("<=", 1.3),
    "budget: bytes live / budget after 3 builds": ("<=", 1.0),
}


def compare(value: float, goal: tuple[str, float]) -> bool:
    op, bound = goal
    return value <= bound if op == "<=" else value >= bound


def copies(hold: Any, size: int, idle: int) -> float:
    return (sum(tm.pss_of_spawn_workers(hold, WORKERS)) - idle) / size


def measure_copies(folder: Path, width: int, full: bool) -> dict[str, float]:
    weights = tm.save_square_stack(folder / "w0.safetensors", width=width)
    size = weights.stat().st_size
    spec = TorchModelSpec(
        factory="square-stack", kwargs={"width": width}, weights=weights, device="cpu"
    )
    idle = sum(tm.pss_of_spawn_workers(tm.hold_nothing, WORKERS))
    found = {
        "handles (TorchModelSpec)": copies(functools.partial(tm.hold_spec, spec), size, idle),
        "hand-written load_state_dict loader": copies(
            functools.partial(tm.hold_by_hand, "square-stack", {"width": width}, str(weights)),
            size,
            idle,
        ),
    }
    if full:
        found["handles, dtype=float16 (converted)"] = copies(
            functools.partial(tm.hold_spec, spec.replace(dtype="float16")), size, idle
        )
        # transformers itself weighs far more than idle workers: the baseline here is
        # workers holding the same pipeline with a tiny model (hidden size 16).
        big = HFPipelineSpec(
            task="text-classification",
            model=tm.save_tiny_hf(folder / "hf-big", hidden=1366),  # about 64 MiB of float32
            device="cpu",
        )
        small = big.replace(model=tm.save_tiny_hf(folder / "hf-small", hidden=16))
        extra = sum(
            (Path(spec.model) / "model.safetensors").stat().st_size * sign
            for spec, sign in ((big, 1), (small, -1))
        )
        hf_idle = sum(tm.pss_of_spawn_workers(functools.partial(tm.hold_spec, small), WORKERS))
        found["hf-pipeline (HFPipelineSpec)"] = copies(
            functools.partial(tm.hold_spec, big), extra, hf_idle
        )
    return found


def pss_parts(pid: int) -> dict[str, int]:
    """Pss_Anon and Pss_File of a process, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Pss_Anon", "Pss_File"):
            found[name] = int(value.split()[0]) * 1024
    return found


def measure_budget(folder: Path, width: int, budget: int) -> list[dict[str, Any]]:
    reg = handles.registry()
    specs = [
        TorchModelSpec(
            factory="square-stack",
            kwargs={"width": width},
            weights=tm.save_square_stack(folder / f"b{i}.safetensors", seed=i, width=width),
            device="cpu",
        )
        for i in range(3)
    ]
    return_freed_memory()  # so that the start is not above what the process holds
    base = tm.pss_bytes(os.getpid())
    base_parts = pss_parts(os.getpid())
    reg.max_bytes = budget
    steps = []
    try:
        for i, spec in enumerate(specs, 1):
            tm.hold_spec(spec)  # built, read once, not held
            stats = reg.stats()
            steps.append(
                {
                    "build": i,
                    "bytes live": sum(s.nbytes for s in stats.values()),
                    "models live": sum(
                        stats[s.cache_key()].live for s in specs if s.cache_key() in stats
                    ),
                    "process PSS above start": tm.pss_bytes(os.getpid()) - base,
                    **{
                        f"{name} above start": size - base_parts[name]
                        for name, size in pss_parts(os.getpid()).items()
                    },
                }
            )
    finally:
        reg.max_bytes = None
        reg.close()
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="no float16, no HF: checks it runs")
    args = parser.parse_args()
    if not Path("/proc/self/smaps_rollup").exists():
        sys.exit("bench_memory.py reads PSS from /proc/PID/smaps_rollup: Linux only")
    width = 2048
    model_bytes = 4 * width * width * 4
    budget = model_bytes * 150 // 64  # 150 MiB for 64 MiB models

    with tempfile.TemporaryDirectory() as tmp:
        found = measure_copies(Path(tmp), width, full=not args.quick)
        steps = measure_budget(Path(tmp), width, budget)

    hand = found["hand-written load_state_dict loader"]
    ratios = {
        "handles: copies of the weights over 4 workers": found["handles (TorchModelSpec)"],
        "hand-written: copies of the weights over 4 workers": hand,
        "budget: bytes live / budget after 3 builds": steps[-1]["bytes live"] / budget,
    }
    met = {name: compare(ratios[name], goal) for name, goal in GOALS.items()}
    results: dict[str, Any] = {
        "title": f"Models at scale: {WORKERS} spawn workers holding one model, and a byte budget",
        "command": "python bench/bench_memory.py",
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "model": f"square-stack: 4 Linear({width}, {width}), {model_bytes / MiB:.0f} MiB float32",
        f"copies of the weights over {WORKERS} spawn workers (PSS)": found,
        "budget (MiB)": f"{budget / MiB:.1f} (registry().max_bytes)",
        **{
            f"after build {s['build']} of 3": {
                "bytes live (MiB)": s["bytes live"] / MiB,
                "budget (MiB)": budget / MiB,
                "models live": s["models live"],
                "process PSS above start (MiB)": s["process PSS above start"] / MiB,
                "of which mapped files (MiB)": s["Pss_File above start"] / MiB,
                "of which anonymous (MiB)": s["Pss_Anon above start"] / MiB,
            }
            for s in steps
        },
        "ratios": ratios,
        "goals": {name: f"{op} {bound}" for name, (op, bound) in GOALS.items()},
        "met": met,
    }
    if args.quick:
        results["mode"] = "quick (--quick): a check that the script runs, not a measurement"

    print(results["model"])
    for name, value in found.items():
        print(f"{name:42} {value:6.2f} copies")
    print(f"\nbudget {budget / MiB:.1f} MiB")
    for s in steps:
        print(
            f"after build {s['build']}: {s['bytes live'] / MiB:6.1f} MiB live in "
            f"{s['models live']} model(s); process PSS +{s['process PSS above start'] / MiB:.1f} "
            f"MiB (files +{s['Pss_File above start'] / MiB:.1f}, "
            f"anonymous +{s['Pss_Anon above start'] / MiB:.1f})"
        )
    print()
    for name, value in ratios.items():
        goal = GOALS.get(name)
        verdict = f"{goal[0]} {goal[1]}  {'met' if met[name] else 'MISSED'}" if goal else ""
        print(f"{name:52} {value:6.2f}  {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    elif not all(met.values()):
        sys.exit(1)  # run by report.py (--json), the report says what was missed


if __name__ == "__main__":
    main()
