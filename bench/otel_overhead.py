"""Warm get() with and without OpenTelemetry: bench_core.py's keyed ratio, alternating in one run.

    python bench/otel_overhead.py [--pairs 5]

Each pair runs bench/bench_core.py's whole measurement twice in this process: once
plain, once after `instrument()` on an SDK MeterProvider (closed afterwards), and
reads its "warm get / lru_cache keyed, median of rounds" ratio. The medians and
spreads of both are printed; `instrument()` adds nothing to a hit, so the two
should differ by less than their spread. Not a `bench_*` script, so not part of
`nox -s bench`'s report: it runs bench_core.py itself, twice per pair.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import runpy
import statistics
import sys
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from handles.integrations.opentelemetry import instrument

CORE = Path(__file__).with_name("bench_core.py")
RATIO = re.compile(r"warm get / lru_cache keyed, median of rounds\s+([0-9.]+)")


def keyed_ratio() -> float:
    """One full bench_core.py run in this process; its keyed warm-get ratio."""
    printed = io.StringIO()
    argv, sys.argv = sys.argv, [str(CORE)]
    try:
        with contextlib.redirect_stdout(printed):
            runpy.run_path(str(CORE), run_name="__main__")
    finally:
        sys.argv = argv
    found = RATIO.search(printed.getvalue())
    if found is None:
        raise SystemExit(f"bench_core.py printed no keyed ratio:\n{printed.getvalue()}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="plain/instrumented pairs to run")
    pairs = parser.parse_args().pairs
    plain: list[float] = []
    instrumented: list[float] = []
    for _ in range(pairs):
        plain.append(keyed_ratio())
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        metrics = instrument(provider)
        try:
            instrumented.append(keyed_ratio())
            reader.get_metrics_data()  # the observations are read, as an exporter would
        finally:
            metrics.close()
            provider.shutdown()
    for name, ratios in (("plain", plain), ("instrumented", instrumented)):
        print(
            f"warm get / lru_cache keyed, {name:<12} median {statistics.median(ratios):.2f} "
            f"(min {min(ratios):.2f}, max {max(ratios):.2f}; {pairs} runs)"
        )


if __name__ == "__main__":
    main()
