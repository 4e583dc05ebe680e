"""Fit ``sustained_kernel_fraction`` (data/costmodel/compute.yaml) on the public validation
cases and report its leave-one-source-out (LOSO) error: for each source, the fraction is
fitted on the other sources only (minimising their median APE over a grid) and the held-out
source is scored with it. The in-sample fit is printed too but is not the accuracy claim.

Run: .venv/bin/python benchmarks/calibrate_loso.py [CASES.csv]
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict

from planner.costmodel import compute
from planner.presets import data_root
from planner.validation.cases import read_cases
from planner.validation.run import run_cases

GRID = [0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 1.00]


def predictions(rows, fraction: float) -> list[float | None]:
    constants = compute.compute_constants()
    saved = constants["sustained_kernel_fraction"]
    constants["sustained_kernel_fraction"] = fraction
    try:
        results = run_cases(rows)
    finally:
        constants["sustained_kernel_fraction"] = saved
    return [r.predicted_step_time_s if r.status == "ok" else None for r in results]


def median_ape(rows, preds) -> float:
    apes = [abs(p - float(r["step_time_s"])) / float(r["step_time_s"]) for r, p in zip(rows, preds) if p]
    return statistics.median(apes) if apes else float("inf")


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else data_root() / "validation" / "public_cases.csv"
    rows = read_cases(path)
    table = {f: predictions(rows, f) for f in GRID}
    by_source = defaultdict(list)
    for i, row in enumerate(rows):
        by_source[row["source"]].append(i)
    best_all = min(GRID, key=lambda f: median_ape(rows, table[f]))
    print(f"in-sample best fraction {best_all}: median APE {median_ape(rows, table[best_all]):.1%}")
    loso = [None] * len(rows)
    for source, held in by_source.items():
        train = [i for i in range(len(rows)) if i not in held]
        fit = min(GRID, key=lambda f: median_ape([rows[i] for i in train], [table[f][i] for i in train]))
        for i in held:
            loso[i] = table[fit][i]
        score = median_ape([rows[i] for i in held], [table[fit][i] for i in held])
        print(f"  hold out {source[:50]:50s} fit {fit:.2f} -> held-out median APE {score:.1%}")
    apes = [abs(p - float(r["step_time_s"])) / float(r["step_time_s"]) for r, p in zip(rows, loso) if p]
    within = sum(a <= 0.15 for a in apes) / len(rows)
    print(f"LOSO: median APE {statistics.median(apes):.1%}, within 15%: {within:.0%} of {len(rows)} cases")


if __name__ == "__main__":
    main()
