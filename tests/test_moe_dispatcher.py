"""MoE token dispatchers: DeepEP's deduplicating all-to-all against Megatron-Core's
``alltoall`` dispatcher (one NCCL all-to-all of one row per (token, chosen expert):
megatron/core/transformer/moe/token_dispatcher.py ``MoEAlltoAllTokenDispatcher``), and the
validator's choice between them (planner.validation.reconcile.moe_dispatcher).

Byte counts are exact under uniform balanced routing (hypergeometric sums), so the
tolerances are floating-point ones."""

from __future__ import annotations

import csv
from math import comb

import numpy as np
import pytest

from planner import load_model
from planner.costmodel.simulate import simulate
from planner.hwmodels.alltoall import moe_all_to_all
from planner.presets import data_root, load_cluster, revalidate
from planner.specs import MoEDispatcher, Plan, Workload
from planner.validation.cases import case_inputs

TOKENS, HIDDEN, BF16 = 4096, 4096, 2.0


@pytest.fixture(scope="module")
def dgx_h100():
    return load_cluster("dgx-h100")


def _both(cluster, groups, experts: int, top_k: int):
    args = (cluster, groups, TOKENS, HIDDEN, top_k, experts, None, BF16, BF16)
    return moe_all_to_all(*args, deduplicate=True), moe_all_to_all(*args, deduplicate=False)


def _none_chosen(total: int, held: int, chosen: int) -> float:
    return comb(total - held, chosen) / comb(total, chosen)


def test_alltoall_sends_one_copy_per_expert_inside_a_node(dgx_h100) -> None:
    """EP8 on one DGX H100, 128 experts top-8 (Qwen3): the alltoall dispatcher writes all
    top_k = 8 rows per token, DeepEP one per distinct destination GPU,
    R = 8 (1 - C(112, 8) / C(128, 8)) = 5.33; both over NVLink only."""
    deepep, a2a = _both(dgx_h100, np.arange(8)[None, :], 128, 8)
    token_bytes = HIDDEN * BF16
    ranks = 8 * (1 - _none_chosen(128, 16, 8))
    assert deepep.intra_node_bytes_per_rank == pytest.approx(TOKENS * ranks * token_bytes, rel=1e-12)
    assert a2a.intra_node_bytes_per_rank == pytest.approx(TOKENS * 8 * token_bytes, rel=1e-12)
    assert a2a.inter_node_bytes_per_rank == deepep.inter_node_bytes_per_rank == 0
    # Same NVLink stage, same latency: the extra time is the extra bytes.
    extra = (a2a.dispatch_s - a2a.latency_s) / (deepep.dispatch_s - deepep.latency_s)
    assert extra == pytest.approx(8 / ranks, rel=1e-9)
    assert a2a.dispatch_bottleneck == "nvlink"


def test_alltoall_crosses_ib_once_per_remote_expert(dgx_h100) -> None:
    """EP32 over 4 DGX H100 nodes, 128 experts top-8: alltoall sends 8 x 3/4 = 6 copies of a
    token over IB, DeepEP one per distinct remote node, N - N/4 with
    N = 4 (1 - C(96, 8) / C(128, 8)) = 3.63 -> 2.72; the NIC binds both, so dispatch time
    scales with the copies (6 / 2.72 = 2.2x)."""
    deepep, a2a = _both(dgx_h100, np.arange(32)[None, :], 128, 8)
    token_bytes = HIDDEN * BF16
    nodes = 4 * (1 - _none_chosen(128, 32, 8))
    assert nodes * 3 / 4 == pytest.approx(2.72, abs=0.01)
    assert deepep.inter_node_bytes_per_rank == pytest.approx(TOKENS * nodes * 3 / 4 * token_bytes, rel=1e-12)
    assert a2a.inter_node_bytes_per_rank == pytest.approx(TOKENS * 6 * token_bytes, rel=1e-12)
    assert a2a.dispatch_bottleneck == deepep.dispatch_bottleneck == "nic"
    extra = (a2a.dispatch_s - a2a.latency_s) / (deepep.dispatch_s - deepep.latency_s)
    assert extra == pytest.approx(6 / (nodes * 3 / 4), rel=1e-9)


def test_one_expert_per_rank_leaves_nothing_to_deduplicate(dgx_h100) -> None:
    """Mixtral-style EP8 on one node, 8 experts top-2: each chosen expert is on its own rank,
    so both dispatchers send exactly 2 rows per token: identical cost."""
    deepep, a2a = _both(dgx_h100, np.arange(8)[None, :], 8, 2)
    assert a2a.intra_node_bytes_per_rank == pytest.approx(deepep.intra_node_bytes_per_rank, rel=1e-12)
    assert a2a.dispatch_s == pytest.approx(deepep.dispatch_s, rel=1e-12)


def test_simulated_step_prices_the_dispatcher(dgx_h100) -> None:
    """Qwen3-235B-A22B at EP32 across nodes: the alltoall dispatcher's extra IB copies lengthen
    the step; the Workload default stays DeepEP (DeepSeek-V3's golden case)."""
    model = load_model("qwen3-235b-a22b")
    plan = Plan(tp=2, pp=8, vpp=4, ep=32, etp=1, dp=16, sequence_parallel=True,
                pipeline_schedule="interleaved")
    deepep = Workload(global_batch_size=256, seq_length=4096)
    assert deepep.moe_dispatcher is MoEDispatcher.DEEPEP
    a2a = deepep.model_copy(update={"moe_dispatcher": MoEDispatcher.ALLTOALL})
    cluster = revalidate(dgx_h100, num_nodes=32)
    slow = simulate(model, cluster, plan, a2a)
    fast = simulate(model, cluster, plan, deepep)
    assert slow.step_time_s > 1.05 * fast.step_time_s


def _extra_rows() -> dict[str, dict]:
    path = data_root() / "validation" / "extra_cases.csv"
    with path.open(newline="") as fh:
        return {row["case_id"]: row for row in csv.DictReader(fh)}


@pytest.mark.parametrize(
    ("case_id", "dispatcher"),
    [
        # Megatron-Bridge Qwen3 on H100: moe_token_dispatcher_type="alltoall".
        ("mbridge2511-h100-qwen3-235b-a22b-fp8cs-256gpu", MoEDispatcher.ALLTOALL),
        # The notes name DeepEP (Megatron-MoE-ModelZoo's Dispatcher column).
        ("mzoo-h100-qwen3-235b-a22b-bf16-256gpu-xep32-deepep", MoEDispatcher.DEEPEP),
        # Node-limited routing: DeepSeek-V3's recipe.
        ("mbridge2509-h100-dsv3-fp8-1024gpu", MoEDispatcher.DEEPEP),
        # NVL72: HybridEP.
        ("mbridge2602-gb200-qwen3-235b-a22b-mxfp8-256gpu", MoEDispatcher.DEEPEP),
    ],
)
def test_validator_dispatcher_rule(case_id: str, dispatcher: MoEDispatcher) -> None:
    inputs = case_inputs(_extra_rows()[case_id])
    assert inputs.workload.moe_dispatcher is dispatcher
    assert any(note.startswith("moe dispatcher:") for note in inputs.notes)


def test_validator_reads_the_dispatcher_from_the_notes() -> None:
    """The same ModelZoo row without its notes falls back to Megatron-Core's alltoall."""
    row = dict(_extra_rows()["mzoo-h100-qwen3-235b-a22b-bf16-256gpu-xep32-deepep"], notes="")
    assert case_inputs(row).workload.moe_dispatcher is MoEDispatcher.ALLTOALL
