"""Communication of a plan, per parallel dimension, priced on the placed rank groups.

Volumes per micro-batch per piece on one GPU (T = tokens per GPU, d = hidden, 2-byte
activations), and the collective each becomes (Megatron-LM; DeepSeek-V3 §3.2):

- TP: the row-parallel outputs of attention and FFN/MoE are all-reduced, 2 per block in
  forward and 2 in backward (Shoeybi et al. 2019 §3, Fig. 4); with sequence parallelism
  each becomes a reduce-scatter + all-gather of the same buffer (Korthikanti et al. 2022
  §4.2.2). The vocab-parallel embedding all-reduces its output in forward, the head its
  input gradient in backward, and the vocab-parallel cross-entropy (of the head and of
  every MTP module) all-reduces three FP32 values per token in forward: the logit max, the
  target logit and the sum of exponentials (Megatron-LM ``_VocabParallelCrossEntropy``).
  Exposed: Megatron runs them on the compute stream; under the workload's
  ``tp_comm_overlap`` (sequence parallel) a block's all-gathers and reduce-scatters run
  under the TE Linear GEMMs next to them instead (:mod:`planner.costmodel.tp_overlap`).
- CP: ring attention passes the key/value blocks around the cp ranks, (cp-1) blocks in
  forward, the blocks and their gradients in backward (Megatron-LM context parallelism);
  priced as an all-gather (forward) and all-gather + reduce-scatter (backward) of the
  K/V of the cp group; hidden behind the attention core up to its duration.
- EP: dispatch and combine of the routed tokens per MoE layer in forward, and again in
  backward, through :func:`planner.hwmodels.collectives.moe_all_to_all` (hierarchical and
  node-limited; BF16 combine, and the dispatch in the workload's ``moe_dispatch_dtype``:
  BF16 as Megatron-Core sends it, FP8 in DeepSeek-V3's recipe, V3 §3.3.3), deduplicated
  per node and GPU as DeepEP sends it, or one copy per chosen expert under the workload's
  ``moe_dispatcher`` ``alltoall`` (Megatron-Core's NCCL all-to-all dispatcher). Under real
  routing the busiest EP rank receives (dispatch) and returns (combine)
  :func:`~planner.costmodel.ops.expert_load_factor` times the mean rows, and the
  collective ends when it does: both times scale by that factor.
- Recomputation: a recomputed forward repeats its collectives in backward: full
  recomputation a block's TP collectives and its dispatch/combine, the ``moe`` module its
  dispatch/combine (CP's ring runs again too, but hidden behind the attention core; not priced).
- PP: one activation (forward) or gradient (backward) of T x d per micro-batch between
  consecutive chunks on different ranks.
- DP/ZeRO: per step, see :func:`dp_step_comm`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from planner.costmodel.memory import state_bytes_per_param
from planner.costmodel.ops import BF16_BYTES, FP32_BYTES, expert_load_factor, selective_modules
from planner.costmodel.partition import Chunk, Piece
from planner.costmodel.tp_overlap import BlockTP, applies, block_tp
from planner.hwmodels.alltoall import moe_all_to_all
from planner.hwmodels.collectives import CollectiveOp, collective_cost, groups_digest
from planner.hwmodels.placement import RankLayout, rank_layout
from planner.specs.hardware import ClusterSpec
from planner.specs.model import ModelSpec
from planner.specs.plan import (
    DispatchDtype, MoEDispatcher, PipelineSchedule, Plan, Recompute, RecomputeModule, Workload, ZeroStage,
)


def stage_groups(layout: RankLayout, dims: str, stage: int, experts: bool = False) -> np.ndarray:
    """The groups of dimension ``dims`` whose ranks sit in pipeline stage ``stage``.

    Ranks are GPUs: rank r runs on GPU r (node r // gpus_per_node, torchrun's order)."""
    return _stage_groups(layout.plan, dims, stage, experts)


@functools.lru_cache(maxsize=1024)
def _stage_groups(plan: Plan, dims: str, stage: int, experts: bool) -> np.ndarray:
    layout = rank_layout(plan)
    groups = layout.groups(dims, experts=experts)
    in_stage = layout.groups("pp")[:, stage]
    out = groups[np.isin(groups[:, 0], in_stage)]
    out.flags.writeable = False
    return out


@dataclass(frozen=True)
class PieceComm:
    """Seconds of communication for one micro-batch of one piece on one GPU (TP: what it adds
    to the compute, under ``tp_comm_overlap`` with the overlapped GEMMs' slowdown)."""

    tp_forward_s: float = 0.0
    tp_backward_s: float = 0.0
    cp_forward_s: float = 0.0
    cp_backward_s: float = 0.0
    ep_forward_s: float = 0.0
    ep_backward_s: float = 0.0
    tp_recompute_s: float = 0.0
    """What full recomputation would repeat in backward: the block's forward TP (not in
    :meth:`astuple`)."""
    tp_hidden_s: float = 0.0
    """TP seconds hidden under GEMMs (``tp_comm_overlap``; not in :meth:`astuple`)."""

    def __add__(self, other: PieceComm) -> PieceComm:
        return PieceComm(*(a + b for a, b in zip(self.astuple(), other.astuple())),
                         tp_recompute_s=self.tp_recompute_s + other.tp_recompute_s,
                         tp_hidden_s=self.tp_hidden_s + other.tp_hidden_s)

    def astuple(self) -> tuple[float, ...]:
        return (
            self.tp_forward_s, self.tp_backward_s, self.cp_forward_s,
            self.cp_backward_s, self.ep_forward_s, self.ep_backward_s,
        )


def _tp_costs(cluster: ClusterSpec, groups: np.ndarray, sequence_parallel: bool, act_bytes: float,
              tokens: float) -> tuple[float, float, float, float]:
    """One TP all-reduce of the activations (a reduce-scatter + all-gather under sequence
    parallelism), the cross-entropy's three per-token FP32 all-reduces, and the all-gather
    and reduce-scatter alone (0 without sequence parallelism)."""
    rs = ag = 0.0
    if sequence_parallel:
        rs = collective_cost(cluster, CollectiveOp.REDUCE_SCATTER, groups, act_bytes).time_s
        ag = collective_cost(cluster, CollectiveOp.ALL_GATHER, groups, act_bytes).time_s
        allreduce = rs + ag
    else:
        allreduce = collective_cost(cluster, CollectiveOp.ALL_REDUCE, groups, act_bytes).time_s
    per_token = collective_cost(cluster, CollectiveOp.ALL_REDUCE, groups, tokens * FP32_BYTES).time_s
    return allreduce, 3 * per_token, ag, rs


def _cp_costs(cluster: ClusterSpec, groups: np.ndarray, kv_bytes: float) -> tuple[float, float]:
    """Ring attention's exchange: forward (all-gather), backward (all-gather + reduce-scatter)."""
    ag = collective_cost(cluster, CollectiveOp.ALL_GATHER, groups, kv_bytes).time_s
    rs = collective_cost(cluster, CollectiveOp.REDUCE_SCATTER, groups, kv_bytes).time_s
    return ag, ag + rs


class _Memo:
    """Exact memo of :class:`StageComm`'s per-dimension costs for one cluster at a time.

    Keyed by every argument of the collective calls (the placed groups' GPU ids, the bytes,
    the flags), so a value is reused only where the call would repeat itself: plans that
    differ in a degree TP and CP do not read (ep, ZeRO, recompute, schedule) share it, and
    the numbers are bit-identical. (:func:`moe_all_to_all` keeps its own cache.) The cluster
    is held, so its id cannot be reused by another spec; a new cluster clears it."""

    LIMIT = 65_536

    def __init__(self) -> None:
        self._cluster: ClusterSpec | None = None
        self._values: dict[tuple, object] = {}

    def get(self, cluster: ClusterSpec, key: tuple, compute):
        if cluster is not self._cluster or len(self._values) >= self.LIMIT:
            self._cluster, self._values = cluster, {}
        hit = self._values.get(key)
        if hit is None:
            hit = self._values[key] = compute()
        return hit


_MEMO = _Memo()


class StageComm:
    """Communication costs of one pipeline stage, computed once per piece kind."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload,
                 layout: RankLayout, stage: int):
        self.model, self.cluster, self.plan, self.workload = model, cluster, plan, workload
        self.stage = stage
        self.tokens = plan.micro_batch_size * workload.seq_length / plan.cp
        d = model.hidden_size
        act_bytes = self.tokens * d * BF16_BYTES
        self.tp_allreduce_s = self.cross_entropy_s = self.tp_all_gather_s = self.tp_reduce_scatter_s = 0.0
        if plan.tp > 1:
            groups = stage_groups(layout, "tp", stage)
            tp_costs = _MEMO.get(
                cluster, ("tp", groups_digest(groups), plan.sequence_parallel, act_bytes, self.tokens),
                lambda: _tp_costs(cluster, groups, plan.sequence_parallel, act_bytes, self.tokens))
            self.tp_allreduce_s, self.cross_entropy_s = tp_costs[:2]
            self.tp_all_gather_s, self.tp_reduce_scatter_s = tp_costs[2:]
        self._overlap = applies(plan, workload)
        self._block_tp: dict[Piece, BlockTP] = {}
        self.cp_forward_s = self.cp_backward_s = 0.0
        if plan.cp > 1:
            groups = stage_groups(layout, "cp", stage)
            kv = self.tokens * _kv_width(model) / plan.tp * BF16_BYTES * plan.cp
            self.cp_forward_s, self.cp_backward_s = _MEMO.get(
                cluster, ("cp", groups_digest(groups), kv), lambda: _cp_costs(cluster, groups, kv))
        self.ep_dispatch_s = self.ep_combine_s = 0.0
        self._moe_recomputed = plan.recompute is Recompute.SELECTIVE and (
            RecomputeModule.MOE in selective_modules(model, plan, workload.precision))
        if model.moe is not None and plan.ep > 1:
            moe = model.moe
            groups = stage_groups(layout, "ep", stage, experts=True)
            fp8 = workload.moe_dispatch_dtype is DispatchDtype.FP8
            # With tp > 1 the tp ranks hold the same tokens; each sends its 1/tp share
            # (Megatron's alltoall dispatcher after the sequence-parallel split).
            cost = moe_all_to_all(
                cluster,
                groups,
                tokens_per_rank=max(1, round(self.tokens / plan.tp)),
                hidden_size=d,
                top_k=moe.top_k,
                num_experts=moe.num_experts,
                node_limit=moe.num_limited_groups,
                dispatch_bytes_per_element=1.0 if fp8 else BF16_BYTES,
                combine_bytes_per_element=BF16_BYTES,
                deduplicate=workload.moe_dispatcher is MoEDispatcher.DEEPEP,
            )
            load = expert_load_factor(plan, workload)  # the busiest rank's rows over the mean
            self.ep_dispatch_s, self.ep_combine_s = cost.dispatch_s * load, cost.combine_s * load

    def piece(self, piece: Piece) -> PieceComm:
        tp = self.tp_allreduce_s
        if piece is Piece.EMBEDDING:
            return PieceComm(tp_forward_s=tp)
        if piece is Piece.HEAD:
            return PieceComm(tp_forward_s=self.cross_entropy_s, tp_backward_s=tp)
        moe_block = self.model.moe is not None and piece in (Piece.MOE, Piece.MTP)
        ep = self.ep_dispatch_s + self.ep_combine_s if moe_block else 0.0
        # A recomputed forward repeats its collectives in backward: full recomputation re-runs
        # the block's TP all-reduces (or SP gathers/scatters) and its dispatch/combine
        # (Megatron's checkpointed forward is the same code path); recomputing a whole MoE
        # block re-runs its dispatch/combine.
        full = self.plan.recompute is Recompute.FULL and piece in (Piece.DENSE, Piece.MOE, Piece.MTP)
        block_f = block_b = 2 * tp
        hidden_f = hidden_b = 0.0
        if self._overlap:
            block = self._block(piece)
            block_f, block_b = block.forward_s, block.backward_s
            hidden_f, hidden_b = block.forward_hidden_s, block.backward_hidden_s
        tp_again = block_f if full else 0.0
        ep_again = ep if (full or self._moe_recomputed) else 0.0
        extra_head = tp if piece is Piece.MTP else 0.0
        loss = self.cross_entropy_s if piece is Piece.MTP else 0.0
        return PieceComm(
            tp_forward_s=block_f + loss,
            tp_backward_s=block_b + extra_head + tp_again,
            cp_forward_s=self.cp_forward_s,
            cp_backward_s=self.cp_backward_s,
            ep_forward_s=ep,
            ep_backward_s=ep + ep_again,
            tp_recompute_s=block_f,
            tp_hidden_s=hidden_f + hidden_b + (hidden_f if full else 0.0),
        )

    def _block(self, piece: Piece) -> BlockTP:
        """The block's TP under ``tp_comm_overlap`` (:func:`~planner.costmodel.tp_overlap.block_tp`)."""
        hit = self._block_tp.get(piece)
        if hit is None:
            hit = self._block_tp[piece] = block_tp(self.model, self.plan, self.workload, self.cluster.gpu,
                                                   piece, self.tp_all_gather_s, self.tp_reduce_scatter_s)
        return hit

    def chunk(self, chunk: Chunk) -> PieceComm:
        total = PieceComm()
        for piece in chunk.pieces:
            total = total + self.piece(piece)
        return total


def _kv_width(model: ModelSpec) -> float:
    """Key + value channels per token that ring attention passes (all heads)."""
    h = model.num_attention_heads
    if model.mla is not None:
        return h * (model.qk_head_dim + model.v_head_dim)
    return 2 * model.kv_heads * model.kv_channels


def pp_p2p_s(cluster: ClusterSpec, plan: Plan, workload: Workload, layout: RankLayout, model: ModelSpec) -> float:
    """Seconds to send one micro-batch's activation to the next pipeline rank (all ranks
    of a stage send at once, so NICs are shared as placed; on hosts that stagger pipeline
    transfers, one pair at a time)."""
    if plan.pp == 1:
        return 0.0
    tokens = plan.micro_batch_size * workload.seq_length / plan.cp
    if plan.sequence_parallel and plan.tp > 1:
        tokens /= plan.tp
    nbytes = tokens * model.hidden_size * BF16_BYTES
    groups = layout.groups("pp")
    pairs = np.stack([groups[:, 0], groups[:, 1]], axis=1)
    host = cluster.node.host
    if host is not None and host.staggered_pipeline_p2p:
        # Transfers take turns on the shared NIC: price one pair alone, a cross-node one
        # when the pipeline leaves the node (the slower kind).
        per_node = cluster.node.gpus_per_node
        cross = np.nonzero(pairs[:, 0] // per_node != pairs[:, 1] // per_node)[0]
        pairs = pairs[cross[:1]] if cross.size else pairs[:1]
    return collective_cost(cluster, CollectiveOp.P2P, pairs, nbytes).time_s


def pp_blocking_transfers(pp: int) -> np.ndarray:
    """Per pipeline stage, how many transfers each of its forwards (and each of its
    backwards) waits out when every send and receive blocks the compute
    (:attr:`~planner.specs.plan.PipelineP2P.DEEPSPEED`): a receive from the previous stage
    and a send to the next, so two in the middle of the pipeline and one at either end."""
    waits = np.full(pp, 2.0)
    waits[0] -= 1.0
    waits[-1] -= 1.0
    return waits


@dataclass(frozen=True)
class DPComm:
    """Data-parallel communication of one pipeline rank per step."""

    reduce_s: float
    """Once per step: the gradient reduction (all-reduce, or reduce-scatter under ZeRO-1/2)."""
    gather_s: float
    """Once per step, ZeRO-1/2: the all-gather of the updated parameters."""
    per_microbatch_gather_s: float
    """ZeRO-3: one all-gather of the parameters (done before forward and before backward)."""
    per_microbatch_scatter_s: float
    """ZeRO-3: the gradient reduce-scatter after each micro-batch's backward."""

    @property
    def step_s(self) -> float:
        """Once per step: the reduction and, under ZeRO-1/2, the parameter all-gather."""
        return self.reduce_s + self.gather_s


def grad_reduce_bytes_per_param(workload: Workload) -> float:
    """Bytes per gradient element reduced: the gradient buffer's, which the reduction runs
    on (:func:`~planner.costmodel.memory.state_bytes_per_param`: FP32 as Megatron-LM forces
    under BF16, FP16 under FP16, 2 bytes with the workload's ``grad_reduce_dtype`` bf16)."""
    return state_bytes_per_param(workload).gradients


def dp_step_comm(
    cluster: ClusterSpec, plan: Plan, workload: Workload, layout: RankLayout, stage: int,
    dense_params: float, expert_params: float, zero3_units: int = 1,
) -> DPComm:
    """Gradient sync of ``dense_params`` (over dp*cp) and ``expert_params`` (over edp) held
    by one GPU of ``stage`` (already divided by tp / ep*etp, not by ZeRO).

    DualPipe keeps two copies of every chunk, on ranks r and pp-1-r, each of which sees half
    of the micro-batches, so a chunk's gradient is the sum over both copies: the reference
    implementation adds rank pp-1-r's gradient to rank r's before comparing with the
    single-copy model (github.com/deepseek-ai/DualPipe examples/example_dualpipe.py, "Check
    grads"). The reduction group of a DualPipe stage is therefore its data-parallel group
    joined with the same group of the mirror stage (2 x dp members, 2 x edp for experts).

    ZeRO-3 gathers and reduce-scatters one wrapped unit at a time (DeepSpeed stage-3 fetches
    per sub-module, FSDP per wrapped block: each issues its own collective), so each of the
    ``zero3_units`` pieces the rank holds pays the collective's latency terms (a ring's
    ``k - 1`` hops) while the bytes are priced once."""
    grad = grad_reduce_bytes_per_param(workload)
    zero = plan.zero_stage
    reduce = step_gather = gather = scatter = 0.0
    mirror = plan.pp - 1 - stage if plan.pipeline_schedule is PipelineSchedule.DUALPIPE else None
    for params, dims, experts in ((dense_params, "cp-dp" if plan.cp > 1 else "dp", False),
                                  (expert_params, "edp", True)):
        if params <= 0:
            continue
        groups = stage_groups(layout, dims, stage, experts=experts)
        if mirror is not None:
            groups = np.concatenate([groups, stage_groups(layout, dims, mirror, experts=experts)], axis=1)
        if groups.shape[1] == 1:
            continue
        if zero is ZeroStage.NONE:
            reduce += collective_cost(cluster, CollectiveOp.ALL_REDUCE, groups, params * grad).time_s
        elif zero in (ZeroStage.OPTIMIZER, ZeroStage.GRADIENTS):
            reduce += collective_cost(cluster, CollectiveOp.REDUCE_SCATTER, groups, params * grad).time_s
            step_gather += collective_cost(cluster, CollectiveOp.ALL_GATHER, groups, params * BF16_BYTES).time_s
        else:
            extra = max(0, zero3_units - 1)
            ag = collective_cost(cluster, CollectiveOp.ALL_GATHER, groups, params * BF16_BYTES)
            rs = collective_cost(cluster, CollectiveOp.REDUCE_SCATTER, groups, params * grad)
            gather += ag.time_s + extra * ag.latency_s
            scatter += rs.time_s + extra * rs.latency_s
    return DPComm(reduce, step_gather, gather, scatter)
