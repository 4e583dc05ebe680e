"""FP8 Linear quantisation traffic of a dense layer, counted as Transformer Engine's kernels
move it on Hopper (data/costmodel/compute.yaml, fp8_*: TE docs "Performance considerations",
TE layernorm_linear.py / linear.py, torchao float8 roofline_utils.py):

- every FP8 Linear quantises its input once in forward into row-wise and column-wise FP8
  (read 2 B, write 1 + 1 B), or, behind a norm (LayerNormLinear), only transposes the norm's
  FP8 output (read 1 B, write 1 B);
- every FP8 Linear quantises its output gradient once in backward (read 2 B, write 1 + 1 B).

The expected bytes are recomputed here from the layer's Linear shapes (not from the op
list), so a missing or doubled cast fails the test; exact to float rounding (rel 1e-12).
The FP8 dgrad and wgrad GEMMs run with split accumulation, slower than Fprop where the GPU's
FP8 rate is a fast-accumulation measurement (H100)."""

from __future__ import annotations

import pytest

from planner import load_gpu, load_model
from planner.costmodel.compute import (
    OpKind, backward_gemm_rate, gemm_efficiency, gemm_rate, piece_ops, piece_time,
)
from planner.costmodel.partition import Piece
from planner.specs import Plan, Workload
from planner.specs.hardware import Dtype

SEQ = 4096


def _dense(name: str, precision: str, **degrees):
    model = load_model(name)
    plan = Plan(**degrees)
    workload = Workload(global_batch_size=plan.dp * 8, seq_length=SEQ, precision=precision)
    return model, plan, piece_ops(model, plan, workload, Piece.DENSE)


@pytest.mark.parametrize(("name", "degrees"), [
    ("llama3-8b", dict(dp=8)),
    ("llama3-70b", dict(tp=4, dp=2, sequence_parallel=True)),
])
def test_fp8_quantisation_bytes_follow_te_kernels(name: str, degrees: dict) -> None:
    model, plan, ops = _dense(name, "fp8", **degrees)
    t, T, d = plan.tp, SEQ * plan.micro_batch_size / plan.cp, model.hidden_size
    qkv_out = (model.num_attention_heads + 2 * model.kv_heads) * model.kv_channels / t
    attn_out_in = model.num_attention_heads * model.kv_channels / t
    ffn = model.ffn_hidden_size / t
    # (input elements, norm-fused?, output elements) of QKV, out-proj, FC1 (gate+up), FC2
    linears = [(T * d, True, T * qkv_out), (T * attn_out_in, False, T * d),
               (T * d, True, T * 2 * ffn), (T * ffn, False, T * d)]
    forward = sum(n * (2.0 if fused else 4.0) for n, fused, _ in linears)
    backward = sum(4.0 * out for *_, out in linears)
    casts = [op for op in ops if "cast" in op.name]
    assert sum(op.bytes for op in casts) == pytest.approx(forward, rel=1e-12)
    assert sum(op.backward_traffic() for op in casts) == pytest.approx(backward, rel=1e-12)
    # one output-gradient quantisation per FP8 weight GEMM, of exactly its output
    gemm_outputs = sorted(op.shape[0] * op.shape[1] for op in ops if op.kind is OpKind.GEMM and op.fp8)
    grad_casts = sorted(op.backward_traffic() / 4.0 for op in casts if op.bytes == 0)
    assert grad_casts == pytest.approx(gemm_outputs, rel=1e-12)


def test_bf16_layer_has_no_casts() -> None:
    _, _, ops = _dense("llama3-8b", "bf16", dp=8)
    assert not [op for op in ops if "cast" in op.name]


def test_backward_only_kernel_costs_nothing_in_forward() -> None:
    """An output-gradient quantisation adds no forward time and, in backward, its bytes at the
    preset's HBM rate (hbm_bandwidth x hbm_fraction)."""
    model, plan, ops = _dense("llama3-8b", "fp8", dp=8)
    gpu = load_gpu("h100-sxm-80gb")
    grad_cast = next(op for op in ops if op.name == "qkv_grad_cast")
    time = piece_time((grad_cast,), gpu, Workload(global_batch_size=8, seq_length=SEQ, precision="fp8").precision,
                      plan.recompute)
    rate = gpu.hbm_bandwidth_bytes_per_s * gpu.efficiency.hbm_fraction
    assert time.forward_s == 0.0 and time.backward_weight_s == 0.0
    assert time.backward_input_s == pytest.approx(grad_cast.backward_traffic() / rate, rel=1e-12)
    assert grad_cast.backward_traffic() > 0


