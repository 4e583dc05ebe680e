"""TorchTitan's op-level selective activation checkpointing (``recompute_modules = op_sac``):
what backward repeats (every second Linear of a block, the elementwise ops, not the attention
core), what memory keeps (the saved mm and SDPA outputs), where it is refused, and how the
launch arguments treat it. The policy is torchtitan's
``_get_custom_policy`` (distributed/activation_checkpoint.py): save aten.mm outputs except
every second one, SDPA, reduce_scatter, abs/max; recompute the rest."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from planner import load_model
from planner.costmodel import compute as C
from planner.costmodel import op_sac as S
from planner.costmodel.memory import activation_bytes, working_set_bytes
from planner.costmodel.partition import Piece
from planner.errors import UnsupportedError
from planner.launch.emit import megatron_args
from planner.presets import load_gpu, revalidate
from planner.specs import Plan, Recompute, RecomputeModule, Workload

TINY = load_model("tiny-dense")
GPU = load_gpu("h100-sxm-80gb")
OP_SAC = Plan(recompute="selective", recompute_modules=["op_sac"], micro_batch_size=2)
WORKLOADS = {p: Workload(global_batch_size=2, seq_length=64, precision=p) for p in ("bf16", "fp8")}


def test_plan_takes_op_sac_alone_and_only_selective() -> None:
    assert OP_SAC.recompute_modules == (RecomputeModule.OP_SAC,)
    with pytest.raises(ValidationError, match="combines with no other module"):
        Plan(recompute="selective", recompute_modules=["op_sac", "core_attn"])
    with pytest.raises(ValidationError, match="needs recompute 'selective'"):
        Plan(recompute="full", recompute_modules=["op_sac"])


def test_linear_order_and_gemm_shares() -> None:
    """wq wk wv wo w1 w3 w2, the even ones recomputed; GQA's qkv share is wk's width."""
    linears = S.op_sac_linears(TINY)
    assert [lin.name for lin in linears] == ["wq", "wk", "wv", "wo", "w1", "w3", "w2"]
    assert [lin.name for lin in linears if lin.recomputed] == ["wk", "wo", "w3"]
    h, g = TINY.num_attention_heads, TINY.kv_heads
    assert S.op_sac_gemm_shares(TINY) == pytest.approx(
        {"qkv": g / (h + 2 * g), "out_proj": 1.0, "ffn_up_gate": 0.5, "ffn_down": 0.0})
    gelu = load_model("gpt3-175b")
    assert [lin.name for lin in S.op_sac_linears(gelu) if lin.recomputed] == ["wk", "wo", "fc2"]


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_backward_adds_the_named_gemm_shares_and_the_elementwise_forward(precision: str) -> None:
    """recompute_s = wk's share of qkv + wo + w3's half of up_gate + every elementwise op
    with forward traffic but the closing residual add; no attention, no w2."""
    workload = WORKLOADS[precision]
    ops = {op.name: op for op in C.piece_ops(TINY, OP_SAC, workload, Piece.DENSE)}
    fwd = {name: C.op_forward_s(op, GPU, workload.precision, 1.0) for name, op in ops.items()}
    h, g = TINY.num_attention_heads, TINY.kv_heads
    expected = fwd["qkv"] * g / (h + 2 * g) + fwd["out_proj"] + fwd["ffn_up_gate"] / 2
    elementwise = [n for n, op in ops.items()
                   if op.kind is C.OpKind.MEMORY and op.bytes > 0 and n != "ffn_residual"]
    assert "rope" in elementwise and "ffn_swiglu" in elementwise
    assert any(n.endswith("_cast") for n in elementwise) == (precision == "fp8")
    expected += sum(fwd[n] for n in elementwise)
    time = C.piece_time(tuple(ops.values()), GPU, workload.precision, Recompute.SELECTIVE)
    assert time.recompute_s == pytest.approx(expected, rel=1e-12)
    assert not ops["core_attention"].recompute_selective and not ops["ffn_down"].recompute_selective
    none = C.piece_time(tuple(ops.values()), GPU, workload.precision, Recompute.NONE)
    assert time.backward_input_s == pytest.approx(none.backward_input_s + expected, rel=1e-12)
    # TorchTitan checkpoints the transformer blocks only.
    for piece in (Piece.EMBEDDING, Piece.HEAD):
        assert not any(op.recompute_selective for op in C.piece_ops(TINY, OP_SAC, workload, piece))


def test_memory_keeps_the_saved_outputs_between_none_and_full() -> None:
    """Per token of a block: its input, wq and wv outputs, SDPA's output (BF16) and fp32
    log-sum-exp, w1 and w2 outputs, all BF16 whatever the GEMM precision."""
    d, h, g, c, f = (TINY.hidden_size, TINY.num_attention_heads, TINY.kv_heads, TINY.kv_channels,
                     TINY.ffn_hidden_size)
    tokens = 2 * 64
    per_token = 2 * (d + h * c + g * c + h * TINY.v_head_dim + f + d) + 4 * h
    by = {}
    for precision, workload in WORKLOADS.items():
        by[precision] = activation_bytes(TINY, OP_SAC, workload, Piece.DENSE)
        assert by[precision] == pytest.approx(tokens * per_token)
        none = activation_bytes(TINY, revalidate(OP_SAC, recompute="none", recompute_modules=None), workload,
                                Piece.DENSE)
        full = activation_bytes(TINY, revalidate(OP_SAC, recompute="full", recompute_modules=None), workload,
                                Piece.DENSE)
        assert full < by[precision] < none
        assert working_set_bytes(TINY, OP_SAC, workload, Piece.DENSE) == pytest.approx(none - by[precision])
    assert by["bf16"] == by["fp8"]  # torchtitan's measured bf16 and fp8 memory agree (77.0 / 76.8 GiB)


def test_sequence_parallel_keeps_the_reduce_scattered_outputs() -> None:
    """Under TP + SP the row-parallel outputs are kept whole (partial sums) and, since
    reduce_scatter is on the save list, reduce-scattered too."""
    workload = WORKLOADS["bf16"]
    tp = revalidate(OP_SAC, tp=2, sequence_parallel=True)
    no_sp = revalidate(tp, sequence_parallel=False)
    d, tokens = TINY.hidden_size, 2 * 64
    # SP shards the block input (d/2 saved instead of d) and adds wo's and w2's scattered outputs.
    extra = 2 * (-d / 2 + 2 * d / 2)
    assert activation_bytes(TINY, tp, workload, Piece.DENSE) == pytest.approx(
        activation_bytes(TINY, no_sp, workload, Piece.DENSE) + tokens * extra)


@pytest.mark.parametrize("name", ["mixtral-8x7b", "deepseek-v2-lite", "tiny-moe-mla"])
def test_moe_and_mla_models_are_refused(name: str) -> None:
    model = load_model(name)
    plan = revalidate(OP_SAC, ep=1)
    with pytest.raises(UnsupportedError, match="op_sac"):
        C.piece_ops(model, plan, WORKLOADS["bf16"], Piece.EMBEDDING)


def test_unfused_attention_is_refused() -> None:
    plan = revalidate(OP_SAC, attention_kernel="unfused")
    with pytest.raises(UnsupportedError, match="fused"):
        C.piece_ops(TINY, plan, WORKLOADS["bf16"], Piece.DENSE)
    assert S.op_sac_refusal(TINY, OP_SAC) is None


def test_launch_comments_op_sac_instead_of_a_megatron_flag() -> None:
    model = load_model("llama3-8b")
    lines = megatron_args(model, OP_SAC, WORKLOADS["bf16"])
    assert any(line.startswith("#") and "op_sac" in line for line in lines)
    assert not any(line.startswith("--recompute-modules") for line in lines)
    assert "--recompute-granularity selective" in lines
