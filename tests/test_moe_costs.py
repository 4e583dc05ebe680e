"""MoE-specific compute costs: the routed experts' host floor (compute.expert_host_s) and the
permute traffic of Megatron-Core's all-to-all dispatcher (compute.permute_rows).

Sources (cited in data/costmodel/compute.yaml and compute.py): NVIDIA's DeepSeek-V3 GB200
guide (Megatron-LM docs/discussions/deepseek-v3-gb200-optimization): one cuBLAS GEMM per
local expert, per-expert FP8 quantisation with four allocations, two zero-filled scale
buffers and two swizzles, a tokens-per-expert device-to-host sync per MoE layer; "one
global and one local permute before and after EP communication"."""

from __future__ import annotations

import pytest

from planner import load_model
from planner.costmodel.compute import (
    BF16_BYTES,
    Shard,
    compute_constants,
    expert_host_s,
    moe_ops,
    permute_rows,
    piece_time,
)
from planner.costmodel.compute_vec import OpArrays
from planner.presets import load_gpu, revalidate
from planner.specs import Plan, Workload
from planner.specs.hardware import LaunchOverhead
from planner.specs.plan import Precision, Recompute


def _experts(name: str, plan: Plan, precision: Precision, seq: int = 4096):
    model = load_model(name)
    workload = Workload(global_batch_size=plan.dp * 8, seq_length=seq, precision=precision)
    ops = moe_ops(model, plan, Shard.of(plan, workload), precision)
    return model, workload, ops


def test_host_floor_counts_calls_per_expert_and_phase() -> None:
    """Forward and dgrad: a GEMM (TE multi-stream cuBLASLt, moe_expert_gemm_host_us) plus,
    under FP8, one quantisation (9 calls) per local expert; wgrad: the GEMM only; nothing for
    other ops or BF16 quantisation."""
    c = compute_constants()
    call_s = c["moe_expert_host_call_us"] * 1e-6
    gemm_call_s = c["moe_expert_gemm_host_us"] * 1e-6
    gpu = load_gpu("b200")
    plan = Plan(ep=8, dp=8)
    _, _, ops = _experts("qwen3-235b-a22b", plan, Precision.FP8)
    experts = [op for op in ops if op.per_expert]
    assert [op.name for op in experts] == ["experts_up_gate", "experts_down"]
    for op in experts:
        assert op.count == 128 / 8
        gemm = op.count * c["moe_expert_gemm_calls"] * gemm_call_s
        quant = op.count * c["moe_expert_fp8_quantize_calls"] * call_s
        expected = (gemm + quant, gemm + quant, gemm)
        assert expert_host_s(op, gpu, Precision.FP8) == pytest.approx(expected, rel=1e-12)
        assert expert_host_s(op, gpu, Precision.BF16) == pytest.approx((gemm, gemm, gemm), rel=1e-12)
    for op in ops:
        if not op.per_expert:
            assert expert_host_s(op, gpu, Precision.FP8) == (0.0, 0.0, 0.0)
    # A GPU with a launch block prices host time per op already: no second floor.
    launched = revalidate(gpu, launch=LaunchOverhead(source="test", mode="asynchronous", overhead_s=1e-6))
    assert expert_host_s(experts[0], launched, Precision.FP8) == (0.0, 0.0, 0.0)


def test_floor_binds_for_small_expert_gemms_only() -> None:
    """Qwen3-30B-A3B at EP8 (16 local experts of 2048 rows, FFN 768) under FP8 on B200: the
    host calls outlast the GEMMs, so the expert ops take the floor; DeepSeek-V3 at EP64 (4
    experts of 8192 rows, FFN 2048) on H800: the GEMMs are longer, the floor does not bind."""
    small_gpu, plan = load_gpu("b200"), Plan(ep=8, dp=8)
    qwen = load_model("qwen3-235b-a22b").model_copy(update={"hidden_size": 2048})
    qwen = qwen.model_copy(update={"moe": qwen.moe.model_copy(update={"expert_ffn_hidden_size": 768})})
    workload = Workload(global_batch_size=64, seq_length=4096, precision=Precision.FP8)
    ops = tuple(moe_ops(qwen, plan, Shard.of(plan, workload), Precision.FP8))
    for op in ops:
        if op.per_expert:
            host_f, _, _ = expert_host_s(op, small_gpu, Precision.FP8)
            alone = piece_time((op,), revalidate(small_gpu, launch=LaunchOverhead(
                source="test", mode="asynchronous", overhead_s=1e-15)), Precision.FP8, Recompute.NONE)
            assert alone.forward_s < host_f  # the device alone would be faster
            assert piece_time((op,), small_gpu, Precision.FP8, Recompute.NONE).forward_s == host_f

    big_gpu, plan = load_gpu("h800-sxm-80gb"), Plan(pp=16, ep=64, dp=128)
    _, _, ops = _experts("deepseek-v3", plan, Precision.FP8)
    for op in ops:
        if op.per_expert:
            assert expert_host_s(op, big_gpu, Precision.FP8)[0] < 0.5 * piece_time(
                (op,), big_gpu, Precision.FP8, Recompute.NONE).forward_s


