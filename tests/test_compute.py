"""Compute model: the per-op FLOPs of every piece add up to the model's FLOPs/token
(planner.costmodel.flops, itself golden-tested against ISCA'25 Tables 2 and 4), for any
sharding; and kernel times behave (monotone in peak, FP8 faster than BF16 on GEMMs)."""

from __future__ import annotations

import pytest

from planner import load_model
from planner.costmodel.compute import OpKind, Shard, piece_model_flops, piece_ops
from planner.costmodel.flops import flops_per_token_train
from planner.costmodel.partition import Piece, model_pieces
from planner.specs import Plan, Workload

CASES = [
    ("deepseek-v3", dict(pp=16, ep=64, dp=128, pipeline_schedule="dualpipe")),
    ("deepseek-v3", dict(tp=4, ep=8, dp=8)),
    ("deepseekmoe-16b", dict(pp=2, dp=4, ep=2)),
    ("llama3-405b", dict(tp=8, pp=2, dp=2, sequence_parallel=True)),
    ("gpt3-175b", dict(tp=8, cp=2, dp=2)),
]


@pytest.mark.parametrize(("name", "degrees"), CASES)
def test_ops_reproduce_flops_per_token(name: str, degrees: dict) -> None:
    """Sum over pieces of per-GPU forward FLOPs x 3 (fwd + 2x bwd) x the GPUs sharing one
    micro-batch (tp * cp) / tokens = flops_per_token_train, exactly (tolerance 1e-9
    relative); MLA's replicated down-projections are the only per-GPU duplication, so
    they are counted once."""
    model = load_model(name)
    plan = Plan(**degrees)
    seq = 4096
    workload = Workload(global_batch_size=plan.dp * 64, seq_length=seq)
    total = 0.0
    for piece in model_pieces(model):
        if piece is Piece.MTP:
            continue
        for op in piece_ops(model, plan, workload, piece):
            replicated = op.name in ("q_down", "kv_down", "router")
            total += op.flops * (plan.cp if replicated else plan.tp * plan.cp)
    tokens = plan.micro_batch_size * seq
    assert 3 * total / tokens == pytest.approx(flops_per_token_train(model, seq), rel=1e-9)


def test_expert_rows_match_deepseek_v3() -> None:
    """EP64, top-8 of 256, 4096 tokens: every expert GEMM sees 8192 rows (4096*8*64/256)."""
    model = load_model("deepseek-v3")
    plan = Plan(pp=16, ep=64, dp=128, pipeline_schedule="dualpipe")
    ops = piece_ops(model, plan, Workload(global_batch_size=15360, seq_length=4096), Piece.MOE)
    experts = [op for op in ops if op.name.startswith("experts_") and op.kind is OpKind.GEMM]
    assert experts and all(op.shape[0] == 8192 and op.count == 4 for op in experts)


def test_sequence_parallel_splits_elementwise_tokens() -> None:
    plan = Plan(tp=4, sequence_parallel=True)
    s = Shard.of(plan, Workload(global_batch_size=8, seq_length=2048))
    assert s.tokens == 2048 and s.elementwise_tokens == 512


def test_head_flops() -> None:
    """LM head forward = 2 * tokens * d * V / tp."""
    model = load_model("deepseek-v3")
    plan = Plan(tp=2, dp=2)
    ops = piece_ops(model, plan, Workload(global_batch_size=4, seq_length=1024), Piece.HEAD)
    assert piece_model_flops(ops) == pytest.approx(2 * 1024 * 7168 * 129280 / 2)
