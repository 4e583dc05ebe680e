"""Model states per GPU of one pipeline rank (ZeRO's term, Rajbhandari et al. 2020: weights,
gradients, optimizer states), the parameter counts they scale, and the constants of the
memory model; :mod:`planner.costmodel.memory` adds activations and workspace and assembles
the rank's peak.

Parameters per GPU are summed over the rank's chunks (DualPipe ranks hold two:
2x parameters, V3 Table 2). Attention and dense-FFN matrices divide by tp (MLA's
down-projections are replicated, as in Megatron-Core; norms, biases and the router too),
routed experts by ep * etp, shared experts by tp, embedding and head by tp
(vocab-parallel). Bytes per parameter per precision are in ``data/costmodel/memory.yaml``
with sources; Adam's two moments take the workload's ``adam_moment_dtype`` (FP32 unless
stated, FP8 GEMMs included; DeepSeek-V3 keeps BF16). ZeRO shards dense states over dp * cp
and expert states over edp; ZeRO-3 keeps no 16-bit weight shard (FSDP shards the FP32
master itself), only the gathered pieces.
"""

from __future__ import annotations

import functools

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cache

import yaml
from pydantic import NonNegativeFloat, PositiveFloat

from planner.costmodel import params as P
from planner.costmodel.partition import Chunk, Partition, Piece
from planner.presets import data_root
from planner.specs._base import Spec
from planner.specs.model import FFNActivation, ModelSpec
from planner.specs.plan import CrossEntropyKernel, GradReduceDtype, MomentDtype, Plan, Precision, Workload, ZeroStage
from planner.units import to_si

# ---------------------------------------------------------------------------------------
# Constants (data/costmodel/memory.yaml)


class StateBytes(Spec):
    """Bytes per parameter of each state group; ``optimizer`` is what ZeRO-1 shards (fp32
    master weights, Adam moments, fp16's fp32 gradient copy); ``weights_zero3`` what a
    ZeRO-3 rank keeps of the 16-bit weights per sharded parameter."""

    weights: PositiveFloat
    gradients: PositiveFloat
    optimizer: PositiveFloat
    weights_zero3: NonNegativeFloat


class PrecisionStates(Spec):
    """Bytes per parameter of one precision, Adam's moments aside (the YAML's
    ``state_bytes_per_param``)."""

    weights: PositiveFloat
    gradients: PositiveFloat
    master: PositiveFloat


class MemoryConstants(Spec):
    """Framework constants of the memory model; sources in the YAML file."""

    state_bytes_per_param: dict[Precision, PrecisionStates]
    adam_moment_bytes: dict[MomentDtype, PositiveFloat]
    zero3_weight_shard_bytes_per_param: NonNegativeFloat
    fp8_weight_copy_bytes_per_param: float
    activation_bytes: float
    fp32_bytes: float
    fp8_cache_bytes: float
    attention_output_fp8_bytes: float
    cross_entropy_saved_bytes: dict[CrossEntropyKernel, float]
    token_index_bytes: float
    cuda_context_bytes: float
    nccl_buffers_bytes: float
    gemm_workspace_bytes: float
    fragmentation_fraction: float
    overlapped_microbatches_dualpipe: int


@cache
def memory_constants() -> MemoryConstants:
    """The shipped constants (read once)."""
    raw = yaml.safe_load((data_root() / "costmodel" / "memory.yaml").read_text())
    return MemoryConstants.model_validate(to_si(raw)[0])


def adam_moment_bytes(workload: Workload) -> float:
    """Bytes of one of Adam's two moments per parameter (the workload's moment format)."""
    return memory_constants().adam_moment_bytes[workload.adam_moment_dtype]


@functools.lru_cache(maxsize=64)
def state_bytes_per_param(workload: Workload) -> StateBytes:
    """Bytes per parameter of each state group for the workload's precision and moments."""
    c = memory_constants()
    base = c.state_bytes_per_param[workload.precision]
    # A BF16 gradient buffer (grad_reduce_in_fp32=False) holds 2 bytes per parameter.
    bf16_grads = workload.grad_reduce_dtype is GradReduceDtype.BF16
    gradients = min(base.gradients, 2.0) if bf16_grads else base.gradients
    return StateBytes(
        weights=base.weights, gradients=gradients,
        optimizer=base.master + 2 * adam_moment_bytes(workload),
        weights_zero3=c.zero3_weight_shard_bytes_per_param,
    )


# ---------------------------------------------------------------------------------------
# Parameters on one GPU


@dataclass(frozen=True)
class GPUParams:
    """Parameters one GPU holds: ``dense`` (all but routed experts; ZeRO shards them over
    dp * cp) and ``expert`` (routed experts; sharded over edp)."""

    dense: float = 0.0
    expert: float = 0.0

    def __add__(self, other: GPUParams) -> GPUParams:
        return GPUParams(self.dense + other.dense, self.expert + other.expert)

    @property
    def total(self) -> float:
        return self.dense + self.expert


def _attention_params(model: ModelSpec, tp: int) -> float:
    weights = P.attention(model)
    replicated = 0
    if model.mla is not None:
        # Megatron-Core MLA: linear_q_down_proj / linear_kv_down_proj are "duplicated" over TP.
        mla, d = model.mla, model.hidden_size
        replicated = d * (mla.q_lora_rank or 0) + d * (mla.kv_lora_rank + mla.qk_rope_head_dim)
    return (weights.matrix - replicated) / tp + replicated + weights.vector


