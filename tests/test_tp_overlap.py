"""Transformer Engine's TP communication overlap (planner.costmodel.tp_overlap): the
per-collective arithmetic of ring exchange, pipeline and bulk overlap, the SMs the
communication takes from the GEMM, which blocks overlap, and the effect on simulate.
The formulas are the module docstring's (NeMo userbuffers configurations,
data/costmodel/tp_overlap.yaml); tolerances are float round-off (1e-12 relative)."""

from __future__ import annotations

import pytest

from planner.costmodel.comm import StageComm
from planner.costmodel.partition import Piece
from planner.costmodel.report import Dim
from planner.costmodel.simulate import simulate
from planner.costmodel.tp_overlap import Method, block_tp, overlap_constants, overlapped_s
from planner.hwmodels.placement import rank_layout
from planner.presets import load_cluster, load_model
from planner.specs import Plan, Workload

RING, PIPE, BULK = Method.RING_EXCHANGE, Method.PIPELINE, Method.BULK


def test_fully_hidden_when_the_gemm_is_much_longer():
    # C = 1 under G = 100 on every SM: ring and bulk hide all of it; a pipeline exposes
    # its last chunk's reduce-scatter, C / n.
    assert overlapped_s(RING, 1.0, 100.0, 100.0, 4) == (0.0, 1.0)
    assert overlapped_s(BULK, 1.0, 100.0, 100.0, 1) == (0.0, 1.0)
    added, hidden = overlapped_s(PIPE, 1.0, 100.0, 100.0, 4)
    assert added == pytest.approx(0.25, rel=1e-12) and hidden == pytest.approx(0.75, rel=1e-12)


def test_exposed_when_the_collective_is_much_longer():
    # C = 100 over G = 1: ring hides (tp-1)/tp of the GEMM, bulk the GEMM, a pipeline
    # (n-1)/n of it: the rest of C is exposed.
    assert overlapped_s(RING, 100.0, 1.0, 1.0, 8) == pytest.approx((100.0 - 7 / 8, 7 / 8), rel=1e-12)
    assert overlapped_s(BULK, 100.0, 1.0, 1.0, 1) == pytest.approx((99.0, 1.0), rel=1e-12)
    assert overlapped_s(PIPE, 100.0, 1.0, 1.0, 4) == pytest.approx((100.0 - 0.75, 0.75), rel=1e-12)


def test_sm_slowdown_is_charged():
    # The GEMM on 108 of 132 SMs takes G' = G * 132 / 108; the difference is paid even
    # when the collective hides completely.
    g = 10.0
    slowed = g * 132 / 108
    added, hidden = overlapped_s(BULK, 1.0, g, slowed, 1)
    assert hidden == 1.0 and added == pytest.approx(slowed - g, rel=1e-12)
    added, _ = overlapped_s(PIPE, 1.0, g, slowed, 4)
    assert added == pytest.approx(slowed - g + 0.25, rel=1e-12)


@pytest.mark.parametrize("c", [0.01, 0.1, 0.5, 1.0, 2.0, 10.0])
def test_ring_exchange_never_costs_more_than_the_collective(c):
    # Ring exchange takes no SMs (copy engines): overlapping never loses, for any C and G.
    for g in (0.01, 0.3, 1.0, 5.0):
        added, hidden = overlapped_s(RING, c, g, g, 4)
        assert 0.0 <= added <= c and added + hidden == pytest.approx(c, rel=1e-12)


def test_sm_cost_dominates_a_short_collective():
    # Not monotone (module docstring): a pipeline slot on 24 of 132 SMs loses when C is well
    # below G, and saves when C is near G.
    g = 1.0
    slowed = g / (1 - 24 / 132)
    assert overlapped_s(PIPE, 0.1 * g, g, slowed, 4)[0] > 0.1 * g
    assert overlapped_s(PIPE, 1.0 * g, g, slowed, 4)[0] < 1.0 * g


def test_constants_come_from_the_yaml():
    splits, slots = overlap_constants()
    assert splits == 4
    assert set(slots) == {"qkv_fprop", "proj_fprop", "fc1_fprop", "fc2_fprop", "proj_dgrad", "fc2_dgrad",
                          "qkv_wgrad", "fc1_wgrad"}
    assert slots["proj_fprop"].method is PIPE and slots["proj_fprop"].num_sm == 24
    assert all(s.num_sm == 0 for s in slots.values() if s.method is RING)


