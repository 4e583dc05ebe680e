"""Megatron-Core's combined 1F1B (Workload.ep_comm_overlap): when it applies, the merged
steady state of the schedules, the simulator's price and the validator's reading of it."""

from __future__ import annotations

import csv
import itertools
from collections import Counter

import pytest

from planner import load_cluster, load_model
from planner.costmodel import ep_overlap, fast
from planner.costmodel.schedules import ChunkTimes, EventKind, simulate_pipeline
from planner.costmodel.simulate import simulate
from planner.presets import data_root
from planner.specs import Plan, Workload
from planner.specs.plan import PipelineSchedule
from planner.validation.cases import case_inputs

ON = Workload(global_batch_size=256, seq_length=4096, ep_comm_overlap=True)


def test_applies_follows_megatron_bridges_rules():
    """EP > 1, a MoE model, VPP when PP > 1, no full recompute (Megatron-Core user guide,
    "Combined 1F1B"; Megatron-Bridge's CommOverlapConfig checks)."""
    moe, dense = load_model("mixtral-8x7b"), load_model("llama3-8b")
    inter = Plan(pp=4, vpp=2, ep=8, dp=8, pipeline_schedule="interleaved")
    assert ep_overlap.applies(moe, inter, ON)
    assert ep_overlap.applies(moe, Plan(ep=8, dp=8), ON)  # one stage: forward i + 1 with backward i
    assert not ep_overlap.applies(moe, inter, ON.model_copy(update={"ep_comm_overlap": False}))
    assert not ep_overlap.applies(dense, Plan(pp=4, vpp=2, dp=8, pipeline_schedule="interleaved"), ON)
    assert not ep_overlap.applies(moe, Plan(pp=4, ep=8, dp=8), ON)  # PP without VPP
    assert not ep_overlap.applies(moe, inter.model_copy(update={"recompute": "full"}), ON)
    assert not ep_overlap.applies(moe, Plan(ep=1, dp=8), ON)


@pytest.mark.parametrize(("pp", "vpp", "m"), [
    (pp, vpp, m) for pp, vpp, m in itertools.product((2, 3, 4, 8), (2, 3, 4), (8, 16, 24, 48)) if m % pp == 0
])
def test_merged_interleaved_runs_every_pass_once_and_is_never_slower(pp, vpp, m):
    """Combined 1F1B's programs never deadlock, run one forward and one full backward per
    micro-batch and chunk, and with pairs cheaper than F + B + W they never end later."""
    times = [ChunkTimes(1.0, 2.0, 0.5, 2.6)] * (pp * vpp)
    merged = simulate_pipeline(PipelineSchedule.INTERLEAVED, times, m, pp, vpp, 0.05, ep_overlap=True)
    plain = simulate_pipeline(PipelineSchedule.INTERLEAVED, times, m, pp, vpp, 0.05)
    kinds = Counter(e.kind for e in merged.events)
    assert kinds == {EventKind.F: m * pp * vpp, EventKind.BW: m * pp * vpp}
    assert merged.makespan_s <= plain.makespan_s + 1e-9
    assert all(p.overlapped_fb_s > 0 for p in merged.phases)


def test_one_stage_pairs_forward_next_with_backward_previous():
    """pp = 1: F(0), then F(i + 1) with BW(i) as pairs, then BW(m - 1): F + (m - 1) pair + B + W."""
    t = ChunkTimes(1.0, 2.0, 0.5, 2.5)  # k = 2.5 / 3.5
    tl = simulate_pipeline(PipelineSchedule.ONE_F_ONE_B, [t], 8, 1, ep_overlap=True)
    assert tl.makespan_s == pytest.approx(1.0 + 7 * 2.5 + 2.5)
    assert simulate_pipeline(PipelineSchedule.ONE_F_ONE_B, [t], 8, 1).makespan_s == pytest.approx(8 * 3.5)


