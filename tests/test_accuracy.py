"""planner.validation.accuracy: the shipped table of how close the model came to published
runs, and the line simulate and plan print from it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from planner import Workload, load_cluster, load_model
from planner.presets import data_root
from planner.validation.accuracy import MIN_RUNS, accuracy_for, build_table


def test_shipped_table_is_current() -> None:
    """data/validation/accuracy.yaml is what the model scores today on the shipped case files;
    after a model change, regenerate it: python -m planner.validation.accuracy."""
    shipped = yaml.safe_load((data_root() / "validation" / "accuracy.yaml").read_text())
    assert shipped == build_table(), "stale: run python -m planner.validation.accuracy"


def test_the_most_specific_group_with_enough_runs() -> None:
    groups = yaml.safe_load((data_root() / "validation" / "accuracy.yaml").read_text())["groups"]
    h100 = load_cluster("dgx-h100", num_gpus=8)
    dense_fp8 = accuracy_for(h100, load_model("llama3-8b"), Workload(global_batch_size=8, seq_length=4096, precision="fp8"))
    assert dense_fp8.group == "h100-sxm-80gb, dense, fp8" and dense_fp8.runs >= MIN_RUNS
    assert dense_fp8.runs == groups[dense_fp8.group]["runs"]
    # No published FP16 run on H100: the GPU's group.
    fp16 = accuracy_for(h100, load_model("llama3-8b"), Workload(global_batch_size=8, seq_length=4096, precision="fp16"))
    assert fp16.group == "h100-sxm-80gb" and fp16.runs == groups["h100-sxm-80gb"]["runs"]
    # A GPU with fewer runs than MIN_RUNS still gets its own group; one with none, nothing.
    h800 = accuracy_for(load_cluster("deepseek-v3-h800"), load_model("deepseek-v3"),
                        Workload(global_batch_size=15360, seq_length=4096, precision="fp8"))
    assert h800.group.startswith("h800-sxm-80gb") and h800.runs == groups[h800.group]["runs"]
    assert accuracy_for(load_cluster("local-cpu-8"), load_model("llama3-8b"), Workload(global_batch_size=8, seq_length=512)) is None
    assert "published runs (h100-sxm-80gb, dense, fp8): median |error|" in dense_fp8.line()


@pytest.mark.parametrize("command", ["simulate", "plan"])
def test_cli_quotes_it(command: str) -> None:
    args = [sys.executable, "-m", "planner", command, "-m", "llama3-8b", "-c", "dgx-h100", "--gpus", "8",
            "--global-batch", "16", "--precision", "fp8", "--tp", "1", "--pp", "1"]
    table = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr
    assert "accuracy: " in table.stdout and "published runs (h100-sxm-80gb, dense, fp8)" in table.stdout
    data = json.loads(subprocess.run(args + ["--format", "json"], capture_output=True, text=True, timeout=300).stdout)
    assert data["accuracy"]["group"] == "h100-sxm-80gb, dense, fp8" and data["accuracy"]["runs"] >= MIN_RUNS
