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


def _with_launch(gpu, mode: str, overhead_s: float):
    from planner.presets import revalidate
    from planner.specs.hardware import LaunchOverhead

    return revalidate(gpu, launch=LaunchOverhead(source="test", mode=mode, overhead_s=overhead_s))


@pytest.mark.parametrize(("name", "degrees", "recompute"), [
    ("tiny-moe-mla", dict(), "none"),
    ("deepseek-v3", dict(pp=16, ep=64, dp=128), "selective"),
    ("gpt3-175b", dict(tp=8, dp=2, attention_kernel="unfused"), "full"),
])
def test_launch_overhead_adds_when_synchronous_and_floors_when_asynchronous(name, degrees, recompute) -> None:
    """Per phase of every piece: synchronous = device time + launches x overhead (exactly,
    1e-12 relative), launches by op_launches (forward one per op; dgrad in B and wgrad in W
    per weight GEMM; two input grads in B for an activation GEMM; one backward kernel in B
    otherwise; recomputed ops launch again in B); asynchronous = device time when the
    overhead is below every kernel, launches x overhead when it is above every kernel."""
    from planner.costmodel.compute import op_launches, piece_time
    from planner.presets import load_gpu
    from planner.specs.plan import Recompute

    model, plan = load_model(name), Plan(recompute=recompute, **degrees)
    workload = Workload(global_batch_size=plan.dp * 4, seq_length=512)
    gpu = load_gpu("h800-sxm-80gb")
    assert gpu.launch is None
    overhead = 7e-6
    for piece in set(model_pieces(model)):
        ops = piece_ops(model, plan, workload, piece)
        # Device time alone: a launch block turns the routed experts' host floor off
        # (expert_host_s), and an asynchronous 1e-15 s launch floors nothing.
        base = piece_time(ops, _with_launch(gpu, "asynchronous", 1e-15), workload.precision, plan.recompute)
        sync = piece_time(ops, _with_launch(gpu, "synchronous", overhead), workload.precision, plan.recompute)
        f, b, w = (sum(op_launches(op)[i] for op in ops) for i in range(3))
        redone = [op for op in ops if plan.recompute is Recompute.FULL
                  or (plan.recompute is Recompute.SELECTIVE and op.recompute_selective)]
        assert f == len(ops) and f > 0 and b >= f and 0 <= w < f
        assert sync.forward_s == pytest.approx(base.forward_s + f * overhead, rel=1e-12)
        assert sync.backward_input_s == pytest.approx(
            base.backward_input_s + (b + len(redone)) * overhead, rel=1e-12)
        assert sync.backward_weight_s == pytest.approx(base.backward_weight_s + w * overhead, rel=1e-12)
        assert sync.recompute_s == pytest.approx(base.recompute_s + len(redone) * overhead, rel=1e-12)
        plain = piece_time(ops, gpu, workload.precision, plan.recompute)  # no launch block
        if any(op.per_expert for op in ops):  # the expert host floor only ever adds
            phases = ("forward_s", "backward_input_s", "backward_weight_s")
            assert all(getattr(plain, name) >= getattr(base, name) for name in phases)
        else:
            assert plain == base
        huge = piece_time(ops, _with_launch(gpu, "asynchronous", 1.0), workload.precision, plan.recompute)
        assert (huge.forward_s, huge.backward_input_s, huge.backward_weight_s) == pytest.approx(
            (f, b + len(redone), w), rel=1e-12)


def test_op_launches_per_kind() -> None:
    """Weight GEMM: forward, dgrad (B), wgrad (W); activation GEMM (unfused QK^T): forward and
    two input gradients (B); attention core and memory-bound ops: forward and one backward."""
    from planner.costmodel.compute import op_launches

    workload = Workload(global_batch_size=1, seq_length=64)
    model = load_model("tiny-dense")
    unfused = {op.name: op for op in piece_ops(model, Plan(attention_kernel="unfused"), workload, Piece.DENSE)}
    flash = {op.name: op for op in piece_ops(model, Plan(), workload, Piece.DENSE)}
    assert op_launches(flash["qkv"]) == (1, 1, 1)
    assert op_launches(unfused["attn_scores"]) == (1, 2, 0)
    assert op_launches(flash["core_attention"]) == (1, 1, 0)
    assert op_launches(flash["attn_norm"]) == (1, 1, 0)


def test_op_forward_s_adds_or_floors_one_launch() -> None:
    from planner.costmodel.compute import op_forward_s
    from planner.presets import load_gpu

    gpu = load_gpu("h800-sxm-80gb")
    workload = Workload(global_batch_size=1, seq_length=64)
    op = piece_ops(load_model("tiny-dense"), Plan(), workload, Piece.DENSE)[0]
    precision = workload.precision
    device = op_forward_s(op, gpu, precision, 1.0)
    synchronous = op_forward_s(op, _with_launch(gpu, "synchronous", 1e-3), precision, 1.0)
    assert synchronous == pytest.approx(device + 1e-3)
    assert op_forward_s(op, _with_launch(gpu, "asynchronous", 1e-3), precision, 1.0) == 1e-3
    assert op_forward_s(op, _with_launch(gpu, "asynchronous", device / 2), precision, 1.0) == device


