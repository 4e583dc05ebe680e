"""planner calibrate --from-cases: the fit and its leave-one-source-out score."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from planner.presets import data_root
from planner.validation import read_cases
from planner.validation.calibrate import calibrate

CASES = ["korthikanti22-t5-gpt-22b-8gpu-selective", "fireflyer-llama-13b-64gpu", "narayanan21-t1-gpt-1.7b-32gpu"]


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory) -> Path:
    rows = [r for r in read_cases(data_root() / "validation" / "public_cases.csv") if r["case_id"] in CASES]
    path = tmp_path_factory.mktemp("cal") / "cases.csv"
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_loso_uses_only_other_sources(small_csv: Path) -> None:
    rows = read_cases(small_csv)
    result = calibrate(rows, (0.7, 1.0))
    assert result.best_fraction in (0.7, 1.0)
    assert set(result.per_source) == {r["source"] for r in rows}
    assert 0 <= result.loso_within <= 1 and result.loso_median_ape >= 0
    # A faster kernel fraction (1.0) predicts shorter steps than 0.7 for the same cases.
    from planner.validation.calibrate import _predict

    fast, slow = _predict(rows, 1.0), _predict(rows, 0.7)
    assert all(f < s for f, s in zip(fast, slow))


def test_cli_calibrate(small_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "fit.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "planner", "calibrate", "--from-cases", str(small_csv), "--grid", "0.8,0.9",
         "--out", str(out), "--format", "json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["best_fraction"] in (0.8, 0.9) and "loso_median_ape" in data
    assert "sustained_kernel_fraction" in out.read_text()


def test_cli_calibrate_bad_grid(small_csv: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "planner", "calibrate", "--from-cases", str(small_csv), "--grid", "0,1.5"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "--grid" in proc.stderr and "Traceback" not in proc.stderr
