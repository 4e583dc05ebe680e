"""The wheel ships the presets: an installed (not editable) planner runs on them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_data_and_runs_outside_the_source_tree(tmp_path: Path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "--quiet", "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("planner-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "planner/data/models/deepseek-v3.yaml" in names
    assert "planner/data/hardware/clusters/deepseek-v3-h800.yaml" in names
    assert "planner/data/validation/public_cases.csv" in names
    assert "planner/data/validation/accuracy.yaml" in names  # simulate and plan quote it

    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)  # a wheel is a zip laid out for site-packages
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run(
        [sys.executable, "-c",
         "import planner, sys; print(planner.__file__); "
         "sys.argv=['planner','describe','--model','deepseek-v3','--format','json']; "
         "from planner.cli.main import main; main()"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].startswith(str(target))
    assert '"params_total": 671026404352' in run.stdout
