"""Data-parallel overlap: planner.costmodel.dp_overlap, the Workload knobs it reads
(``overlap_param_gather``, ``grad_reduce_dtype``), their effect through ``simulate`` and the
fast estimate, and the validator's recipe defaults (planner.validation.reconcile.recipe)."""

from __future__ import annotations

import numpy as np
import pytest

from planner import load_cluster, load_model
from planner.costmodel.dp_overlap import dp_exposure
from planner.costmodel.fast import clear_caches, estimate
from planner.costmodel.simulate import simulate
from planner.presets import data_root
from planner.specs import GradReduceDtype, Plan, Workload
from planner.validation.cases import case_inputs, read_cases

ONE = np.ones((1, 1, 1))


def _single(reduce_s, gather_s, bw, f, overlap):
    return dp_exposure(False, f * ONE, bw * ONE, ONE, np.array([[reduce_s]]), np.array([[gather_s]]),
                       overlap, np.zeros(1))


def test_one_chunk_hides_the_reduction_behind_the_last_backward():
    """DeepSeek LLM §2.4: the last micro-batch's backward overlaps the reduce-scatter; the
    all-gather follows the optimizer step, after the global-norm barrier (so the slack of a
    hidden reduction cannot hide it), or (overlapped) delays the first forward by what it lacks."""
    exposed, after, delay = _single(3.0, 1.0, bw=2.0, f=0.4, overlap=False)
    assert exposed[0, 0] == pytest.approx(1.0) and after[0, 0] == 1.0 and delay[0] == 0.0  # 3 - 2; then 1
    exposed, after, delay = _single(1.0, 0.3, bw=2.0, f=0.4, overlap=False)
    assert exposed[0, 0] == 0.0 and after[0, 0] == 0.3  # not max(0, 1 + 0.3 - 2)
    exposed, after, delay = _single(3.0, 1.0, bw=2.0, f=0.4, overlap=True)
    assert exposed[0, 0] == pytest.approx(1.0) and after[0, 0] == 0.0 and delay[0] == pytest.approx(0.6)
    exposed, after, delay = _single(1.0, 0.3, bw=2.0, f=0.4, overlap=True)
    assert exposed[0, 0] == 0.0 and delay[0] == 0.0


def test_interleaved_chunks_reduce_behind_the_earlier_chunks_backward():
    """pp 2, two chunks of equal size per rank, b + w = 1 each: chunk 1's last backward
    starts 1 + 2 * 1 = 3 before the rank ends, chunk 0's 1 before; a reduction of 4 (2 per
    chunk) runs from -3 to -1 and from -1 to 1: 1 exposed, where one chunk exposes 3."""
    shape = (1, 2, 2)
    exposed, _, _ = dp_exposure(True, np.ones(shape), np.ones(shape), np.full(shape, 0.5), np.full((1, 2), 4.0),
                             np.zeros((1, 2)), True, np.zeros(1))
    assert exposed[0].tolist() == pytest.approx([1.0, 1.0])


def test_gather_delay_staggers_by_rank():
    """Rank r's first forward ends after the first forwards of ranks < r and their sends: a
    gather of 1 with forwards of 0.25 and p2p 0.05 delays rank 0 by 0.75, rank 1 by 0.45."""
    shape = (1, 2, 1)
    _, _, delay = dp_exposure(False, np.full(shape, 0.25), np.ones(shape), np.ones(shape), np.zeros((1, 2)),
                              np.ones((1, 2)), True, np.array([0.05]))
    assert delay[0] == pytest.approx(0.75)
    _, _, delay = dp_exposure(False, np.full(shape, 0.25), np.ones(shape), np.ones(shape), np.zeros((1, 2)),
                              np.array([[0.0, 1.0]]), True, np.array([0.05]))
    assert delay[0] == pytest.approx(1.0 - 0.25 - 0.05 - 0.25)


GPT3_WORKLOAD = Workload(global_batch_size=1536, seq_length=2048)
INTERLEAVED = Plan(tp=8, pp=8, vpp=2, dp=16, zero_stage=1, sequence_parallel=True, pipeline_schedule="interleaved")


@pytest.fixture(scope="module")
def gpt3():
    return load_model("gpt3-175b"), load_cluster("dgx-a100", num_gpus=1024)


