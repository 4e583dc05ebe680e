"""planner.search.fixes: what makes an out-of-memory plan fit on the same layout."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from planner import load_cluster, load_model, simulate
from planner.presets import revalidate
from planner.search.fixes import memory_fixes
from planner.specs import Plan, Workload

H100X8 = load_cluster("dgx-h100", num_gpus=8)
LONG = Workload(global_batch_size=64, seq_length=8192)


@pytest.fixture(scope="module")
def llama8b_fixes():
    model = load_model("llama3-8b")
    plan = Plan(tp=2, dp=4, micro_batch_size=2, zero_stage=1)
    return model, plan, memory_fixes(model, H100X8, plan, LONG)


def test_each_fix_fits_and_changes_one_knob(llama8b_fixes) -> None:
    model, plan, fixes = llama8b_fixes
    assert not simulate(model, H100X8, plan, LONG).fits
    assert fixes.leanest is None and len(fixes.fits) >= 4
    flags = [f.flags for f in fixes.fits]
    assert {"--recompute full", "--micro-batch 1", "--zero 3"} <= set(flags)
    times = [f.report.step_time_s for f in fixes.fits]
    assert times == sorted(times)
    base = plan.model_dump()
    for fix in fixes.fits:
        assert fix.report.fits
        changed = {k for k, v in fix.plan.model_dump().items() if base[k] != v}
        assert changed and changed <= {"recompute", "recompute_modules", "micro_batch_size", "zero_stage",
                                       "sequence_parallel", "cpu_offloading_num_layers"}, fix.flags
        # The fix is what its flags say: the same simulation as the plan rebuilt from them.
        assert fix.report.step_time_s == simulate(model, H100X8, fix.plan, LONG).step_time_s


def test_offloading_takes_the_fewest_blocks_that_fit(llama8b_fixes) -> None:
    model, plan, fixes = llama8b_fixes
    offload = [f for f in fixes.fits if f.flags.startswith("--cpu-offloading-num-layers")]
    assert len(offload) == 1
    n = offload[0].plan.cpu_offloading_num_layers
    assert n >= 1
    assert not simulate(model, H100X8, revalidate(plan, cpu_offloading_num_layers=n - 1), LONG).fits


def test_a_plan_that_cannot_fit_on_its_layout_says_how_far() -> None:
    """70B on one 8-GPU node without data parallelism: the states alone (16 B/param / 8)
    exceed 80 GB, so no recompute, micro-batch or SP change helps and ZeRO has no dp to use."""
    model = load_model("llama3-70b")
    fixes = memory_fixes(model, H100X8, Plan(tp=8, micro_batch_size=4), LONG)
    assert fixes.fits == ()
    lean = fixes.leanest
    assert lean is not None and not lean.report.fits
    assert lean.flags == "--recompute full --micro-batch 1 --sequence-parallel"
    assert lean.plan.zero_stage == 0 and lean.report.memory_peak_bytes > H100X8.gpu.hbm_capacity_bytes


def test_a_plan_that_fits_needs_no_fix() -> None:
    fixes = memory_fixes(load_model("llama3-8b"), H100X8, Plan(tp=2, dp=4, recompute="full"), LONG)
    assert fixes.fits == () and fixes.leanest is None


def test_simulate_prints_and_returns_the_fixes() -> None:
    args = [sys.executable, "-m", "planner", "simulate", "-m", "llama3-8b", "-c", "dgx-h100", "--gpus", "8",
            "--tp", "2", "--micro-batch", "2", "--zero", "1", "--global-batch", "64", "--seq-len", "8192"]
    table = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert "fits with one change (fastest first): " in table.stdout and "--recompute full (" in table.stdout
    data = json.loads(subprocess.run(args + ["--format", "json"], capture_output=True, text=True,
                                     timeout=120).stdout)
    assert data["status"] == "oom"
    fits = data["memory_fixes"]["fits"]
    assert fits and all(f["status"] == "ok" for f in fits) and data["memory_fixes"]["leanest"] is None