def test_simulate_hides_the_all_to_all_only_where_it_applies():
    """DeepSeek-V2-Lite with EP16 over two DGX H100 nodes: the inter-node all-to-all hides;
    Mixtral's EP8 inside one node is too short to pay for the SMs its kernels take, so the
    pair is no faster than F + B + W (never slower); full recompute turns it off."""
    off = ON.model_copy(update={"ep_comm_overlap": False})
    model, cluster = load_model("deepseek-v2-lite"), load_cluster("dgx-h100", num_gpus=64)
    for plan in (Plan(pp=2, vpp=2, ep=16, dp=32, pipeline_schedule="interleaved", recompute="selective"),
                 Plan(ep=16, dp=64, recompute="selective")):
        with_overlap, without = simulate(model, cluster, plan, ON), simulate(model, cluster, plan, off)
        assert with_overlap.step_time_s < 0.95 * without.step_time_s
        assert with_overlap.breakdown.overlapped_fb_s > 0 and without.breakdown.overlapped_fb_s == 0
    full = plan.model_copy(update={"recompute": "full"})
    assert simulate(model, cluster, full, ON).step_time_s == simulate(model, cluster, full, off).step_time_s
    model = load_model("mixtral-8x7b")
    plan = Plan(pp=4, vpp=2, ep=8, dp=16, pipeline_schedule="interleaved", recompute="selective")
    assert simulate(model, cluster, plan, ON).step_time_s <= simulate(model, cluster, plan, off).step_time_s


def test_fast_estimate_prices_it_as_simulate():
    """The vectorised estimate runs the merged programs too (tests/test_fast.py compares it
    with simulate on a V2-Lite sample); here one Mixtral plan of each merged kind."""
    model, cluster = load_model("mixtral-8x7b"), load_cluster("dgx-h100", num_gpus=64)
    plans = [Plan(ep=8, dp=64), Plan(pp=4, vpp=2, ep=8, dp=16, pipeline_schedule="interleaved", recompute="selective")]
    est = fast.estimate(model, cluster, ON, plans, exact_top=None)
    for i, plan in enumerate(plans):
        assert est.step_time_s[i] == pytest.approx(simulate(model, cluster, plan, ON).step_time_s, rel=1e-9)


def _rows() -> dict:
    path = data_root() / "validation" / "extra_cases.csv"
    return {row["case_id"]: row for row in csv.DictReader(path.open())}


def test_validator_reads_a2a_overlap_from_the_notes():
    """Megatron-MoE-ModelZoo's A2A_OVERLAP=1 row (Qwen3-235B-A22B on 256 H100, EP32,
    PP8 x VPP4, README table) turns it on (+13.9% without it, -12.8% with); its A2A_OVERLAP=0
    siblings stay off."""
    rows = _rows()
    on = case_inputs(rows["mzoo-h100-qwen3-235b-a22b-bf16-256gpu-xep32-deepep-a2a-overlap"])
    assert on.workload.ep_comm_overlap
    off = case_inputs(rows["mzoo-h100-qwen3-235b-a22b-bf16-256gpu-16k-cp1-dropless"])
    assert not off.workload.ep_comm_overlap


def test_plan_cli_searches_with_it_and_emits_megatrons_flags(tmp_path):
    """``planner plan --ep-comm-overlap`` searches with combined 1F1B priced (the bounds
    count its pairs: tests/test_search.py) and the emitted arguments turn it on where it
    applies (Megatron-MoE-ModelZoo's A2A_OVERLAP=1: --overlap-moe-expert-parallel-comm
    --delay-wgrad-compute)."""
    import json
    import subprocess
    import sys

    from planner.launch.emit import megatron_args
    args = ["-m", "tiny-moe-mla", "-c", "dgx-h100", "--gpus", "16", "--global-batch", "32", "--top-k", "1",
            "-f", "json"]
    run = subprocess.run([sys.executable, "-m", "planner", "plan", *args, "--ep-comm-overlap",
                          "--emit", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["workload"]["ep_comm_overlap"] is True
    model = load_model("mixtral-8x7b")
    inter = Plan(pp=4, vpp=2, ep=8, dp=8, pipeline_schedule="interleaved")
    on = megatron_args(model, inter, ON)
    assert "--overlap-moe-expert-parallel-comm" in on and "--delay-wgrad-compute" in on
    off = megatron_args(model, inter.model_copy(update={"recompute": "full"}), ON)
    assert "--overlap-moe-expert-parallel-comm" not in off
