"""Fit ``sustained_kernel_fraction`` (data/costmodel/compute.yaml) on the public validation
cases and report its leave-one-source-out error; the same as
``planner calibrate --from-cases data/validation/public_cases.csv``.

Run: .venv/bin/python benchmarks/calibrate_loso.py [CASES.csv]
"""

from __future__ import annotations

import sys

from planner.presets import data_root
from planner.validation import read_cases
from planner.validation.calibrate import calibrate


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else data_root() / "validation" / "public_cases.csv"
    result = calibrate(read_cases(path))
    print(f"in-sample best fraction {result.best_fraction}: median APE {result.in_sample_median_ape:.1%}")
    for source, (fit, ape) in result.per_source.items():
        print(f"  hold out {source[:50]:50s} fit {fit:.2f} -> held-out median APE {ape:.1%}")
    print(f"LOSO: median APE {result.loso_median_ape:.1%}, within 15%: {result.loso_within:.0%} of {len(read_cases(path))} cases")


if __name__ == "__main__":
    main()
