"""FP8 Linear quantisation traffic of a dense layer, counted as Transformer Engine's kernels
move it on Hopper (data/costmodel/compute.yaml, fp8_*: TE docs "Performance considerations",
TE layernorm_linear.py / linear.py, torchao float8 roofline_utils.py):

- every FP8 Linear quantises its input once in forward into row-wise and column-wise FP8
  (read 2 B, write 1 + 1 B), or, behind a norm (LayerNormLinear), only transposes the norm's
  FP8 output (read 1 B, write 1 B);
- every FP8 Linear quantises its output gradient once in backward (read 2 B, write 1 + 1 B).

The expected bytes are recomputed here from the layer's Linear shapes (not from the op
list), so a missing or doubled cast fails the test; exact to float rounding (rel 1e-12)."""

from __future__ import annotations

import pytest

from planner import load_gpu, load_model
from planner.costmodel.compute import OpKind, piece_ops, piece_time
from planner.costmodel.partition import Piece
from planner.specs import Plan, Workload

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