def test_overlap_and_bf16_gradients_never_slow_a_step(gpt3):
    """Each knob only removes exposed time (the gather) or bytes (BF16 gradients: half the
    reduce-scatter and of the gradient buffer)."""
    model, cluster = gpt3
    for plan in (INTERLEAVED, INTERLEAVED.model_copy(update={"vpp": 1, "pipeline_schedule": "1f1b"})):
        base = simulate(model, cluster, plan, GPT3_WORKLOAD.model_copy(update={"overlap_param_gather": False}))
        over = simulate(model, cluster, plan, GPT3_WORKLOAD)
        bf16 = simulate(model, cluster, plan, Workload(global_batch_size=1536, seq_length=2048,
                                                       grad_reduce_dtype="bf16"))
        assert over.step_time_s <= base.step_time_s
        assert bf16.step_time_s <= over.step_time_s
        assert bf16.memory_peak_bytes < over.memory_peak_bytes
        grads = [st.memory.gradients_bytes for st in over.stages]
        assert [st.memory.gradients_bytes for st in bf16.stages] == pytest.approx([g / 2 for g in grads])


def test_fast_estimate_follows_both_knobs(gpt3):
    """The fast estimate prices the exposure with the same function: equal to ``simulate``."""
    model, cluster = gpt3
    plans = [INTERLEAVED, INTERLEAVED.model_copy(update={"vpp": 1, "pipeline_schedule": "1f1b"}),
             INTERLEAVED.model_copy(update={"vpp": 4})]
    for workload in (GPT3_WORKLOAD, Workload(global_batch_size=1536, seq_length=2048, grad_reduce_dtype="bf16",
                                             overlap_param_gather=False)):
        clear_caches()
        est = estimate(model, cluster, workload, plans, exact_top=None)
        for i, plan in enumerate(plans):
            assert est.step_time_s[i] == pytest.approx(simulate(model, cluster, plan, workload).step_time_s, rel=1e-9)


def _row(case_id: str, file: str = "extra_cases.csv") -> dict:
    return next(r for r in read_cases(data_root() / "validation" / file) if r["case_id"] == case_id)


def test_recipe_defaults_of_the_validator():
    """FP8 Megatron-Core rows reduce gradients in BF16 (NeMo scripts/performance: fp8 ->
    ``grad_reduce_in_fp32 = False``); FSDP (zero 3) rows keep FP32; DeepSeek's recipe keeps
    FP32 and does not overlap the gather; rows before 2024 gather inside the step."""
    nemo = case_inputs(_row("nemo2407-h100-nemotron4-340b-128gpu"))
    assert nemo.workload.grad_reduce_dtype is GradReduceDtype.BF16 and nemo.workload.overlap_param_gather
    fsdp = case_inputs(_row("torchtitan-h100-llama31-8b-fp8-8gpu"))
    assert fsdp.workload.grad_reduce_dtype is GradReduceDtype.FP32
    v3 = case_inputs(_row("dsv3-isca25-table4", "public_cases.csv"))
    assert v3.workload.grad_reduce_dtype is GradReduceDtype.FP32 and not v3.workload.overlap_param_gather
    bloom = _row("bloom-176b-384gpu", "public_cases.csv")  # its source names no year
    assert case_inputs(bloom).workload.overlap_param_gather
    dated = case_inputs({**bloom, "source": "BigScience 2022, tr11-176B-ml README"})
    assert not dated.workload.overlap_param_gather
    assert any("not overlapped" in n for n in dated.notes)


def test_the_gather_follows_the_optimizer_step_whatever_the_slack():
    """With the reduce-scatter hidden behind the last backward (Llama-3-8B, DP 16 on two H100
    nodes), the ZeRO-1 all-gather still runs after the optimizer step (the global-norm
    barrier, dp_overlap's docstring): the whole gather is exposed, priced as the collective of
    the rank's BF16 weights over its DP group, and the reduction is all hidden."""
    from planner.costmodel.comm import stage_groups
    from planner.costmodel.report import Dim
    from planner.hwmodels.collectives import CollectiveOp, collective_cost
    from planner.hwmodels.placement import rank_layout

    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100", num_gpus=16)
    plan = Plan(dp=16, zero_stage=1, recompute="selective")
    workload = Workload(global_batch_size=64, seq_length=4096, overlap_param_gather=False)
    report = simulate(model, cluster, plan, workload)
    groups = stage_groups(rank_layout(plan), "dp", 0)
    gather = collective_cost(cluster, CollectiveOp.ALL_GATHER, groups, report.stages[0].memory.weights_bytes).time_s
    assert report.comm_hidden_s[Dim.DP] > gather > 0  # the reduction (FP32), hidden
    assert report.breakdown.dp_exposed_s == pytest.approx(gather, rel=1e-9)