@pytest.mark.parametrize(("gpu_name", "precision", "fraction"), [
    ("h100-sxm-80gb", "fp8", 0.95),  # measured split / fast accumulation (tests/test_h100_measured.py)
    ("h800-sxm-80gb", "fp8", None),  # in-training rate: already that of every FP8 GEMM
    ("b200", "fp8", None),  # sm100: no fast-accumulation mode
    ("h100-sxm-80gb", "bf16", None),  # BF16 GEMMs: no FP8 accumulation modes
])
def test_fp8_dgrad_wgrad_split_accumulate(gpu_name: str, precision: str, fraction: float | None) -> None:
    """Transformer Engine runs FP8 Fprop with fast accumulation and dgrad / wgrad with split
    (FP32-promoted) accumulation (module/base.py _2X_ACC_*; data/hardware/gpus/h100-sxm-80gb.yaml):
    on a GPU whose FP8 rate is a fast-accumulation measurement each weight GEMM's B and W take
    its forward time / fraction (exact to rel 1e-12), elsewhere its forward time exactly."""
    model, plan, ops = _dense("llama3-8b", precision, dp=8)
    gpu = load_gpu(gpu_name)
    if precision == "fp8":
        assert gpu.efficiency.fp8_split_accumulation_fraction == fraction
    wl = Workload(global_batch_size=8, seq_length=SEQ, precision=precision)
    gemms = [op for op in ops if op.kind is OpKind.GEMM]
    assert len(gemms) == 4 and all(op.fp8 for op in gemms)  # Linears (FP8 under an fp8 workload)
    for op in gemms:
        time = piece_time((op,), gpu, wl.precision, plan.recompute)
        ratio = 1.0 if fraction is None else 1.0 / fraction
        assert time.backward_input_s == pytest.approx(time.forward_s * ratio, rel=1e-12)
        assert time.backward_weight_s == time.backward_input_s
    # the LM head stays BF16 under FP8 (DeepSeek-V3 §3.3.1): no split-accumulation cost
    head = next(op for op in piece_ops(model, plan, wl, Piece.HEAD) if op.kind is OpKind.GEMM)
    time = piece_time((head,), gpu, wl.precision, plan.recompute)
    assert time.backward_input_s == time.forward_s == time.backward_weight_s


def test_split_accumulating_fp8_gemm_never_below_bf16() -> None:
    """A small FP8 GEMM's split-accumulation rate is floored at the same GEMM in BF16 (as
    compute.gemm_rate floors FP8's forward rate), and a large one is the FP8 rate x fraction."""
    gpu = load_gpu("h100-sxm-80gb")
    fraction = gpu.efficiency.fp8_split_accumulation_fraction
    small, large = (256.0, 256.0, 256.0), (8192.0, 14336.0, 4096.0)
    bf16 = gpu.peak(Dtype.BF16) * gemm_efficiency(gpu, Dtype.BF16, small)
    assert backward_gemm_rate(gpu, Dtype.FP8, small) == bf16
    expected = gemm_rate(gpu, Dtype.FP8, large) * fraction
    assert backward_gemm_rate(gpu, Dtype.FP8, large) == pytest.approx(expected, rel=1e-12)
    assert backward_gemm_rate(gpu, Dtype.BF16, large) == gemm_rate(gpu, Dtype.BF16, large)
    with pytest.raises(ValueError):
        gpu.efficiency.model_validate({**gpu.efficiency.model_dump(), "fp8_split_accumulation_fraction": 1.2})


def test_rotary_op_only_where_positions_are_rotary():
    """The rotary embedding's memory pass belongs to RoPE models and MLA (whose decoupled key
    is rotary); learned (GPT-3, MPT), ALiBi and position-free models have none."""
    from planner.costmodel.ops import piece_ops
    from planner.specs.model import PositionEmbedding

    workload = Workload(global_batch_size=8, seq_length=2048)
    plan = Plan(tp=1, pp=1, dp=1, micro_batch_size=1)
    names = {}
    for kind in PositionEmbedding:
        model = load_model("llama3-8b").model_copy(update={"position_embedding": kind})
        names[kind] = {op.name for op in piece_ops(model, plan, workload, Piece.DENSE)}
    assert "rope" in names[PositionEmbedding.ROPE]
    assert all("rope" not in names[k] for k in PositionEmbedding if k is not PositionEmbedding.ROPE)
    v3 = load_model("deepseek-v3")
    assert "rope" in {op.name for op in piece_ops(v3, Plan(tp=1, pp=1, dp=1, ep=1), workload, Piece.MOE)}