def _grouped_expert_gemm(rows_per_expert: float, n: float, k: float, experts: int):
    """A routed-expert GEMM op: one (rows x n x k) GEMM per local expert."""
    from planner.costmodel.compute import Op

    flops = 2.0 * rows_per_expert * n * k * experts
    return Op("experts", OpKind.GEMM, flops, (rows_per_expert, n, k), experts, fp8=True, per_expert=True)


def test_expert_gemm_host_floor_matches_te_multi_stream_benchmark() -> None:
    """TransformerEngine PR #3134 (SM100, benchmark_grouped_linear.py): TE's per-expert
    multi-stream cuBLASLt grouped GEMM, 8 experts x 128 rows, N = K = 2048, operands prepared
    ("pure"): 0.267 ms. The model's device time for those 8.6 GFLOP is a small fraction of
    that, so the routed-expert floor sets the time of each phase (fprop, dgrad, wgrad):
    within 5% of the measurement. (Tolerance 5%: the measurement is a single figure.)"""
    from planner.costmodel.compute import piece_time
    from planner.presets import load_gpu
    from planner.specs.plan import Precision, Recompute

    gpu = load_gpu("b200")
    op = _grouped_expert_gemm(128, 2048, 2048, 8)
    device = piece_time((op,), _with_launch(gpu, "asynchronous", 1e-15), Precision.BF16, Recompute.NONE)
    assert device.forward_s < 0.2 * 0.267e-3
    t = piece_time((op,), gpu, Precision.BF16, Recompute.NONE)
    for phase_s in (t.forward_s, t.backward_input_s, t.backward_weight_s):
        assert phase_s == pytest.approx(0.267e-3, rel=0.05)


def test_expert_gemm_floor_hidden_at_deepseek_v3_ep32_grouped_gemm() -> None:
    """NVIDIA's DeepSeek-V3 GB200 guide (Megatron-LM docs/discussions/
    deepseek-v3-gb200-optimization §1): TE's MXFP8 multi-stream + cuBLAS grouped GEMM
    "can achieve 2,672 TFLOP/s (flush L2) on the shape K=7,168, N=2,048". The guide gives no
    M; TE's benchmark for that shape (benchmarks/linear/benchmark_grouped_linear.py,
    "Deepseek V3 EP32": 8 local experts, M = 65536 rows) is taken. The GB200 FP8 curve
    (plateau from dense cuBLASLt anchors, gb200.yaml) gives the rate within 5%, and the
    expert host floor with FP8 quantisation stays below the GEMM's device time (a floor that
    bound here would contradict the measured rate)."""
    from planner.costmodel.compute import expert_host_s, gemm_efficiency, piece_time
    from planner.presets import load_gpu
    from planner.specs.hardware import Dtype
    from planner.specs.plan import Precision, Recompute

    gpu = load_gpu("gb200")
    op = _grouped_expert_gemm(65536 / 8, 2048, 7168, 8)
    rate = gpu.peak(Dtype.FP8) * gemm_efficiency(gpu, Dtype.FP8, op.shape)
    assert rate == pytest.approx(2672e12, rel=0.05)
    device = piece_time((op,), _with_launch(gpu, "asynchronous", 1e-15), Precision.FP8, Recompute.NONE)
    host_f, host_b, host_w = expert_host_s(op, gpu, Precision.FP8)
    assert max(host_f, host_b) < device.forward_s and host_w < device.backward_weight_s


@pytest.mark.parametrize("gpu_name", ["h100-sxm-80gb", "h800-sxm-80gb", "h100-sxm-95gb-500w", "b200", "gb200"])
def test_fp8_gemm_never_slower_than_bf16(gpu_name):
    """FP8's own size curve (a longer half dimension on Hopper) must not price a small FP8
    GEMM below the same GEMM in BF16; large FP8 GEMMs keep the FP8 curve (H100: 680^3 is
    about where the two cross)."""
    from planner.costmodel.compute import gemm_efficiency, gemm_rate
    from planner.presets import load_gpu
    from planner.specs.hardware import Dtype
    gpu = load_gpu(gpu_name)
    for n in (64, 128, 256, 512, 1024, 2048, 8192):
        for shape in ((n, n, n), (n, 4096, 4096), (4096, n, 2048)):
            fp8, bf16 = gemm_rate(gpu, Dtype.FP8, shape), gemm_rate(gpu, Dtype.BF16, shape)
            assert fp8 >= bf16
            assert fp8 == max(gpu.peak(Dtype.FP8) * gemm_efficiency(gpu, Dtype.FP8, shape), bf16)
    big = (16384, 16384, 16384)
    assert gemm_rate(gpu, Dtype.FP8, big) == gpu.peak(Dtype.FP8) * gemm_efficiency(gpu, Dtype.FP8, big)
