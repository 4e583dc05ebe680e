"""Memory per GPU of one pipeline rank at its peak: weights, gradients, optimizer states,
activations times the micro-batches in flight, and workspace (DESIGN.md §4).

Weights, gradients and optimizer states, the parameter counts they scale and the
constants of the memory model are in :mod:`planner.costmodel.model_states` (re-exported
here); this module holds the activation model and assembles the rank's peak.

**Activations** follow Korthikanti et al. 2022 (arXiv 2205.05198) §4, derived tensor by
tensor for our architectures instead of the paper's ``34 sbh/t``: flash attention always
(no s^2 scores, only an fp32 log-sum-exp per head), no dropout (Korthikanti's 34 counts two
1-byte masks; none of the modelled LLMs uses dropout), GQA's smaller k/v, MLA's latents
and up-projections, SwiGLU or GELU, MoE with balanced routing (``tokens * top_k / tp * etp``
expert rows per GPU, independent of ep; under real routing the busiest EP rank's,
:func:`~planner.costmodel.ops.expert_load_factor` times that), shared experts, the fp32
softmax of Megatron's vocab-parallel cross entropy, MTP modules (V3 §2.2: two norms, the
2d -> d projection, a block, the shared head). Tokens divide by cp; without sequence
parallelism the tensors of the sequence-parallel region (block inputs, norms) are
replicated over tp.

**Recompute.** ``selective`` drops what Megatron-Core's ``recompute_modules`` would: core
attention (with flash attention, only its log-sum-exp); for MLA models all norms and the
MLA up-projections (V3 §3.2.3); with FP8 the FFN activation output, rebuilt from FP8 inputs
(V3 §3.3.3). TorchTitan's op-level SAC (``op_sac``) keeps what its policy saves instead
(:func:`_op_sac_saved`). ``full`` keeps each block's input only. What a piece recomputes is
alive for one piece at a time during backward and is added once.

**Offloading** (``Plan.cpu_offloading_num_layers``): the offloaded blocks' activations are
on the host at the peak (:mod:`planner.costmodel.offload`).

Left out: the parameter EMA (V3 keeps it in host memory),
the attention-score matrix of non-flash attention.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass

from planner.costmodel.model_states import (  # re-exported: model states are part of this interface
    GPUParams,
    MemoryConstants,
    PrecisionStates,
    StateBytes,
    _piece_counts,
    adam_moment_bytes,
    largest_gemm_weight,
    memory_constants,
    piece_params,
    rank_params,
    state_bytes,
    state_bytes_per_param,
)
from planner.costmodel.offload import offloaded_pieces
from planner.costmodel.op_sac import op_sac_linears
from planner.costmodel.ops import expert_load_factor, selective_modules
from planner.costmodel.partition import Chunk, Partition, Piece
from planner.costmodel.report import MemoryBreakdown
from planner.specs.hardware import GPUSpec
from planner.specs.model import FFNActivation, ModelSpec
from planner.specs.plan import (
    DUAL_SCHEDULES, PipelineSchedule, Plan, Precision, Recompute, RecomputeModule, Workload,
)

# ---------------------------------------------------------------------------------------
# Schedules: micro-batches in flight




def inflight_microbatches(plan: Plan, num_microbatches: int, rank: int, merged: bool = False) -> float:
    """Micro-batches whose activations are alive at the rank's peak.

    Unit: one micro-batch through all of the rank's chunks; for DualPipe and DualPipeV one
    micro-batch through one chunk, which :func:`stage_memory` splits over the rank's two
    chunks as the schedule does. pp == 1: 1.

    - 1F1B: pp - rank warm-up forwards before the first backward (Narayanan et al. 2021).
    - Interleaved (Megatron ``forward_backward_pipelining_with_interleaving``): warm-up
      (pp - rank - 1) * 2 + (vpp - 1) * pp chunk forwards plus the one of the first
      steady step, each 1/vpp of the rank's layers; rank 0 gets pp * (1 + (pp-1)/(pp*vpp)),
      Korthikanti et al. 2022 §4.2.3's factor. With m == pp every forward runs first
      (Megatron: ``all_warmup_microbatches``), so all m micro-batches are alive.
    - ZB1P: bounded by 1F1B's first-stage peak, pp, on every rank (Qi et al. 2023 §3.1:
      deferred W passes keep their inputs on later ranks; V3 Table 2 "PP").
    - DualPipe: pp + 1 chunk-passes (V3 Table 2); dualpipe.py's phases put pp - h of them
      on the rank's shallow chunk and h + 1 on its deep one (h = min(rank, pp-1-rank)).
    - DualPipeV: the same schedule over 2 * pp stages, so 2 * pp + 1 chunk-passes
      (Table 2's PP + 1 with PP counting stages): 2pp - rank on chunk rank, rank + 1 on
      chunk 2pp - 1 - rank.
    - ``merged``: Megatron-Core's combined 1F1B (:func:`planner.costmodel.ep_overlap.applies`)
      warms up one forward more, so that each merged forward and backward are of different
      micro-batches (``num_warmup_microbatches += 1``; :func:`planner.costmodel.schedules.
      raw_programs`): one chunk-pass more under 1F1B and interleaving, and two micro-batches
      at pp == 1.
    All are capped by the micro-batches of the step.
    """
    pp, m, extra = plan.pp, num_microbatches, int(merged)
    if pp == 1:
        return float(min(1 + extra, m))
    schedule = plan.pipeline_schedule
    if schedule is PipelineSchedule.INTERLEAVED:
        if m == pp:
            return float(m)
        chunks = min((pp - rank - 1) * 2 + (plan.vpp - 1) * pp + 1 + extra, m * plan.vpp)
        return chunks / plan.vpp
    if schedule is PipelineSchedule.ZERO_BUBBLE:
        return float(min(pp, m))
    if schedule is PipelineSchedule.DUALPIPE:
        return float(min(pp + 1, m))
    if schedule is PipelineSchedule.DUALPIPEV:
        return float(min(2 * pp + 1, 2 * m))
    return float(min(pp - rank + extra, m))


def _chunk_shares(plan: Plan, rank: int, chunks: tuple[Chunk, ...]) -> list[float]:
    """Share of the in-flight count that each of the rank's chunks holds."""
    pp, schedule = plan.pp, plan.pipeline_schedule
    if schedule is PipelineSchedule.DUALPIPE and len(chunks) == 2:
        h = min(rank, pp - 1 - rank)
        shallow, deep = (pp - h) / (pp + 1), (h + 1) / (pp + 1)
        return [shallow, deep] if chunks[0].index <= chunks[1].index else [deep, shallow]
    if schedule is PipelineSchedule.DUALPIPEV and len(chunks) == 2:
        first, second = (2 * pp - rank) / (2 * pp + 1), (rank + 1) / (2 * pp + 1)
        return [first, second] if chunks[0].index <= chunks[1].index else [second, first]
    return [1.0] * len(chunks)


# ---------------------------------------------------------------------------------------
# Activations


@dataclass(frozen=True)
class Saved:
    """One tensor a piece saves for backward: bytes per token of the micro-batch on one GPU."""

    name: str
    bytes_per_token: float
    recomputed_by: frozenset[RecomputeModule] = frozenset()
    """The selective-recompute modules any one of which rebuilds it (Megatron checkpoints
    a recomputed module at its input, so recomputing a whole block drops its inner parts)."""


def _by(*modules: RecomputeModule) -> frozenset[RecomputeModule]:
    return frozenset(modules)


_LN, _MLA_UP, _ACT = _by(RecomputeModule.LAYERNORM), _by(RecomputeModule.MLA_UP_PROJ), RecomputeModule.MOE_ACT
_MOE, _MLP, _SHARED = RecomputeModule.MOE, RecomputeModule.MLP, RecomputeModule.SHARED_EXPERTS


@dataclass(frozen=True)
class _Formats:
    """Bytes per element. ``cached``: GEMM inputs kept for Wgrad and fc1 outputs kept for
    the activation's backward, FP8 under FP8 plans (V3 §3.3.3 names the MoE's SwiGLU
    inputs; Megatron's ``activation_func_fp8_input_store`` is one flag for every MLP)."""

    act: float
    fp32: float
    cached: float
    attn_out: float
    logit: float
    """Bytes per logit the loss keeps for backward."""


def _formats(workload: Workload) -> _Formats:
    c = memory_constants()
    fp8 = workload.precision is Precision.FP8
    return _Formats(
        act=c.activation_bytes,
        fp32=c.fp32_bytes,
        cached=c.fp8_cache_bytes if fp8 else c.activation_bytes,
        attn_out=c.attention_output_fp8_bytes if fp8 else c.activation_bytes,
        logit=c.cross_entropy_saved_bytes[workload.cross_entropy],
    )


def _seq_div(plan: Plan) -> int:
    """Divisor of tensors in the sequence-parallel region (norms, block inputs)."""
    return plan.tp if plan.sequence_parallel else 1


def _attention_saved(model: ModelSpec, plan: Plan, f: _Formats) -> list[Saved]:
    d, a, tp, sd = model.hidden_size, model.num_attention_heads, plan.tp, _seq_div(plan)
    L = _LN
    saved = [Saved("block input (norm input)", f.act * d / sd), Saved("norm output", f.cached * d / sd, L)]
    mla = model.mla
    if mla is not None:
        if mla.q_lora_rank:
            r_q = mla.q_lora_rank
            saved += [Saved("c_q latent", f.act * r_q / sd), Saved("c_q norm out", f.cached * r_q / sd, L)]
        saved += [
            Saved("kv latent c_kv + k_rope", f.act * (mla.kv_lora_rank + mla.qk_rope_head_dim) / sd),
            Saved("kv latent norm output", f.cached * mla.kv_lora_rank / sd, L),
            Saved("q (up-projected)", f.act * a * mla.qk_head_dim / tp, _MLA_UP),
            Saved("k (up-projected)", f.act * a * mla.qk_head_dim / tp, _MLA_UP),
            Saved("v (up-projected)", f.act * a * mla.v_head_dim / tp, _MLA_UP),
        ]
    else:
        c, g = model.kv_channels, model.kv_heads
        if model.qk_norm:
            saved.append(Saved("q/k norm inputs", f.act * (a + g) * c / tp))
        saved += [Saved("q", f.act * a * c / tp), Saved("k, v", f.act * 2 * g * c / tp)]
    saved += [
        Saved("attention output", f.attn_out * a * model.v_head_dim / tp),
        Saved("softmax log-sum-exp", f.fp32 * a / tp, _by(RecomputeModule.CORE_ATTN)),
    ]
    return saved


def _ffn_saved(model: ModelSpec, size: float, f: _Formats, prefix: str, whole: frozenset[RecomputeModule],
               rows: float = 1.0) -> list[Saved]:
    """One FFN of intermediate ``size`` (already divided by its TP) on ``rows`` per token:
    the fc1 output (gate and up for SwiGLU) and the activation output (fc2's input);
    ``whole``: the modules that recompute the whole FFN."""
    gated = model.ffn_activation is FFNActivation.SWIGLU
    return [
        Saved(f"{prefix} fc1 output", rows * f.cached * (2 if gated else 1) * size, whole),
        Saved(f"{prefix} activation output", rows * f.cached * size, whole | {_ACT}),
    ]


def _ffn_side_saved(model: ModelSpec, plan: Plan, moe: bool, f: _Formats, load: float = 1.0) -> list[Saved]:
    d, tp, sd = model.hidden_size, plan.tp, _seq_div(plan)
    saved = [Saved("FFN norm input", f.act * d / sd)]
    if not moe:
        saved.append(Saved("FFN norm output", f.cached * d / sd, _LN))
        return saved + _ffn_saved(model, model.ffn_hidden_size / tp, f, "FFN", _by(_MLP))
    spec = model.moe
    # The router runs in BF16 (V3 §3.3.1) on the norm output; shared experts need an FP8
    # copy of it when the plan is FP8.
    norm_out = f.act + (f.cached if spec.num_shared_experts and f.cached != f.act else 0)
    # MoE with TP splits the tokens over tp (Megatron requires sequence parallelism there).
    # Balanced routing: a GPU receives tokens * top_k / tp rows from its EP group, and the
    # expert-TP group all-gathers them (x etp), each row computing size / etp; the busiest
    # EP rank under real routing ``load`` times that (ops.expert_load_factor).
    rows = spec.top_k * plan.expert_tp / tp * load
    saved += [
        Saved("FFN norm output", norm_out * d / sd, _LN),
        Saved("router scores", (f.fp32 * spec.num_experts) / tp, _by(_MOE)),
        Saved("expert inputs (dispatched)", rows * f.cached * d, _by(_MOE)),
        Saved("expert indices and probabilities", rows * memory_constants().token_index_bytes, _by(_MOE)),
    ]
    saved += _ffn_saved(model, spec.expert_ffn_hidden_size / plan.expert_tp, f, "expert", _by(_MOE), rows)
    if spec.num_shared_experts:
        size = spec.num_shared_experts * spec.shared_ffn_hidden_size / tp
        saved += _ffn_saved(model, size, f, "shared expert", _by(_MOE, _SHARED))
    return saved


def _head_saved(model: ModelSpec, plan: Plan, f: _Formats) -> list[Saved]:
    d, sd, logits = model.hidden_size, _seq_div(plan), model.vocab_size / plan.tp
    return [
        Saved("final norm input", f.act * d / sd),
        Saved("final norm output (head input, BF16)", f.act * d / sd, _LN),
        # Megatron's vocab-parallel cross entropy saves the fp32 softmax, a fused kernel the
        # 16-bit logits (Workload.cross_entropy; see the YAML).
        Saved("logits or their softmax, for the loss", f.logit * logits),
    ]


def saved_tensors(model: ModelSpec, plan: Plan, workload: Workload, piece: Piece) -> list[Saved]:
    """Every tensor ``piece`` saves for backward when nothing is recomputed."""
    f = _formats(workload)
    if piece is Piece.EMBEDDING:
        return []  # the lookup saves only token ids; its output is the first block's input
    if piece is Piece.HEAD:
        return _head_saved(model, plan, f)
    moe = piece is Piece.MOE or (piece is Piece.MTP and model.moe is not None)
    block = _attention_saved(model, plan, f) + _ffn_side_saved(model, plan, moe, f,
                                                               expert_load_factor(plan, workload))
    if piece is not Piece.MTP:
        return block
    d, sd = model.hidden_size, _seq_div(plan)
    return [
        Saved("MTP enorm/hnorm inputs", f.act * 2 * d / sd),
        Saved("MTP projection input", f.cached * 2 * d / sd, _LN),
        *block,
        *_head_saved(model, plan, f),
    ]


def _op_sac_saved(model: ModelSpec, plan: Plan, f: _Formats) -> list[Saved]:
    """What TorchTitan's op-level SAC keeps of a dense block (torchtitan
    ``_get_custom_policy``'s save list): the block's input (the checkpoint's), the outputs of
    the Linears it does not recompute (:func:`~planner.costmodel.op_sac.op_sac_linears`) and of
    SDPA (its output and fp32 log-sum-exp), each as produced, in BF16 (torchao's float8
    Linear returns its input's dtype): column-parallel outputs split over tp, row-parallel
    ones whole (partial sums before their reduction); with sequence parallelism also the
    reduce-scattered outputs of the row-parallel Linears (``reduce_scatter_tensor`` is on
    the save list). The FP8 casts' amax scalars (``abs``, ``max``) are negligible."""
    d, a, tp, sd = model.hidden_size, model.num_attention_heads, plan.tp, _seq_div(plan)
    saved = [Saved("block input (checkpoint input)", f.act * d / sd)]
    for lin in op_sac_linears(model):
        if not lin.recomputed:
            saved.append(Saved(f"{lin.name} output", f.act * lin.out_width / (1 if lin.row_parallel else tp)))
        if lin.row_parallel and plan.sequence_parallel and tp > 1:
            saved.append(Saved(f"{lin.name} output, reduce-scattered", f.act * lin.out_width / tp))
    return saved + [
        Saved("SDPA output", f.act * a * model.v_head_dim / tp),
        Saved("SDPA log-sum-exp", f.fp32 * a / tp),
    ]


def _tokens(plan: Plan, workload: Workload) -> float:
    return workload.seq_length * plan.micro_batch_size / plan.cp


def _kept(model: ModelSpec, plan: Plan, workload: Workload, piece: Piece) -> tuple[list[Saved], list[Saved]]:
    """The tensors ``piece`` saves, split into kept and recomputed under the plan."""
    saved = saved_tensors(model, plan, workload, piece)
    if plan.recompute is Recompute.FULL and piece in (Piece.DENSE, Piece.MOE, Piece.MTP):
        # Megatron full recompute checkpoints each block at its input (the MTP module at its
        # two inputs); the head's tensors are never recomputed.
        end = len(saved) - (len(_head_saved(model, plan, _formats(workload))) if piece is Piece.MTP else 0)
        return saved[:1] + saved[end:], saved[1:end]
    if plan.recompute is Recompute.SELECTIVE:
        dropped = selective_modules(model, plan, workload.precision)
        if RecomputeModule.OP_SAC in dropped and piece is Piece.DENSE:
            # Rebuilt in backward, one block at a time: what it would otherwise have saved.
            kept = _op_sac_saved(model, plan, _formats(workload))
            rebuilt = sum(s.bytes_per_token for s in saved) - sum(s.bytes_per_token for s in kept)
            return kept, [Saved("rebuilt by op-level SAC", max(0.0, rebuilt))]
        kept = [s for s in saved if not s.recomputed_by & dropped]
        return kept, [s for s in saved if s.recomputed_by & dropped]
    return saved, []


@functools.lru_cache(maxsize=4096)
def activation_bytes(model: ModelSpec, plan: Plan, workload: Workload, piece: Piece) -> float:
    """Bytes ``piece`` keeps for backward for one micro-batch on one GPU."""
    kept, _ = _kept(model, plan, workload, piece)
    return _tokens(plan, workload) * sum(s.bytes_per_token for s in kept)


@functools.lru_cache(maxsize=4096)
def working_set_bytes(model: ModelSpec, plan: Plan, workload: Workload, piece: Piece) -> float:
    """Transient bytes of one micro-batch in ``piece`` beyond what it keeps: the tensors
    its backward recomputes (all but the input under full recompute: "one layer's working
    set", Korthikanti §5), and for heads the BF16 logits (forward) or their gradient
    (backward) next to the fp32 softmax, which Megatron's cross entropy turns into the
    gradient in place."""
    _, dropped = _kept(model, plan, workload, piece)
    extra = sum(s.bytes_per_token for s in dropped)
    if piece in (Piece.HEAD, Piece.MTP):
        extra += memory_constants().activation_bytes * model.vocab_size / plan.tp
    return _tokens(plan, workload) * extra


# ---------------------------------------------------------------------------------------
# The rank's peak


def stage_memory(
    model: ModelSpec, plan: Plan, workload: Workload, partition: Partition, rank: int, gpu: GPUSpec,
    inflight_microbatches: float, host_share: float | None = None,
) -> MemoryBreakdown:
    """Peak bytes on one GPU of pipeline ``rank``.

    ``inflight_microbatches`` is in the unit of :func:`inflight_microbatches` (the
    simulator may pass the count its event list reached instead). Heads and MTP modules
    hold at most one micro-batch: the last stage of each direction runs a micro-batch's
    backward right after its forward. Blocks offloaded to the host
    (``Plan.cpu_offloading_num_layers``) keep nothing on the GPU and are reported against
    ``host_share``, the GPU's share of its node's host memory.
    """
    c = memory_constants()
    chunks = partition.chunks_of_rank(rank)
    pieces = _piece_counts(chunks)
    weights, grads, optimizer = state_bytes(model, plan, workload, partition, rank)

    activations = max((working_set_bytes(model, plan, workload, p) for p in pieces), default=0.0)
    offloaded = 0.0
    for chunk, share in zip(chunks, _chunk_shares(plan, rank, chunks), strict=True):
        alive = inflight_microbatches * share
        for piece, n in _piece_counts((chunk,)).items():
            count = min(alive, 1.0) if piece in (Piece.HEAD, Piece.MTP) else alive
            activations += n * count * activation_bytes(model, plan, workload, piece)
        # Offloaded blocks' activations are on the host at the peak (planner.costmodel.offload).
        offloaded += alive * sum(activation_bytes(model, plan, workload, block)
                                 for block, _ in offloaded_pieces(plan, chunk))
    activations -= offloaded

    tokens, d = _tokens(plan, workload), model.hidden_size
    dual = plan.pipeline_schedule in DUAL_SCHEDULES
    transient = 0.0
    if workload.precision is Precision.FP8:
        transient += largest_gemm_weight(model, plan, pieces) * c.fp8_weight_copy_bytes_per_param
    if model.moe is not None and (Piece.MOE in pieces or Piece.MTP in pieces):
        f = _formats(workload)
        rows = tokens * model.moe.top_k * plan.expert_tp / plan.tp * expert_load_factor(plan, workload)
        sets = c.overlapped_microbatches_dualpipe if dual else 1
        transient += sets * rows * d * (f.cached + c.activation_bytes)  # dispatch + BF16 combine
    if plan.pp > 1:  # one send and one receive buffer per direction
        transient += (4 if dual else 2) * c.activation_bytes * tokens * d / _seq_div(plan)
    workspace = (
        c.cuda_context_bytes + c.nccl_buffers_bytes + c.gemm_workspace_bytes + transient
        + c.fragmentation_fraction * (activations + transient)
    )
    return MemoryBreakdown(
        weights_bytes=weights, gradients_bytes=grads, optimizer_bytes=optimizer,
        activations_bytes=activations, workspace_bytes=workspace,
        capacity_bytes=gpu.hbm_capacity_bytes, inflight_microbatches=inflight_microbatches,
        host_offload_bytes=offloaded, host_capacity_bytes=host_share if offloaded else None,
    )


__all__ = [
    "GPUParams", "MemoryConstants", "PrecisionStates", "Saved", "StateBytes", "activation_bytes",
    "adam_moment_bytes", "inflight_microbatches", "largest_gemm_weight", "memory_constants",
    "piece_params", "rank_params", "saved_tensors", "stage_memory", "state_bytes", "state_bytes_per_param",
    "working_set_bytes",
]
