"""Lower bounds that let the search skip plans without ever losing the optimum.

Every bound here is provably never above what :func:`planner.costmodel.simulate.simulate`
reports for the same plan (``memory <= memory_peak_bytes``, ``time <= step_time_s``), and
each is taken over every layer-to-stage split the simulator may pick (its even split, or
both of its balanced splits) and the smallest kept, so whichever split it picks the bound
holds. Three levels, from cheap to tight:

``memory_bounds`` / ``time_bounds`` (level 0, vectorised over a :class:`CandidateTable`)
    per-rank parameters and compute from per-shape tables (piece compute per (tp, cp, ep,
    micro-batch, recompute, sp), pieces per rank per (pp, vpp, schedule)), gathered by
    index: a few numpy operations for the whole space.
:meth:`BoundCalculator.refined` (level 1, one plan, memoised per shape)
    one pipeline rank priced as the simulator prices it, communication included.

Rules counted by the search (divisibility, the third, is the space's own):

``memory_lower_bound``
    the bound exceeds ``capacity * max_memory_fraction``: every split the simulator could
    choose has a rank over the limit, so the plan is infeasible.
``time_lower_bound``
    best-first on the bounds: once the smallest bound left exceeds the k-th best feasible
    step simulated, no remaining plan can enter the top k.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from planner.costmodel import compute as C
from planner.costmodel.comm import StageComm, dp_step_comm, pp_p2p_s
from planner.costmodel.memory import inflight_microbatches, memory_constants, piece_params, stage_memory
from planner.costmodel.partition import Partition, Piece, model_pieces, partition
from planner.costmodel.simulate import DUAL, _optimizer_bytes_per_param
from planner.hwmodels.placement import rank_layout
from planner.search.space import RECOMPUTES, SCHEDULES, S_DUALPIPE, S_DUALPIPEV, CandidateTable
from planner.specs.hardware import ClusterSpec
from planner.specs.model import ModelSpec
from planner.specs.plan import Plan, Workload, ZeroStage

_UNIT = {Piece.DENSE: 1.0, Piece.MOE: 1.0, Piece.HEAD: 1.0, Piece.MTP: 1.0}


class PruneRule(StrEnum):
    """The search's lossless pruning rules, as counted in its report."""

    DIVISIBILITY = "divisibility"
    """Structurally invalid plans (the space's per-rule rejections, summed)."""
    MEMORY_LOWER_BOUND = "memory_lower_bound"
    """A lower bound of the peak memory is over the allowed fraction of HBM."""
    TIME_LOWER_BOUND = "time_lower_bound"
    """A lower bound of the step time is above the k-th best simulated step."""


@dataclass(frozen=True)
class PlanBounds:
    """Lower bounds of one plan's simulated step time and peak memory per GPU."""

    step_time_s: float
    memory_bytes: float


def _even(model: ModelSpec, pp: int, vpp: int, sched: int) -> bool:
    """The simulator's condition for Megatron's even split (a single candidate split)."""
    return model.num_layers % (pp * vpp) == 0 and sched not in (S_DUALPIPE, S_DUALPIPEV)