def _block_params(model: ModelSpec, plan: Plan, moe: bool) -> GPUParams:
    """Attention, the two norms and the FFN of one block on one GPU."""
    dense = _attention_params(model, plan.tp) + P.layer_norms(model).total
    if not moe:
        ffn = P.ffn(model, model.ffn_hidden_size)
        return GPUParams(dense + ffn.matrix / plan.tp + ffn.vector)
    spec = model.moe
    shared = P.ffn(model, spec.shared_ffn_hidden_size).total * spec.num_shared_experts / plan.tp
    routed = P.ffn(model, spec.expert_ffn_hidden_size).total * (spec.num_experts / plan.ep) / plan.expert_tp
    return GPUParams(dense + shared + P.router(model).total, routed)


@functools.lru_cache(maxsize=4096)
def piece_params(model: ModelSpec, plan: Plan, piece: Piece) -> GPUParams:
    """Parameters of one piece on one GPU (the embedding copy of a lone head excluded)."""
    d, tp = model.hidden_size, plan.tp
    word = model.vocab_size * d
    if piece is Piece.EMBEDDING:
        positions = P.count_params(model).embedding - word  # learned positions, replicated
        return GPUParams(word / tp + positions)
    if piece is Piece.HEAD:
        return GPUParams(P.norm(model, d).total + (0 if model.tie_word_embeddings else word / tp))
    if piece is Piece.MTP:
        # params.mtp_module: enorm, hnorm, the head's norm, the 2d x d projection M_k, a block.
        block = _block_params(model, plan, moe=model.moe is not None)
        return block + GPUParams(P.norm(model, d).total * 3 + 2 * d * d / tp)
    return _block_params(model, plan, moe=piece is Piece.MOE)


def largest_gemm_weight(model: ModelSpec, plan: Plan, pieces: Collection[Piece]) -> float:
    """Weights of the largest FP8 GEMM among the rank's blocks (fused fc1 of the dense FFN,
    the local experts' grouped fc1, the shared experts' fc1, or all attention matrices as
    a bound); the embedding and head stay BF16 (V3 §3.3.1)."""
    d, tp, gated = model.hidden_size, plan.tp, model.ffn_activation is FFNActivation.SWIGLU
    fc1 = 2 if gated else 1
    sizes = [_attention_params(model, tp)]
    if Piece.DENSE in pieces or (Piece.MTP in pieces and model.moe is None):
        sizes.append(fc1 * d * model.ffn_hidden_size / tp)
    if model.moe is not None and (Piece.MOE in pieces or Piece.MTP in pieces):
        spec = model.moe
        sizes.append(fc1 * d * spec.expert_ffn_hidden_size * spec.num_experts / plan.ep / plan.expert_tp)
        sizes.append(fc1 * d * spec.shared_ffn_hidden_size * spec.num_shared_experts / tp)
    return max(sizes) if any(p in pieces for p in (Piece.DENSE, Piece.MOE, Piece.MTP)) else 0.0


def _piece_counts(chunks: Sequence[Chunk]) -> dict[Piece, int]:
    """How many of each piece ``chunks`` hold (a rank's memory is a sum over its pieces,
    and its pieces are a few kinds repeated: one lookup per kind, not per layer)."""
    counts: dict[Piece, int] = {}
    for chunk in chunks:
        for piece in chunk.pieces:
            counts[piece] = counts.get(piece, 0) + 1
    return counts


def rank_params(model: ModelSpec, plan: Plan, partition: Partition, rank: int) -> GPUParams:
    """Parameters on one GPU of ``rank``: all its chunks; shared tables counted once.

    A tied head or an MTP module on a rank without the embedding keeps its own copy of
    the word embedding (Megatron's embedding group: both copies are trained and their
    gradients all-reduced), so it is counted there too.
    """
    pieces = _piece_counts(partition.chunks_of_rank(rank))
    total = GPUParams()
    for piece, count in pieces.items():
        params = piece_params(model, plan, piece)
        total += GPUParams(count * params.dense, count * params.expert)
    if Piece.EMBEDDING not in pieces and (
        (Piece.HEAD in pieces and model.tie_word_embeddings) or Piece.MTP in pieces
    ):
        total += GPUParams(model.vocab_size * model.hidden_size / plan.tp)
    return total


# ---------------------------------------------------------------------------------------
# Weights, gradients and optimizer states


def _sharded(params: GPUParams, plan: Plan, per_param: float, sharded: bool) -> float:
    """Bytes of one state group; ZeRO shards dense states over dp * cp, experts over edp."""
    if not sharded:
        return params.total * per_param
    return (params.dense / (plan.dp * plan.cp) + params.expert / plan.edp) * per_param


def state_bytes(
    model: ModelSpec, plan: Plan, workload: Workload, partition: Partition, rank: int,
) -> tuple[float, float, float]:
    """Weight, gradient and optimizer-state bytes on one GPU of pipeline ``rank``."""
    states = state_bytes_per_param(workload)
    pieces = _piece_counts(partition.chunks_of_rank(rank))
    params = rank_params(model, plan, partition, rank)
    largest = max((piece_params(model, plan, p).total for p in pieces), default=0.0)
    zero = plan.zero_stage
    weights = params.total * states.weights
    if zero >= ZeroStage.PARAMETERS:
        # The shard (the FP32 master itself under FSDP: ``weights_zero3``) plus the piece
        # computing and the one prefetched, gathered in 16 bits (DeepSpeed stage-3
        # prefetch, FSDP forward prefetch); never more than the unsharded weights.
        shard = _sharded(params, plan, states.weights_zero3, True)
        weights = min(weights, shard + 2 * largest * states.weights)
    grads = _sharded(params, plan, states.gradients, zero >= ZeroStage.GRADIENTS)
    if zero >= ZeroStage.GRADIENTS:
        # One piece's gradients exist unsharded before their reduce-scatter.
        grads = min(params.total * states.gradients, grads + largest * states.gradients)
    return weights, grads, _sharded(params, plan, states.optimizer, zero >= ZeroStage.OPTIMIZER)

