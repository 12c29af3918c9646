"""Median of several `bench.overhead.run` results, cell by cell: one run on a shared machine is noise.

    python -m bench.overhead.summary bench/results/overhead/overhead-A.json overhead-B.json ...

Prints the same table as a single run, each number the median over the runs that have it, and how
many runs there were.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.overhead.run import table


def merge(reports: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    names = [name for name in reports[0]["results"]]
    for report in reports[1:]:
        names += [name for name in report["results"] if name not in names]
    for name in names:
        runs = [report["results"][name] for report in reports if name in report["results"]]
        merged[name] = {}
        for part in runs[0]:
            cells: dict[str, list[float]] = {}
            for run in runs:
                for key, value in run.get(part, {}).items():
                    if isinstance(value, (int, float)):
                        cells.setdefault(key, []).append(value)
            merged[name][part] = {key: statistics.median(values) for key, values in cells.items()}
    return merged


def main() -> None:
    paths = [Path(arg) for arg in sys.argv[1:]]
    if not paths:
        raise SystemExit("usage: python -m bench.overhead.summary RESULT.json [RESULT.json ...]")
    reports = [json.loads(path.read_text()) for path in paths]
    print(table(merge(reports)))
    print(f"\nmedian of {len(reports)} runs: {', '.join(path.name for path in paths)}")


if __name__ == "__main__":
    main()