def test_more_local_experts_cost_more_at_equal_flops() -> None:
    """Same rows per GPU and FLOPs (B200, FP8, DeepSeek-V3 experts): EP8 holds 32 local
    experts of 1024 rows, EP64 4 of 8192; the EP8 expert section is slower (and not only by
    the GEMMs' smaller-M efficiency: its host floor binds)."""
    gpu = load_gpu("b200")
    times = {}
    for ep in (8, 64):
        plan = Plan(pp=16, ep=ep, dp=ep)
        _, _, ops = _experts("deepseek-v3", plan, Precision.FP8)
        experts = tuple(op for op in ops if op.per_expert)
        assert sum(op.flops for op in experts) == pytest.approx(2 * 4096 * 8 * 3 * 7168 * 2048, rel=1e-12)
        t = piece_time(experts, gpu, Precision.FP8, Recompute.NONE)
        times[ep] = t.forward_s + t.backward_input_s + t.backward_weight_s
        host = sum(sum(expert_host_s(op, gpu, Precision.FP8)) for op in experts)
        if ep == 8:
            assert host > 0.5 * times[ep]
    assert times[8] > 1.3 * times[64]


def test_vectorised_twin_matches_with_binding_floor() -> None:
    """compute_vec applies the same floor bit for bit where it binds."""
    gpu, plan = load_gpu("b200"), Plan(ep=8, dp=8)
    model, workload, _ = _experts("qwen3-235b-a22b", plan, Precision.FP8, seq=1024)
    from planner.costmodel.compute import piece_ops
    from planner.costmodel.partition import Piece

    ops = piece_ops(model, plan, workload, Piece.MOE)
    arrays = OpArrays.of(ops, gpu, Precision.FP8)
    assert arrays.host.any()
    for recompute in Recompute:
        t = piece_time(ops, gpu, Precision.FP8, recompute)
        expected = (t.forward_s, t.backward_input_s, t.backward_weight_s, t.recompute_s)
        assert arrays.times()[recompute] == expected


def test_permute_rows_of_the_all_to_all_dispatcher() -> None:
    """DeepSeek-V3, 4096 tokens, top-8 (32768 routed copies): global permute (read + write
    32768 rows), local sort and unsort at EP64 with 4 local experts (2 x 2 x 32768), the
    unpermute (read 32768, write 4096); no local sort at ep = 1 or with one local expert."""
    model = load_model("deepseek-v3")
    workload = Workload(global_batch_size=128, seq_length=4096)
    s = Shard.of(Plan(ep=64, dp=64), workload)
    assert permute_rows(Plan(ep=64, dp=64), s, 8, 4) == 2 * 32768 + 4 * 32768 + 32768 + 4096
    assert permute_rows(Plan(ep=1, dp=1), s, 8, 256) == 3 * 32768 + 4096
    assert permute_rows(Plan(ep=256, dp=256), s, 8, 1) == 3 * 32768 + 4096
    # Tensor parallelism with sequence parallelism: each rank permutes its 1/tp of the tokens;
    # expert TP = tp brings every rank all copies for its expert shards.
    plan = Plan(tp=2, ep=32, etp=2, dp=32, sequence_parallel=True)
    s2 = Shard.of(plan, workload)
    assert permute_rows(plan, s2, 8, 8) == 2 * 16384 + 4 * 32768 + 16384 + 2048
    op = next(o for o in moe_ops(model, Plan(ep=64, dp=64), s, Precision.BF16) if o.name == "moe_permute")
    assert op.bytes == (7 * 32768 + 4096) * model.hidden_size * BF16_BYTES
