"""Compute time of one micro-batch through one model piece on one GPU, op by op: the ops
come from :mod:`planner.costmodel.ops` (GEMMs with their per-GPU (m, n, k), the
flash-attention core, memory-bound kernels with the HBM bytes they move).

Timing (DESIGN.md §4): a GEMM takes ``2mnk / (peak(dtype) * eff(m, n, k))`` with the GPU
preset's efficiency model; FP8 plans run the Linear GEMMs (Fprop, Dgrad, Wgrad) in FP8 and
keep embedding, head, router and attention in BF16 (DeepSeek-V3 §3.3.1). Backward: every
GEMM costs the same shape again for the input gradient (B) and for the weight gradient
(W), an FP8 one at the GPU's split-accumulation rate where it sets one
(:func:`backward_gemm_rate`); attention backward is ``attention_backward_flops_ratio`` x
its forward FLOPs (B only); memory-bound kernels move twice their forward bytes in backward
(B) unless they state their backward bytes (:attr:`Op.backward_bytes`). Recomputation adds
forward work to B: ``full`` the whole piece, ``selective`` the ops of the modules
:func:`selective_modules` names (Megatron-Core ``recompute_modules``: each op states the
modules it belongs to, :attr:`Op.modules`), or under TorchTitan's op-level SAC the share of
each op it repeats (:attr:`Op.recompute_share`).

MoE routed experts: the expert GEMMs are issued one per local expert after the layer's
tokens-per-expert device-to-host sync, so each phase takes at least the host's work for
them: per expert one GEMM through TE's multi-stream cuBLASLt path (about
33 us, measured) and, under FP8, the per-expert quantisation calls (:func:`expert_host_s`,
constants in data/costmodel/compute.yaml): a floor that binds for many small experts per GPU.

Host overhead: a GPU preset with a ``launch`` block charges its host seconds per kernel
launch (:func:`op_launches`: one per op in forward, dgrad + wgrad per weight GEMM, one per
other backward kernel), added to the device time on a synchronous device (eager PyTorch on
CPU), a floor under it on an asynchronous one (CUDA); without the block ops take their
device time.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.costmodel.ops import (  # re-exported: the op model is part of this module's interface
    BF16_BYTES,
    FP32_BYTES,
    Op,
    OpKind,
    Shard,
    attention_ops,
    compute_constants,
    dense_ffn_ops,
    embedding_ops,
    expert_load_factor,
    head_ops,
    moe_ops,
    permute_rows,
    piece_ops,
    selective_modules,
)
from planner.errors import UnsupportedError
from planner.specs.hardware import Dtype, GPUSpec, LaunchMode
from planner.specs.plan import Precision, Recompute


@dataclass(frozen=True)
class PieceTime:
    """Seconds of one piece for one micro-batch on one GPU."""

    forward_s: float
    backward_input_s: float
    """Input gradients, attention backward, memory-bound backward, and recomputation."""
    backward_weight_s: float
    recompute_s: float
    """Of ``backward_input_s``, the repeated forward work."""

    def __add__(self, other: PieceTime) -> PieceTime:
        return PieceTime(
            self.forward_s + other.forward_s,
            self.backward_input_s + other.backward_input_s,
            self.backward_weight_s + other.backward_weight_s,
            self.recompute_s + other.recompute_s,
        )


ZERO_TIME = PieceTime(0.0, 0.0, 0.0, 0.0)


def gemm_rate(gpu: GPUSpec, dtype: Dtype, shape: tuple[float, float, float]) -> float:
    """FLOP/s a GEMM of ``shape`` in ``dtype`` reaches: ``peak(dtype) * gemm_efficiency``.
    An FP8 GEMM is never priced below the same GEMM in BF16: FP8's longer size curve (its
    own half dimension) would otherwise make small FP8 GEMMs slower than BF16 ones (below
    about 680^3 on H100), which no measurement shows (the FP8 tensor-core rate is twice
    BF16's at every tile)."""
    rate = gpu.peak(dtype) * gemm_efficiency(gpu, dtype, shape)
    if dtype is Dtype.FP8:
        rate = max(rate, gpu.peak(Dtype.BF16) * gemm_efficiency(gpu, Dtype.BF16, shape))
    return rate


def backward_gemm_rate(gpu: GPUSpec, dtype: Dtype, shape: tuple[float, float, float]) -> float:
    """FLOP/s of a Linear's dgrad and wgrad GEMMs: :func:`gemm_rate`, times the GPU's
    ``fp8_split_accumulation_fraction`` for FP8 (Transformer Engine runs FP8 dgrad and wgrad
    with split accumulation and Fprop without: ``_2X_ACC_FPROP = False``, ``_2X_ACC_DGRAD =
    _2X_ACC_WGRAD = True`` in transformer_engine/pytorch/module/base.py, the same
    ``use_split_accumulator`` in its DelayedScaling and Float8CurrentScaling recipes; torchao
    float8 ``gemm_config_output`` fast-accumulating, grad_input and grad_weight not), never
    below the same GEMM in BF16 (as :func:`gemm_rate`)."""
    rate = gemm_rate(gpu, dtype, shape)
    fraction = _efficiency(gpu).fp8_split_accumulation_fraction
    if dtype is Dtype.FP8 and fraction is not None:
        rate = max(rate * fraction, gpu.peak(Dtype.BF16) * gemm_efficiency(gpu, Dtype.BF16, shape))
    return rate


def gemm_efficiency(gpu: GPUSpec, dtype: Dtype, shape: tuple[float, float, float]) -> float:
    """Share of ``gpu``'s ``dtype`` peak a GEMM of ``shape`` reaches: the format's plateau
    times ``x / (x + h)`` per dimension, ``h`` the format's half dimension
    (:meth:`~planner.specs.hardware.GPUEfficiency.half_dim`; FP8 has its own on Hopper)."""
    eff = _efficiency(gpu)
    try:
        plateau = eff.gemm_max_fraction[dtype]
    except KeyError:
        raise UnsupportedError(f"{gpu.name} has no GEMM efficiency for {dtype}") from None
    half = eff.half_dim(dtype)
    scale = 1.0
    for x in shape:
        scale *= x / (x + half)
    return plateau * scale


def attention_rates(gpu: GPUSpec, op: Op) -> tuple[float, float]:
    """Forward and backward FLOP/s of an attention core ``op``: the BF16 peak times the GPU's
    attention fractions, scaled down by its measured shape curve (:class:`~planner.specs.
    hardware.AttentionShape`) from the reference shape to the op's (query tiles, sequence length)."""
    eff = _efficiency(gpu)
    peak = gpu.peak(Dtype.BF16)
    forward, backward = peak * eff.attention_forward_fraction, peak * eff.attention_backward_fraction
    shape = eff.attention_shape
    tiles, seq = op.attention_shape
    if shape is None or tiles <= 0 or seq <= 0:
        return forward, backward

    def curve(t: float, s: float, i: int) -> float:
        t, s = max(t, shape.min_tiles), max(s, shape.min_seq)  # within the measured range
        t_half = shape.half_tiles_per_sm[i] * gpu.num_sms
        return t / (t + t_half) * s / (s + shape.half_seq[i])

    # Only ever lowered: past the reference shape the measured rates stop rising (65k-131k
    # keys on the H100: 0.51-0.63 forward, 0.49-0.56 backward, against 0.62 / 0.58 at 16k).
    scale = [min(1.0, curve(tiles, seq, i) / curve(shape.reference_tiles, shape.reference_seq, i)) for i in (0, 1)]
    return forward * scale[0], backward * scale[1]


def _efficiency(gpu: GPUSpec):
    if gpu.efficiency is None:
        raise UnsupportedError(f"GPU {gpu.name} has no efficiency data (efficiency: block in its preset)")
    return gpu.efficiency


def expert_host_s(op: Op, gpu: GPUSpec, precision: Precision) -> tuple[float, float, float]:
    """Host seconds a routed-expert GEMM op needs in forward, backward-input (B) and
    backward-weight (W): per local expert its GEMM through Transformer Engine's multi-stream
    cuBLASLt path (``moe_expert_gemm_host_us``, measured) and, under FP8, the quantisation
    of its operand (forward: the input; B: the output gradient; W reuses both;
    ``moe_expert_fp8_quantize_calls`` host calls of ``moe_expert_host_call_us``), all in
    data/costmodel/compute.yaml. After the MoE layer's tokens-per-expert sync the host cannot
    run ahead, so the phase takes at least this long (a floor, as an asynchronous launch).
    Zero for other ops, and on a GPU with a ``launch`` block, whose per-op host time already
    covers the host (:func:`with_launches_s`)."""
    if not op.per_expert or gpu.launch is not None:
        return (0.0, 0.0, 0.0)
    c = compute_constants()
    gemm_s = op.count * c["moe_expert_gemm_calls"] * c["moe_expert_gemm_host_us"] * 1e-6
    quantise_s = 0.0
    if op.fp8 and precision is Precision.FP8:
        quantise_s = op.count * c["moe_expert_fp8_quantize_calls"] * c["moe_expert_host_call_us"] * 1e-6
    return (gemm_s + quantise_s, gemm_s + quantise_s, gemm_s)


def op_launches(op: Op) -> tuple[int, int, int]:
    """Kernel launches of ``op`` in forward, backward-input (B) and backward-weight (W): one
    in forward; a weight GEMM's dgrad (B) and wgrad (W); an activation-by-activation GEMM's
    two input gradients (B); one backward kernel of attention or a memory-bound op (B)."""
    if op.kind is OpKind.GEMM:
        return (1, 1, 1) if op.weight_grad else (1, 2, 0)
    if op.kind is OpKind.MEMORY:
        return (int(op.bytes > 0), int(op.backward_traffic() > 0), 0)
    return (1, 1, 0)


def with_launches_s(device_s: float, launches: int, gpu: GPUSpec) -> float:
    """Seconds of ``launches`` kernels that keep the device busy ``device_s`` in all, with the
    GPU's host launch overhead (:class:`~planner.specs.hardware.LaunchOverhead`): added on a
    synchronous device, a floor on an asynchronous one, nothing without one."""
    launch = gpu.launch
    if launch is None or launches == 0:
        return device_s
    host_s = launches * launch.overhead_s
    if launch.mode is LaunchMode.SYNCHRONOUS:
        return device_s + host_s
    return max(device_s, host_s)


def sustained_fraction(gpu: GPUSpec) -> float:
    """Share of the preset's kernel rates sustained inside a step: the GPU's own fitted
    value, else the one of data/costmodel/compute.yaml."""
    own = _efficiency(gpu).sustained_kernel_fraction
    return compute_constants()["sustained_kernel_fraction"] if own is None else own


def _op_device_s(op: Op, gpu: GPUSpec, precision: Precision, compute_share: float) -> float:
    compute_share *= sustained_fraction(gpu)
    if op.kind is OpKind.MEMORY:
        return _memory_s(op.bytes, gpu)
    if op.kind is OpKind.ATTENTION:
        return op.flops / (attention_rates(gpu, op)[0] * compute_share)
    return op.flops / (gemm_rate(gpu, _op_dtype(op, precision), op.shape) * compute_share)


def _op_dtype(op: Op, precision: Precision) -> Dtype:
    return Dtype.FP8 if (op.fp8 and precision is Precision.FP8) else Dtype(_gemm_dtype(precision))


def _weight_gemm_backward_s(op: Op, gpu: GPUSpec, precision: Precision, compute_share: float) -> float:
    """Device seconds of a weight GEMM's dgrad (and, alike, of its wgrad): the forward's shape
    at :func:`backward_gemm_rate`."""
    compute_share *= sustained_fraction(gpu)
    return op.flops / (backward_gemm_rate(gpu, _op_dtype(op, precision), op.shape) * compute_share)


def _memory_s(nbytes: float, gpu: GPUSpec) -> float:
    """Seconds a memory-bound kernel takes to move ``nbytes`` through HBM."""
    return nbytes / (gpu.hbm_bandwidth_bytes_per_s * _efficiency(gpu).hbm_fraction)


def op_forward_s(op: Op, gpu: GPUSpec, precision: Precision, compute_share: float) -> float:
    """Forward seconds of ``op`` (one launch); ``compute_share`` is the fraction of SMs left to compute."""
    return with_launches_s(_op_device_s(op, gpu, precision, compute_share), 1, gpu)


def _gemm_dtype(precision: Precision) -> str:
    return "fp16" if precision is Precision.FP16 else "bf16"


def piece_time(
    ops: tuple[Op, ...], gpu: GPUSpec, precision: Precision, recompute: Recompute, compute_share: float = 1.0
) -> PieceTime:
    """Forward, backward-input and backward-weight seconds of a piece's ops, each phase's
    device time with its launches (:func:`op_launches`, :func:`with_launches_s`)."""
    bwd_ratio = compute_constants()["attention_backward_flops_ratio"]
    fwd = b = w = rec = 0.0
    for op in ops:
        t = _op_device_s(op, gpu, precision, compute_share)
        f_launches, b_launches, w_launches = op_launches(op)
        # Activation-by-activation GEMM: both operands' gradients.
        b_device_s, w_device_s = 2 * t, 0.0
        if op.kind is OpKind.MEMORY:
            b_device_s = _memory_s(op.backward_traffic(), gpu)
        elif op.kind is OpKind.GEMM and op.weight_grad:
            # dgrad and wgrad: the same (m, n, k) up to a permutation, FP8 split-accumulating
            b_device_s = w_device_s = _weight_gemm_backward_s(op, gpu, precision, compute_share)
        elif op.kind is OpKind.ATTENTION:
            b_device_s = bwd_ratio * op.flops / (attention_rates(gpu, op)[1] * compute_share)
        host_f, host_b, host_w = expert_host_s(op, gpu, precision)
        t = max(t, host_f)
        b_device_s, w_device_s = max(b_device_s, host_b), max(w_device_s, host_w)
        fwd += with_launches_s(t, f_launches, gpu)
        b += with_launches_s(b_device_s, b_launches, gpu)
        w += with_launches_s(w_device_s, w_launches, gpu)
        if recompute is Recompute.FULL:
            rec += with_launches_s(t, f_launches, gpu)
        elif recompute is Recompute.SELECTIVE and op.recompute_selective:
            rec += with_launches_s(t, f_launches, gpu) * op.recompute_share
    return PieceTime(fwd, b + rec, w, rec)


def piece_model_flops(ops: tuple[Op, ...]) -> float:
    """Forward FLOPs of the GEMMs and attention core (for checks against flops.py)."""
    return sum(op.flops for op in ops)


__all__ = [
    "BF16_BYTES", "FP32_BYTES", "Op", "OpKind", "PieceTime", "Shard", "attention_ops", "backward_gemm_rate",
    "compute_constants", "dense_ffn_ops", "embedding_ops", "expert_host_s", "expert_load_factor",
    "gemm_efficiency", "gemm_rate", "head_ops", "moe_ops", "op_forward_s", "op_launches", "permute_rows",
    "piece_model_flops", "piece_ops", "piece_time", "selective_modules", "with_launches_s",
]