CLUSTER = load_cluster("dgx-h100", num_gpus=64)
DENSE = load_model("llama3-70b")
PLAN = Plan(tp=4, pp=4, vpp=5, dp=4, sequence_parallel=True, pipeline_schedule="interleaved")
WORKLOAD = Workload(global_batch_size=128, seq_length=8192, precision="fp8")


def _comm(model, plan, workload):
    return StageComm(model, CLUSTER, plan, workload, rank_layout(plan), 0)


def test_dense_block_hides_most_of_its_tp():
    on = WORKLOAD.model_copy(update={"tp_comm_overlap": True})
    plain, over = _comm(DENSE, PLAN, WORKLOAD).piece(Piece.DENSE), _comm(DENSE, PLAN, on).piece(Piece.DENSE)
    assert over.tp_forward_s < 0.5 * plain.tp_forward_s
    assert over.tp_backward_s < 0.5 * plain.tp_backward_s
    assert over.tp_hidden_s > 0.0 and plain.tp_hidden_s == 0.0
    # The embedding's and the head's all-reduces are not TE Linear collectives: unchanged.
    for piece in (Piece.EMBEDDING, Piece.HEAD):
        assert _comm(DENSE, PLAN, on).piece(piece) == _comm(DENSE, PLAN, WORKLOAD).piece(piece)


def test_moe_block_hides_only_its_attention_half():
    model = load_model("tiny-moe-mla")
    plan = Plan(tp=2, ep=2, dp=4, sequence_parallel=True)
    workload = Workload(global_batch_size=32, seq_length=2048, tp_comm_overlap=True)
    comm = _comm(model, plan, workload)
    ag, rs = comm.tp_all_gather_s, comm.tp_reduce_scatter_s
    moe = block_tp(model, plan, workload, CLUSTER.gpu, Piece.MOE, ag, rs)
    # MoE half (ag + rs) and MLA's attention-input all-gather exposed in forward in full;
    # the output projection's reduce-scatter at most exposed.
    assert ag + rs + ag <= moe.forward_s <= 2 * (ag + rs)
    # backward: the MoE half exposed, the projection's dgrad all-gather and the qkv wgrad slot
    # (absent under MLA: exposed) at most.
    assert ag + rs <= moe.backward_s <= 2 * (ag + rs)


def test_no_effect_without_sequence_parallelism_or_tp():
    on = WORKLOAD.model_copy(update={"tp_comm_overlap": True})
    for plan in (PLAN.model_copy(update={"sequence_parallel": False}),
                 Plan(tp=1, pp=4, vpp=5, dp=16, pipeline_schedule="interleaved")):
        plain = simulate(DENSE, CLUSTER, plan, WORKLOAD).step_time_s
        assert simulate(DENSE, CLUSTER, plan, on).step_time_s == plain


def test_overlap_speeds_up_a_tp4_step_and_reports_hidden_tp():
    on = WORKLOAD.model_copy(update={"tp_comm_overlap": True})
    plain, over = simulate(DENSE, CLUSTER, PLAN, WORKLOAD), simulate(DENSE, CLUSTER, PLAN, on)
    assert over.step_time_s < plain.step_time_s
    assert over.comm_exposed_s[Dim.TP] < plain.comm_exposed_s[Dim.TP]
    assert over.comm_hidden_s[Dim.TP] > 0.0 == plain.comm_hidden_s[Dim.TP]
    # Full recomputation repeats the overlapped forward in backward, not the raw collectives.
    full = PLAN.model_copy(update={"recompute": "full"})
    c_plain = _comm(DENSE, full, WORKLOAD).piece(Piece.DENSE)
    c_over = _comm(DENSE, full, on).piece(Piece.DENSE)
    assert c_over.tp_recompute_s < c_plain.tp_recompute_s
    assert c_over.tp_backward_s == pytest.approx(_comm(DENSE, PLAN, on).piece(Piece.DENSE).tp_backward_s
                                                 + c_over.tp_recompute_s, rel=1e-12)


def test_cli_flag_reaches_the_workload():
    import json
    import subprocess
    import sys

    def run(*extra):
        args = ["simulate", "--model", "llama3-70b", "--cluster", "dgx-h100", "--gpus", "64",
                "--global-batch", "128", "--seq-len", "8192", "--precision", "fp8", "--tp", "4", "--pp", "4",
                "--sequence-parallel"]
        result = subprocess.run([sys.executable, "-m", "planner", *args, "-f", "json", *extra],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    plain, over = run(), run("--tp-comm-overlap")
    assert over["workload"]["tp_comm_overlap"] is True and plain["workload"]["tp_comm_overlap"] is False
    assert over["step_time_s"] < plain["step_time_s"]
