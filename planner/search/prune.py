"""Lower bounds that let the search skip plans without ever losing the optimum.

Every bound here is provably never above what :func:`planner.costmodel.simulate.simulate`
reports for the same plan (``memory <= memory_peak_bytes``, ``time <= step_time_s``), and
each is taken over every layer-to-stage split the simulator may pick (its even split, or
both of its balanced splits) and the smallest kept, so whichever split it picks the bound
holds. From cheap to tight:

``memory_bounds`` / ``time_bounds`` (level 0, vectorised over a :class:`CandidateTable`)
    per-rank parameters and compute from per-shape tables (piece compute per (tp, cp, ep,
    etp, micro-batch, recompute, sp), pieces per rank per (pp, vpp, schedule)), gathered by
    index: a few numpy operations for the whole space. Neither reads the rank order (no
    communication at this level), so the orders of a plan share one value.
:meth:`BoundCalculator.refined_rows`, :meth:`~BoundCalculator.refined`,
:meth:`~BoundCalculator.replayed`, :meth:`~BoundCalculator.refined_memory` (memoised per
    shape): :mod:`planner.search.refine`, pipeline ranks priced as the simulator prices
    them (communication, fill, drain, DualPipe's pairs), the simulator's pipeline replayed,
    and the exact memory of the end ranks.

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

from planner.costmodel.memory import memory_constants, state_bytes_per_param
from planner.errors import PlannerError
from planner.search.quick import quick_bounds
from planner.search.refine import ROUNDING, Refiner
from planner.search.space import RECOMPUTES, SCHEDULES, S_DUALPIPE, CandidateTable
from planner.specs.hardware import ClusterSpec
from planner.specs.model import ModelSpec
from planner.specs.plan import PipelineSchedule, Plan, Workload, ZeroStage


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


class BoundCalculator:
    """Bounds for the plans of one (model, cluster, workload), memoising every per-shape
    number (piece compute, pieces per rank, communication of a stage) across plans."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, workload: Workload):
        self.model, self.cluster, self.workload = model, cluster, workload
        self.refiner = Refiner(model, cluster, workload)
        self.pieces = self.refiner.pieces
        self._counts: dict[tuple, np.ndarray] = {}

    def _rank_counts(self, pp: int, vpp: int, sched: int) -> np.ndarray:
        """(pp, pieces): how many of each piece every rank holds. Even splits: the
        simulator's split. Otherwise the mean over ranks (every row equal): each piece
        lives on the same number of ranks in every split, so the mean is the same for
        both balanced splits, and a max over ranks is never below a mean."""
        key = (pp, vpp, sched)
        hit = self._counts.get(key)
        if hit is None:
            plan = Plan(pp=pp, vpp=vpp, pipeline_schedule=SCHEDULES[sched])
            hit = self.refiner.splits.count_split(plan).rank_counts.copy()
            if not self.refiner.splits.even(plan):
                hit[:] = hit.mean(axis=0)
            self._counts[key] = hit
        return hit

    def _piece_params(self, tp: int, ep: int, etp: int) -> np.ndarray:
        return self.refiner.piece_params(tp, ep, etp)

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
        per = state_bytes_per_param(self.workload)
        params = self._gathered(table, ("tp", "ep", "etp"), self._piece_params)
        shard_dense = 1.0 / (table.dp * table.cp)
        shard_expert = table.ep * table.etp / (table.tp * table.cp * table.dp)  # 1 / edp

        def reduce(rows, rank):
            dense, expert = rank[..., 0], rank[..., 1]
            total = np.zeros_like(dense)
            for per_param, sharded_per_param, stage in (
                (per.weights, per.weights_zero3, 3), (per.gradients, per.gradients, 2), (per.optimizer, per.optimizer, 1),
            ):
                on = (table.zero[rows] >= stage)[:, None]
                sharded = (dense * shard_dense[rows, None] + expert * shard_expert[rows, None]) * sharded_per_param
                total += np.where(on, sharded, (dense + expert) * per_param)
            return total.max(axis=1)

        return self._by_split(table, params, reduce) + c.cuda_context_bytes + c.nccl_buffers_bytes + c.gemm_workspace_bytes

    def time_bounds(self, table: CandidateTable) -> np.ndarray:
        """Per candidate: max over ranks r of ``fill_r + max(runs * sum(F + B + W of r's
        pieces) + optimizer_r, runs * sum(...) + drain_r)`` (with the mean over ranks of the
        pieces and no fill or drain where the split is not the even one).

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
        4. ``fill_r``: r's first operation waits for the forwards of the chunks before it;
           ``drain_r``: the backwards after its last operation run on other ranks, whose
           end is the step's at the latest (:meth:`_fill_drain`; each at least its compute).
        """
        if len(table) == 0:
            return np.zeros(0)

        def compute(tp, cp, ep, etp, mb, rec, sp):  # what piece_times reads (not the rank order)
            plan = Plan(tp=tp, cp=cp, ep=ep, etp=etp, dp=ep * etp, micro_batch_size=mb,
                        recompute=RECOMPUTES[rec], sequence_parallel=bool(sp))
            return self.refiner.piece_times(plan)[:, :3]

        fbw = self._gathered(table, ("tp", "cp", "ep", "etp", "mb", "rec", "sp"), compute)  # (n, pieces, F B W)
        params = self._gathered(table, ("tp", "ep", "etp"), self._piece_params)  # (n, pieces, 2)
        m = table.microbatches(self.workload).astype(float)
        runs = np.where(table.sched == S_DUALPIPE, m / 2, m)
        sharded = table.zero >= ZeroStage.OPTIMIZER
        shard_dense = np.where(sharded, 1.0 / (table.dp * table.cp), 1.0)
        shard_expert = np.where(sharded, table.ep * table.etp / (table.tp * table.cp * table.dp), 1.0)  # 1 / edp
        # Per piece: runs * work, and optimizer seconds of its local parameters (linear, so
        # the per-rank sums are matrix products); the fill and drain chains per piece.
        busy = runs[:, None] * fbw.sum(axis=2)
        opt = (params[..., 0] * shard_dense[:, None] + params[..., 1] * shard_expert[:, None]) * self.refiner.opt_s_per_param
        per_piece = np.stack([busy + opt, busy, fbw[..., 0], fbw[..., 1] + fbw[..., 2]], axis=2)
        out = np.zeros(len(table))
        code = (table.pp * 64 + table.vpp) * 8 + table.sched
        for key in np.unique(code):
            rows = np.flatnonzero(code == key)
            i = rows[0]
            pp, vpp, sched = int(table.pp[i]), int(table.vpp[i]), int(table.sched[i])
            counts = self._rank_counts(pp, vpp, sched)
            fill, drain = self._fill_drain(pp, vpp, sched)
            v = per_piece[rows]  # (rows, pieces, 4)
            start = v[..., 2] @ fill.T  # (rows, ranks)
            end = np.maximum(v[..., 0] @ counts.T, v[..., 1] @ counts.T + v[..., 3] @ drain.T)
            out[rows] = (start + end).max(axis=1)
        # Scaled like every refined bound: summed in another order than the simulator's, the
        # bound of a plan whose step it equals can come out an ulp above it, and a plan tied
        # with the k-th best must not be pruned.
        return ROUNDING * out

    def _fill_drain(self, pp: int, vpp: int, sched: int) -> tuple[np.ndarray, np.ndarray]:
        """(pp, pieces) twice: the pieces whose forward precedes each rank's first operation
        and whose full backward follows its last, where they are known without a program:
        1F1B, ZB and interleaved on the even split, where rank r starts with micro-batch 0's
        forward of chunk r and (but ZB) ends with the last micro-batch's full backward of
        chunk r (programs.py's closed form, checked against the compiled programs). Zero
        elsewhere (a chain of length 0 is a bound too)."""
        key = ("fill", pp, vpp, sched)
        hit = self._counts.get(key)
        if hit is None:
            plan = Plan(pp=pp, vpp=vpp, pipeline_schedule=SCHEDULES[sched])
            n = len(self.pieces)
            fill, drain = np.zeros((pp, n)), np.zeros((pp, n))
            if self.refiner.splits.even(plan):
                counts = self.refiner.splits.count_split(plan).counts  # (chunks, pieces); chunk c on rank c % pp
                before = np.cumsum(counts, axis=0) - counts  # pieces of chunks 0..c-1
                fill[:] = before[:pp]
                if SCHEDULES[sched] is not PipelineSchedule.ZERO_BUBBLE:
                    drain[:] = before[:pp]
            hit = self._counts[key] = (fill, drain)
        return hit

    # -----------------------------------------------------------------------------------
    # Refined: one plan (or one group), pipeline ranks priced like the simulator

    def levels(self, plan: Plan) -> dict[str, float]:
        """Every step-time bound of one plan, by name, cheapest first."""
        table = CandidateTable.from_plans([plan])
        rows = np.zeros(1, dtype=np.int64)
        return {"level0": float(self.time_bounds(table)[0]),
                "quick": float(self.refined_rows(table, rows, quick=True)[0]),
                "ranks": self.refined(plan, data_parallel=False), "data_parallel": self.refined(plan),
                "replay": self.replayed(plan)}

    def bounds(self, plan: Plan) -> PlanBounds:
        """The tightest bounds of one plan (the largest of each kind)."""
        table = CandidateTable.from_plans([plan])
        return PlanBounds(step_time_s=max(self.levels(plan).values()),
                          memory_bytes=max(float(self.memory_bounds(table)[0]), self.refined_memory(plan)))

    def refined(self, plan: Plan, data_parallel: bool = True) -> float:
        """The busiest ranks' step-time bound (:meth:`planner.search.refine.Refiner.time_bound`)."""
        return self.refiner.time_bound(plan, data_parallel)

    def refined_rows(self, table: CandidateTable, rows: np.ndarray, quick: bool = False) -> np.ndarray:
        """Refined bounds without the data-parallel terms of the candidates ``rows``, which
        differ at most in recompute and ZeRO stage (same etp and rank order)
        (:meth:`planner.search.refine.Refiner.variant_bounds`, one plan per recompute)."""
        which, variants = _variants(table, rows)
        values = self.refiner.variant_bounds(variants, quick)
        return values[which, (table.zero[rows] >= ZeroStage.OPTIMIZER).astype(int)]

    def refined_variants(self, table: CandidateTable, rows: np.ndarray) -> np.ndarray:
        """``refined(plan)`` of the candidates ``rows``, which differ at most in recompute
        (one ZeRO stage), priced together
        (:meth:`planner.search.refine.Refiner.time_bound_variants`)."""
        which, variants = _variants(table, rows)
        return np.array(self.refiner.time_bound_variants(variants))[which]

    def quick_rows(self, table: CandidateTable, groups: list[np.ndarray]) -> list[np.ndarray | PlannerError]:
        """``refined_rows(table, rows, quick=True)`` for every ``rows`` in ``groups`` (each
        a group of candidates that differ at most in recompute and ZeRO stage), priced
        together (:func:`planner.search.quick.quick_bounds`); the cost model's error in
        place of the values for a group whose shape it refuses."""
        picks, variants = zip(*(_variants(table, rows) for rows in groups)) if groups else ((), ())
        values, errors = quick_bounds(self.refiner, variants)
        return [errors[g] if g in errors else
                values[g][picks[g], (table.zero[rows] >= ZeroStage.OPTIMIZER).astype(int)]
                for g, rows in enumerate(groups)]

    def replayed(self, plan: Plan) -> float:
        """The replayed step-time bound: the simulator's pipeline replayed
        (:meth:`planner.search.refine.Refiner.replay_bound`)."""
        return self.refiner.replay_bound(plan)

    def refined_memory(self, plan: Plan, ranks: str = "ends") -> float:
        """The end ranks' memory bound (:meth:`planner.search.refine.Refiner.memory_bound`)."""
        return self.refiner.memory_bound(plan, ranks)


def _variants(table: CandidateTable, rows: np.ndarray) -> tuple[list[int], list[Plan]]:
    """For candidates that differ at most in recompute and ZeRO stage: one plan per
    recompute (its first row, recomputes in code order) and each row's index among them."""
    recs = table.rec[rows].tolist()
    first: dict[int, int] = {}
    for k, rec in enumerate(recs):
        first.setdefault(rec, k)
    order = sorted(first)
    return [order.index(rec) for rec in recs], [table.plan(int(rows[first[rec]])) for rec in order]


__all__ = ["BoundCalculator", "PlanBounds", "PruneRule"]
