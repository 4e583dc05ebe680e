"""planner.simulate: properties over random valid inputs, structural checks, and the CLI.

Golden comparisons against published runs live in tests/test_simulate_golden.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from planner import load_cluster, load_model
from planner.costmodel.report import Status
from planner.costmodel.simulate import simulate
from planner.errors import SpecError
from planner.presets import revalidate
from planner.specs import Plan, Workload
from planner.specs.compat import check_plan


def _scaled_cluster(cluster, factor: float):
    """The same cluster with every link (NVLink, NIC, PCIe, host) ``factor`` times faster."""
    node = cluster.node
    scale_up = revalidate(node.scale_up, bandwidth_bytes_per_s=node.scale_up.bandwidth_bytes_per_s * factor)
    changes = {"scale_up": scale_up, "nic_bandwidth_bytes_per_s": node.nic_bandwidth_bytes_per_s * factor}
    if node.pcie is not None:
        pcie = node.pcie
        changes["pcie"] = revalidate(
            pcie,
            gpu_link_bandwidth_bytes_per_s=pcie.gpu_link_bandwidth_bytes_per_s * factor,
            **({"root_port_bandwidth_bytes_per_s": pcie.root_port_bandwidth_bytes_per_s * factor}
               if pcie.root_port_bandwidth_bytes_per_s else {}),
        )
    return revalidate(cluster, node=revalidate(node, **changes))


plans = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["tiny-moe-mla", "tiny-dense"]),
        "tp": st.sampled_from([1, 2]),
        "pp": st.sampled_from([1, 2]),
        "cp": st.sampled_from([1, 2]),
        "ep": st.sampled_from([1, 2, 4]),
        "zero": st.sampled_from([0, 1, 2, 3]),
        "sp": st.booleans(),
        "recompute": st.sampled_from(["none", "selective", "full"]),
        "micro_batch": st.sampled_from([1, 2]),
        "schedule": st.sampled_from(["1f1b", "zero-bubble", "dualpipe"]),
        "precision": st.sampled_from(["bf16", "fp8"]),
        "attention": st.sampled_from(["flash", "unfused"]),
    }
)


def _inputs(draw: dict):
    model = load_model(draw["model"])
    tp, pp, cp = draw["tp"], draw["pp"], draw["cp"]
    ep = draw["ep"] if model.moe else 1
    schedule = draw["schedule"] if pp > 1 else "1f1b"
    dp = 16 // (tp * pp * cp)
    plan = Plan(
        tp=tp, pp=pp, cp=cp, dp=dp, ep=ep, zero_stage=draw["zero"], sequence_parallel=draw["sp"],
        recompute=draw["recompute"], micro_batch_size=draw["micro_batch"], pipeline_schedule=schedule,
        attention_kernel=draw["attention"],
    ) if (tp * cp * dp) % ep == 0 else None
    workload = Workload(global_batch_size=dp * draw["micro_batch"] * 8, seq_length=64, precision=draw["precision"])
    return model, plan, workload


CLUSTER = load_cluster("dgx-h100", num_gpus=16)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans)
def test_valid_random_plans_simulate(draw: dict) -> None:
    """Never crashes; the phases sum to the step; positive, finite figures."""
    model, plan, workload = _inputs(draw)
    assume(plan is not None)
    try:
        check_plan(model, workload, plan, CLUSTER.num_gpus)
    except SpecError:
        assume(False)
    report = simulate(model, CLUSTER, plan, workload)
    b = report.breakdown
    phases = (b.forward_s + b.backward_input_s + b.backward_weight_s + b.overlapped_fb_s + b.bubble_s
              + b.dp_exposed_s + b.optimizer_s)
    assert phases == pytest.approx(report.step_time_s, rel=1e-9)
    assert report.step_time_s > 0 and 0 < report.mfu_causal < report.mfu_noncausal < 1
    assert report.status in (Status.OK, Status.OOM)
    json.dumps(report.model_dump(mode="json"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans, st.sampled_from([1.5, 2.0, 4.0]))
def test_faster_links_never_slow_a_step(draw: dict, factor: float) -> None:
    model, plan, workload = _inputs(draw)
    assume(plan is not None)
    try:
        check_plan(model, workload, plan, CLUSTER.num_gpus)
    except SpecError:
        assume(False)
    slow = simulate(model, CLUSTER, plan, workload).step_time_s
    fast = simulate(model, _scaled_cluster(CLUSTER, factor), plan, workload).step_time_s
    assert fast <= slow * (1 + 1e-9)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans, st.sampled_from([1.5, 2.0, 4.0]))
def test_more_flops_never_slow_a_step(draw: dict, factor: float) -> None:
    model, plan, workload = _inputs(draw)
    assume(plan is not None)
    try:
        check_plan(model, workload, plan, CLUSTER.num_gpus)
    except SpecError:
        assume(False)
    gpu = CLUSTER.gpu
    faster = revalidate(gpu, peak_flops_per_s={k: v * factor for k, v in gpu.peak_flops_per_s.items()})
    slow = simulate(model, CLUSTER, plan, workload).step_time_s
    fast = simulate(model, revalidate(CLUSTER, gpu=faster), plan, workload).step_time_s
    assert fast <= slow * (1 + 1e-9)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans)
def test_memory_never_falls_when_micro_batch_rises(draw: dict) -> None:
    draw = {**draw, "micro_batch": 1}
    model, plan, workload = _inputs(draw)
    assume(plan is not None)
    bigger = revalidate(plan, micro_batch_size=2)
    try:
        check_plan(model, workload, plan, CLUSTER.num_gpus)
        check_plan(model, workload, bigger, CLUSTER.num_gpus)
    except SpecError:
        assume(False)
    small = simulate(model, CLUSTER, plan, workload).memory_peak_bytes
    large = simulate(model, CLUSTER, bigger, workload).memory_peak_bytes
    assert large >= small


def test_group_inside_nvswitch_keeps_tp_off_the_nic() -> None:
    """TP8 inside one DGX node costs the same whatever the NICs are (NVLink only)."""
    model = load_model("llama3-8b")
    cluster = load_cluster("dgx-h100", num_gpus=8)
    plan = Plan(tp=8, dp=1)
    workload = Workload(global_batch_size=8, seq_length=4096)
    base = simulate(model, cluster, plan, workload)
    slow_nic = revalidate(cluster, node=revalidate(cluster.node, nic_bandwidth_bytes_per_s=1e9))
    assert simulate(model, slow_nic, plan, workload).step_time_s == pytest.approx(base.step_time_s)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner", *args], capture_output=True, text=True, timeout=300)


def test_cli_simulate_json() -> None:
    out = _cli("simulate", "-m", "llama3-8b", "-c", "dgx-h100", "--gpus", "16", "--global-batch", "64",
               "--seq-len", "4096", "--tp", "2", "--pp", "2", "--format", "json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["status"] == "ok" and data["step_time_s"] > 0 and len(data["stages"]) == 2


def test_cli_simulate_table() -> None:
    out = _cli("simulate", "-m", "tiny-moe-mla", "-c", "dgx-h100", "--gpus", "8", "--global-batch", "16",
               "--ep", "4", "--pp", "2", "--schedule", "dualpipe")
    assert out.returncode == 0, out.stderr
    assert "step time" in out.stdout and "pipeline bubble" in out.stdout


@pytest.mark.parametrize(
    ("args", "rule"),
    [
        (["--tp", "3"], "num_attention_heads"),
        (["--ep", "3"], "routed experts"),
        (["--pp", "3", "--schedule", "dualpipe", "--dp", "2"], "even number of stages"),
    ],
)
def test_cli_simulate_rejects_invalid_plans(args: list[str], rule: str) -> None:
    """Invalid plans exit 2 with one line naming the rule (issue #5 properties)."""
    out = _cli("simulate", "-m", "deepseek-v3", "-c", "deepseek-v3-h800", "--gpus", "48",
               "--global-batch", "96", *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert rule in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_dualpipe_pp_traffic_counts_each_micro_batch_once() -> None:
    """Under DualPipe a rank holds two chunks but each micro-batch visits it once (in one
    direction): one activation and one gradient per micro-batch, not per chunk held."""
    from planner.costmodel.comm import pp_p2p_s
    from planner.hwmodels.placement import rank_layout

    model = load_model("tiny-moe-mla")
    cluster = load_cluster("dgx-h100", num_gpus=16)
    plan = Plan(pp=2, dp=8, ep=4, pipeline_schedule="dualpipe")
    workload = Workload(global_batch_size=64, seq_length=64)
    report = simulate(model, cluster, plan, workload)
    p2p = pp_p2p_s(cluster, plan, workload, rank_layout(plan), model)
    assert p2p > 0
    assert report.comm_hidden_s["pp"] == pytest.approx(2 * p2p * report.num_microbatches)


def test_dualpipe_gradients_reduce_over_both_copies() -> None:
    """DualPipe's rank r and rank pp-1-r each hold a copy of the same chunks and see half the
    micro-batches; the reference example sums the two copies' gradients (DualPipe
    examples/example_dualpipe.py, "Check grads"). The gradient sync is one collective over
    the union of both stages' data-parallel groups, and with few replicas (edp) it moves more
    bytes per GPU than the stage's own group would: (2n-1)/2n of the buffer instead of (n-1)/n."""
    import numpy as np

    from planner.costmodel.comm import dp_step_comm, grad_reduce_bytes_per_param, stage_groups
    from planner.hwmodels.collectives import CollectiveOp, collective_cost
    from planner.hwmodels.placement import rank_layout

    cluster = load_cluster("dgx-h100", num_gpus=32)
    workload = Workload(global_batch_size=64, seq_length=64)
    plan = Plan(pp=4, dp=8, ep=4, zero_stage=1, pipeline_schedule="dualpipe")
    layout = rank_layout(plan)
    params = 1e9
    got = dp_step_comm(cluster, plan, workload, layout, 1, 0.0, params)
    union = np.concatenate([stage_groups(layout, "edp", 1, True), stage_groups(layout, "edp", 2, True)], axis=1)
    assert union.shape[1] == 2 * plan.edp
    grad = grad_reduce_bytes_per_param(workload)
    expected = (collective_cost(cluster, CollectiveOp.REDUCE_SCATTER, union, params * grad).time_s
                + collective_cost(cluster, CollectiveOp.ALL_GATHER, union, params * 2).time_s)
    assert got.step_s == pytest.approx(expected)
    one_copy = dp_step_comm(cluster, plan.model_copy(update={"pipeline_schedule": "1f1b"}), workload, layout, 1,
                            0.0, params)
    assert got.step_s > 1.2 * one_copy.step_s


def test_zero3_collectives_are_per_unit_and_reported() -> None:
    """ZeRO-3 issues one gather and one reduce-scatter per wrapped unit, so every unit pays
    the ring's latency terms (bytes are priced once); the step reports that traffic under DP,
    hidden behind compute up to its duration."""
    from planner.costmodel.comm import dp_step_comm
    from planner.hwmodels.placement import rank_layout

    model = load_model("tiny-dense")
    cluster = load_cluster("dgx-h100", num_gpus=32)
    workload = Workload(global_batch_size=64, seq_length=256)
    plan = Plan(dp=32, zero_stage=3)
    layout = rank_layout(plan)
    one = dp_step_comm(cluster, plan, workload, layout, 0, 1e8, 0.0, zero3_units=1)
    many = dp_step_comm(cluster, plan, workload, layout, 0, 1e8, 0.0, zero3_units=11)
    assert many.per_microbatch_gather_s > one.per_microbatch_gather_s
    assert many.per_microbatch_scatter_s > one.per_microbatch_scatter_s
    report = simulate(model, cluster, plan, workload)
    dp = report.comm_hidden_s["dp"] + report.comm_exposed_s["dp"]
    assert dp > 0


def test_zero3_traffic_is_not_free_inside_dualpipe_pairs() -> None:
    """A DualPipe(V) F&B pair hides communication behind compute, but ZeRO-3's per-micro-batch
    gathers (before F and before B) and reduce-scatter (after W) still have to cross the
    network: a rank's step cannot be shorter than its ZeRO-3 traffic for all micro-batches."""
    from planner.costmodel.partition import partition
    from planner.costmodel.simulate import _RankCosts
    from planner.hwmodels.placement import rank_layout

    model = load_model("tiny-moe-mla")
    cluster = load_cluster("dgx-h100", num_gpus=32)
    workload = Workload(global_batch_size=64, seq_length=256)
    plan = Plan(pp=2, dp=16, ep=4, zero_stage=3, pipeline_schedule="dualpipev")
    report = simulate(model, cluster, plan, workload)
    layout = rank_layout(plan)
    part = partition(model, plan)
    traffic = max(
        (lambda rc: 2 * rc.zero3_gather_s + rc.zero3_scatter_s)(_RankCosts(model, cluster, plan, workload, layout, part, r))
        for r in range(plan.pp)
    )
    assert traffic > 0
    # DualPipeV: every micro-batch passes both chunks of every rank.
    assert report.step_time_s >= report.num_microbatches * traffic * (1 - 1e-9)


def test_vocab_parallel_cross_entropy_all_reduces_three_values_per_token() -> None:
    """Megatron-LM's _VocabParallelCrossEntropy all-reduces the logit max, the target logit
    and the sum of exponentials (FP32, one per token) over tp in forward; the head and each
    MTP module pay them, blocks do not; tp = 1 pays nothing."""
    from planner.costmodel.comm import StageComm, stage_groups
    from planner.costmodel.partition import Piece
    from planner.hwmodels.collectives import CollectiveOp, collective_cost
    from planner.hwmodels.placement import rank_layout

    model, cluster = load_model("deepseek-v3"), load_cluster("dgx-h100", num_gpus=16)
    workload = Workload(global_batch_size=16, seq_length=4096)
    plan = Plan(tp=8, pp=2, dp=1, ep=8, etp=1)
    layout = rank_layout(plan)
    comm = StageComm(model, cluster, plan, workload, layout, 1)
    one = collective_cost(cluster, CollectiveOp.ALL_REDUCE, stage_groups(layout, "tp", 1), 4096 * 4.0).time_s
    assert comm.piece(Piece.HEAD).tp_forward_s == pytest.approx(3 * one)
    assert comm.piece(Piece.MTP).tp_forward_s == pytest.approx(2 * comm.tp_allreduce_s + 3 * one)
    assert comm.piece(Piece.MOE).tp_forward_s == pytest.approx(2 * comm.tp_allreduce_s)
    flat = StageComm(model, cluster, Plan(pp=2, dp=8, ep=8), workload, rank_layout(Plan(pp=2, dp=8, ep=8)), 1)
    assert flat.piece(Piece.HEAD).tp_forward_s == 0.0