class BoundCalculator:
    """Bounds for the plans of one (model, cluster, workload), memoising every per-shape
    number (piece compute, pieces per rank, communication of a stage) across plans."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, workload: Workload):
        self.model, self.cluster, self.workload = model, cluster, workload
        self.pieces = sorted(set(model_pieces(model)), key=lambda p: p.value)
        self._index = {p: k for k, p in enumerate(self.pieces)}
        # Pieces whose compute reads ep/etp (compute.moe_ops); the others do not.
        self._moe = [p in (Piece.MOE, Piece.MTP) and model.moe is not None for p in self.pieces]
        self._piece: dict[tuple, tuple[float, float, float]] = {}
        self._parts: dict[tuple, tuple[Partition, ...]] = {}
        self._counts: dict[tuple, np.ndarray] = {}
        self._params: dict[tuple, np.ndarray] = {}
        self._comm: dict[tuple, np.ndarray] = {}
        self._dp: dict[tuple, object] = {}
        self._p2p: dict[tuple, float] = {}
        self._refined: dict[Plan, float] = {}
        gpu = cluster.gpu
        self._opt_s_per_param = _optimizer_bytes_per_param(workload) / (
            gpu.hbm_bandwidth_bytes_per_s * gpu.efficiency.hbm_fraction)

    # -----------------------------------------------------------------------------------
    # Shape tables

    def piece_time(self, plan: Plan, piece: Piece, share: float = 1.0) -> tuple[float, float, float]:
        """(F, B, W) seconds of one piece for one micro-batch: :func:`compute.piece_ops` and
        :func:`compute.piece_time`, keyed by what they read (Shard.of: tp, cp, micro-batch,
        sp; the attention kernel and recompute; ep and etp only in MoE pieces)."""
        key = (plan.tp, plan.cp, plan.micro_batch_size, plan.sequence_parallel and plan.tp > 1,
               plan.attention_kernel, plan.recompute, piece, share)
        if self._moe[self._index[piece]]:
            key += (plan.ep, plan.expert_tp)
        hit = self._piece.get(key)
        if hit is None:
            ops = C.piece_ops(self.model, plan, self.workload, piece)
            t = C.piece_time(ops, self.cluster.gpu, self.workload.precision, plan.recompute, share)
            hit = self._piece[key] = (t.forward_s, t.backward_input_s, t.backward_weight_s)
        return hit

    def partitions(self, plan: Plan) -> tuple[Partition, ...]:
        """The layer-to-stage splits :func:`~planner.costmodel.simulate.simulate` may pick
        (mirrors its choice: the even split, else its two balanced candidates)."""
        model = self.model
        if model.num_layers % (plan.pp * plan.vpp) == 0 and plan.pipeline_schedule not in DUAL:
            key = (plan.pp, plan.vpp, plan.pipeline_schedule)
            if key not in self._parts:
                self._parts[key] = (partition(model, plan),)
            return self._parts[key]
        forward = {piece: self.piece_time(plan, piece)[0] for piece in self.pieces}
        key = (plan.pp, plan.vpp, plan.pipeline_schedule, tuple(sorted(forward.items())))
        if key not in self._parts:
            self._parts[key] = (partition(model, plan, forward), partition(model, plan, _UNIT))
        return self._parts[key]

    def _rank_counts(self, pp: int, vpp: int, sched: int) -> np.ndarray:
        """(pp, pieces): how many of each piece every rank holds. Even splits: the
        simulator's split. Otherwise the mean over ranks (every row equal): each piece
        lives on the same number of ranks in every split, so the mean is the same for
        both balanced splits, and a max over ranks is never below a mean."""
        key = (pp, vpp, sched)
        hit = self._counts.get(key)
        if hit is None:
            plan = Plan(pp=pp, vpp=vpp, pipeline_schedule=SCHEDULES[sched])
            part = partition(self.model, plan, None if _even(self.model, pp, vpp, sched) else _UNIT)
            hit = np.zeros((pp, len(self.pieces)))
            for r in range(pp):
                for chunk in part.chunks_of_rank(r):
                    for piece in chunk.pieces:
                        hit[r, self._index[piece]] += 1
            if not _even(self.model, pp, vpp, sched):
                hit[:] = hit.mean(axis=0)
            self._counts[key] = hit
        return hit

    def _piece_params(self, tp: int, ep: int) -> np.ndarray:
        """(pieces, 2): dense and expert parameters of each piece on one GPU."""
        key = (tp, ep)
        hit = self._params.get(key)
        if hit is None:
            plan = Plan(tp=tp, ep=ep, dp=ep)
            hit = self._params[key] = np.array(
                [[piece_params(self.model, plan, p).dense, piece_params(self.model, plan, p).expert]
                 for p in self.pieces])
        return hit

    # -----------------------------------------------------------------------------------
    # Level 0: the whole table at once

    def _gathered(self, table: CandidateTable, keys: tuple[str, ...], make) -> np.ndarray:
        """Rows of ``make(*unique key)`` (equal-shaped arrays) gathered per candidate."""
        cols = [getattr(table, k) for k in keys]
        code = np.zeros(len(table), dtype=np.int64)
        for col in cols:  # mixed-radix code of the key columns (all small non-negative ints)
            code = code * (int(col.max()) + 1) + col
        uniq, first, inverse = np.unique(code, return_index=True, return_inverse=True)
        made = np.stack([make(*(int(col[i]) for col in cols)) for i in first])
        return made[inverse.reshape(-1)]

    def _by_split(self, table: CandidateTable, values: np.ndarray, reduce) -> np.ndarray:
        """Per candidate, ``reduce(rows, per_rank)`` with ``per_rank = counts(rank) @ values``
        (shape (rows, pp, ...)), one numpy pass per (pp, vpp, schedule)."""
        out = np.zeros(len(table))
        code = (table.pp * 64 + table.vpp) * 8 + table.sched
        for key in np.unique(code):
            rows = np.flatnonzero(code == key)
            i = rows[0]
            counts = self._rank_counts(int(table.pp[i]), int(table.vpp[i]), int(table.sched[i]))
            out[rows] = reduce(rows, np.einsum("rp,np...->nr...", counts, values[rows]))
        return out

    def memory_bounds(self, table: CandidateTable) -> np.ndarray:
        """Per candidate: max over ranks of weights + gradients + optimizer states + the
        fixed workspace (CUDA context, NCCL buffers, GEMM workspace).

        :func:`~planner.costmodel.memory.stage_memory` counts the same parameters (its
        ``rank_params`` adds a tied embedding copy on top) at the same bytes per parameter
        with the same ZeRO sharding, and only adds to them (ZeRO-2/3's unsharded piece and
        prefetch, activations, transient buffers and fragmentation are all >= 0)."""
        if len(table) == 0:
            return np.zeros(0)
        c = memory_constants()
        per = c.state_bytes_per_param[self.workload.precision]
        params = self._gathered(table, ("tp", "ep"), self._piece_params)
        shard_dense = 1.0 / (table.dp * table.cp)
        shard_expert = table.ep / (table.cp * table.dp)  # 1 / edp

        def reduce(rows, rank):
            dense, expert = rank[..., 0], rank[..., 1]
            total = np.zeros_like(dense)
            for per_param, stage in ((per.weights, 3), (per.gradients, 2), (per.optimizer, 1)):
                on = (table.zero[rows] >= stage)[:, None]
                sharded = dense * shard_dense[rows, None] + expert * shard_expert[rows, None]
                total += np.where(on, sharded, dense + expert) * per_param
            return total.max(axis=1)

        return self._by_split(table, params, reduce) + c.cuda_context_bytes + c.nccl_buffers_bytes + c.gemm_workspace_bytes

    def time_bounds(self, table: CandidateTable) -> np.ndarray:
        """Per candidate: max over ranks r of ``runs * sum(F + B + W of r's pieces) +
        optimizer_r`` (mean over ranks where the split is not the even one).

        Why the simulated step is never shorter, for the same split:

        1. A rank runs its program's operations one after another, so its last operation
           ends no earlier than the sum of their durations; the step is ``max_r(end_r +
           exposed DP_r + optimizer_r)``, and ``optimizer_r`` is the simulator's (its tied
           embedding copy is left out here, which only lowers the bound).
        2. Each (micro-batch, chunk) of rank r costs one forward and one backward. The
           simulator's durations add exposed TP/CP/EP communication and ZeRO-3 waits to the
           compute (``max(compute, wait) + comm >= compute``). Under DualPipe an F&B pair
           costs ``F_a k_a + (B_b + W_b) k_b`` with ``k_c = pair_c / (F_c + B_c + W_c) <= 1``
           (the pair hides communication, never compute), so chunk c's work is at least
           ``pair_c >= its compute``; compute with SMs given to communication only takes
           longer than with all of them.
        3. Runs per chunk: m micro-batches, except DualPipe, where each of a rank's two
           chunks serves one direction's m / 2.
        """
        if len(table) == 0:
            return np.zeros(0)

        def compute(tp, cp, ep, mb, rec, sp):
            plan = Plan(tp=tp, cp=cp, ep=ep, dp=ep, micro_batch_size=mb, recompute=RECOMPUTES[rec],
                        sequence_parallel=bool(sp))
            return np.array([sum(self.piece_time(plan, p)) for p in self.pieces])

        work = self._gathered(table, ("tp", "cp", "ep", "mb", "rec", "sp"), compute)  # (n, pieces)
        params = self._gathered(table, ("tp", "ep"), self._piece_params)  # (n, pieces, 2)
        m = table.microbatches(self.workload).astype(float)
        runs = np.where(table.sched == S_DUALPIPE, m / 2, m)
        sharded = table.zero >= ZeroStage.OPTIMIZER
        shard_dense = np.where(sharded, 1.0 / (table.dp * table.cp), 1.0)
        shard_expert = np.where(sharded, table.ep / (table.cp * table.dp), 1.0)
        # Per piece: runs * work + optimizer seconds of its local parameters (linear, so
        # the per-rank sum is one matrix product).
        per_piece = (runs[:, None] * work + (params[..., 0] * shard_dense[:, None]
                                             + params[..., 1] * shard_expert[:, None]) * self._opt_s_per_param)
        return self._by_split(table, per_piece, lambda rows, rank: rank.max(axis=1))

    # -----------------------------------------------------------------------------------
    # Level 1: one plan, one rank priced like the simulator

    def bounds(self, plan: Plan) -> PlanBounds:
        """Both levels for one plan (the larger of each)."""
        table = CandidateTable.from_plans([plan])
        return PlanBounds(step_time_s=max(float(self.time_bounds(table)[0]), self.refined(plan)),
                          memory_bytes=max(float(self.memory_bounds(table)[0]), self.refined_memory(plan)))

    def refined(self, plan: Plan) -> float:
        """Level-1 time bound: min over the simulator's splits of ``start_r + busy_r +
        exposed DP_r + optimizer_r`` for the rank r whose compute and fill are largest.

        - ``busy_r``: r's chunk times built exactly as the simulator builds them (compute at
          its SM share, exposed TP/CP/EP, ZeRO-3 waits); each of r's chunks runs its
          forward and backward ``runs`` times, one after another on the rank, so r is busy
          ``runs * sum(F + B + W)``; under DualPipe(V) an F&B pair costs ``F_a k_a +
          (B_b + W_b) k_b`` with ``k <= 1``, so a chunk's share is at least ``runs * k (F
          + B + W) = runs * F&B``, which is what is summed there.
        - ``start_r``: r's first operation is a forward of one of its chunks c (a backward
          needs r's own forward first); it waits for the forwards of chunks 0..c-1 of c's
          direction, each at least its compute with all SMs, plus ``p2p`` per change of
          rank: the smallest such path over r's chunks.
        - exposed DP and the optimizer: the simulator's own terms for r.
        """
        hit = self._refined.get(plan)
        if hit is None:
            hit = self._refined[plan] = min(self._refined_split(plan, part) for part in self.partitions(plan))
        return hit

    def refined_memory(self, plan: Plan) -> float:
        """min over the simulator's splits of the largest
        :func:`~planner.costmodel.memory.stage_memory` of the first and last ranks, called
        as the simulator calls it (its peak is the max over all ranks)."""
        m, gpu = plan.num_microbatches(self.workload), self.cluster.gpu
        return min(max(stage_memory(self.model, plan, self.workload, part, k, gpu,
                                    inflight_microbatches(plan, m, k)).total_bytes for k in {0, plan.pp - 1})
                   for part in self.partitions(plan))

    def _chunk_counts(self, part: Partition) -> np.ndarray:
        key = ("chunks", id(part))
        hit = self._counts.get(key)
        if hit is None:
            hit = np.zeros((len(part.chunks), len(self.pieces)))
            for ch in part.chunks:
                for p in ch.pieces:
                    hit[ch.index, self._index[p]] += 1
            self._counts[key] = hit
        return hit

    def _refined_split(self, plan: Plan, part: Partition) -> float:
        model, cluster, workload = self.model, self.cluster, self.workload
        m = plan.num_microbatches(workload)
        dual = plan.pipeline_schedule in DUAL
        p2p = self._p2p_s(plan)
        counts = self._chunk_counts(part)
        full = counts @ np.array([self.piece_time(plan, p) for p in self.pieces])  # (chunks, 3)
        runs = m / 2 if part.mirrored else m
        # Model chunk c runs on part.chunks[c].rank (direction 0) and, mirrored (DualPipe),
        # direction 1 runs chunk c on rank pp-1-c.
        n = len(part.chunks)
        paths = [[0.0] * n for _ in range(2 if part.mirrored else 1)]
        for d, path in enumerate(paths):
            where = [ch.rank if d == 0 else plan.pp - 1 - ch.rank for ch in part.chunks]
            for c in range(1, n):
                path[c] = path[c - 1] + full[c - 1, 0] + p2p * (where[c - 1] != where[c])
        starts = [float("inf")] * plan.pp
        for d, path in enumerate(paths):
            for ch in part.chunks:
                r = ch.rank if d == 0 else plan.pp - 1 - ch.rank
                starts[r] = min(starts[r], path[ch.index])
        work = full.sum(axis=1)
        r = max(range(plan.pp), key=lambda k: starts[k] + runs * sum(work[ch.index] for ch in part.chunks_of_rank(k)))
        share = 1.0
        if dual and plan.ep > 1:
            share = 1.0 - C.compute_constants()["ep_overlap_communication_sms"] / cluster.gpu.num_sms
        comp_all = counts @ np.array([self.piece_time(plan, p, share) for p in self.pieces])
        attn_all = counts @ np.array([self._attention_s(plan, p, share) for p in self.pieces])
        own = part.chunks_of_rank(r)
        dense = expert = 0.0
        for ch in own:
            prm = counts[ch.index] @ self._piece_params(plan.tp, plan.ep)
            dense, expert = dense + prm[0], expert + prm[1]
        dp = self._dp_comm(plan, r, dense, expert)
        comm = self._stage_comm(plan, r)  # (pieces, 6): PieceComm.astuple() of each piece
        chunk_comm = counts @ comm
        gather, scatter = dp.per_microbatch_gather_s / len(own), dp.per_microbatch_scatter_s / len(own)
        busy = 0.0
        first_bw = None
        for ch in own:
            comp, attn = comp_all[ch.index], attn_all[ch.index]
            tp_f, tp_b, cpf, cpb, ep_f, ep_b = chunk_comm[ch.index]  # StageComm.chunk: a sum over pieces
            cp_f = max(0.0, cpf - attn)
            cp_b = max(0.0, cpb - 2 * attn)
            f = max(comp[0] + cp_f, gather) + tp_f + ep_f
            b = max(comp[1] + cp_b, gather) + tp_b + ep_b
            w = max(comp[2], scatter)
            serial = f + b + w
            if dual:  # the simulator's F&B, never above F + B + W
                pair = max(comp.sum(), ep_f + ep_b) + tp_f + tp_b + cp_f + cp_b
                serial = min(serial, pair)
            busy += runs * serial
            if first_bw is None:
                first_bw = b + w
        exposed = max(0.0, dp.step_s - first_bw)
        sharded = plan.zero_stage >= ZeroStage.OPTIMIZER
        local = dense / (plan.dp * plan.cp if sharded else 1) + expert / (plan.edp if sharded else 1)
        return starts[r] + busy + exposed + local * self._opt_s_per_param

    def _attention_s(self, plan: Plan, piece: Piece, share: float) -> float:
        key = ("attn", plan.tp, plan.cp, plan.micro_batch_size, plan.sequence_parallel and plan.tp > 1,
               plan.attention_kernel, piece, share) + ((plan.ep, plan.expert_tp) if self._moe[self._index[piece]] else ())
        hit = self._piece.get(key)
        if hit is None:
            gpu, precision = self.cluster.gpu, self.workload.precision
            hit = self._piece[key] = sum(C.op_forward_s(op, gpu, precision, share)
                                         for op in C.piece_ops(self.model, plan, self.workload, piece)
                                         if op.kind is C.OpKind.ATTENTION)
        return hit

    def _stage_comm(self, plan: Plan, stage: int) -> np.ndarray:
        key = (plan.tp, plan.cp, plan.ep, plan.expert_tp, plan.dp, plan.pp, plan.micro_batch_size,
               plan.sequence_parallel, plan.rank_order, stage)
        hit = self._comm.get(key)
        if hit is None:
            comm = StageComm(self.model, self.cluster, plan, self.workload, rank_layout(plan), stage)
            hit = self._comm[key] = np.array([comm.piece(p).astuple() for p in self.pieces])
        return hit

    def _dp_comm(self, plan: Plan, stage: int, dense: float, expert: float):
        key = (plan.tp, plan.cp, plan.ep, plan.expert_tp, plan.dp, plan.pp, plan.rank_order, plan.zero_stage,
               stage, dense, expert)
        hit = self._dp.get(key)
        if hit is None:
            hit = self._dp[key] = dp_step_comm(self.cluster, plan, self.workload, rank_layout(plan), stage,
                                               dense, expert)
        return hit

    def _p2p_s(self, plan: Plan) -> float:
        key = (plan.tp, plan.cp, plan.ep, plan.dp, plan.pp, plan.micro_batch_size,
               plan.sequence_parallel and plan.tp > 1, plan.rank_order)
        hit = self._p2p.get(key)
        if hit is None:
            hit = self._p2p[key] = pp_p2p_s(self.cluster, plan, self.workload, rank_layout(plan), self.model)
        return hit


__all__ = ["BoundCalculator", "PlanBounds", "PruneRule"]
