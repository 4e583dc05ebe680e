"""Refined bounds: pipeline ranks of one plan priced as the simulator prices them.

Every bound here is never above :func:`planner.costmodel.simulate.simulate`'s step time:
it is taken for each split the simulator may pick (:mod:`planner.costmodel.splits`) and the
smallest kept. For a split and a rank r:

- ``end_r >= ES_j + rest_j`` for each position j of r's program (:mod:`planner.search.programs`):
  the chain of inputs before operation j (forwards and backwards on other ranks, each at
  least its compute with all SMs, plus p2p sends), then everything r runs from j on, one
  operation after another. The step is ``max_r(end_r + exposed DP_r + optimizer_r)``; when
  r's last operation is a backward, the backwards it feeds still follow on other ranks
  (``drain_r``), a bound of its own, ``end_r + drain_r``.
- What r runs: chunk c's times ``f, b, w`` are built as the simulator's chunk times are
  (compute at the SM share it leaves, exposed TP/CP/EP, ZeRO-3 waits), on the stage the
  simulator prices chunk c on (its home rank), and DualPipe's overlapped ``pair`` too (the
  larger of compute with the CP exchange its attention does not hide, and the all-to-all
  plus ZeRO-3 traffic, plus TP). An F&B pair of chunks a, b costs ``f_a k_a + (b_b + w_b) k_b``
  with ``k_c = pair_c / (f_c + b_c + w_c) <= 1``; programs.py says how paired and unpaired
  operations are counted so that the sum stays below the simulator's.
- Exposed DP: the simulator exposes ``max(0, dp_r - (b + w))`` of r's first chunk c0, so
  ``end_r + exposed_r >= ES_j + rest_j - (b + w)_c0 + dp_r`` for positions whose rest holds
  a whole unpaired ``b + w`` of c0. The optimizer step is the simulator's.

Three strengths, cheapest first (the search asks for each only when the previous one is
the smallest bound left):

- ``time_bounds(..., quick=True)``: rank 0 with the communication of stage 0 only (chunks
  homed elsewhere at their compute), without the data-parallel terms;
- ``time_bounds`` / ``time_bound(plan, data_parallel=False)``: the busiest ranks (chosen
  with stage 0's communication standing in for every stage's) each on their own stages;
  ``time_bound(plan)``: the same with the data-parallel terms;
- :meth:`Refiner.replay_bound`: every chunk priced on its stage and the simulator's own
  event simulation replayed, which equals its pipeline (up to float rounding).

Every quantity is keyed by the plan fields it reads (never by object identity) and cached,
so plans that share a shape pay for it once. Float sums run in another order than the
simulator's; :data:`ROUNDING` absorbs that.
"""

from __future__ import annotations

import inspect

import numpy as np

from planner.costmodel import compute as C
from planner.costmodel import ep_overlap
from planner.costmodel.compute_vec import OpArrays
from planner.costmodel.comm import StageComm, dp_step_comm, pp_p2p_s
from planner.costmodel.dp_overlap import plan_exposure
from planner.costmodel.memory import inflight_microbatches, piece_params, stage_memory
from planner.costmodel.partition import Piece
from planner.costmodel.schedules import ChunkTimes, simulate_pipeline
from planner.costmodel.simulate import _optimizer_bytes_per_param, dualpipe_pair_s
from planner.hwmodels.placement import rank_layout
from planner.search.programs import programs
from planner.costmodel.splits import Split, SplitCache
from planner.specs.plan import DUAL_SCHEDULES
from planner.specs.hardware import ClusterSpec
from planner.specs.model import ModelSpec
from planner.specs.plan import PipelineSchedule, Plan, Recompute, Workload, ZeroStage

_ZERO3_UNITS = "zero3_units" in inspect.signature(dp_step_comm).parameters
"""Whether :func:`dp_step_comm` prices ZeRO-3 per unit (the simulator then passes one per
piece with parameters), so that the gathers here are the simulator's."""

ROUNDING = 1.0 - 1e-9
"""Bounds are scaled by this: the simulator adds the same terms in another order (a few
ulps apart), and an exact tie must not be pruned."""


class Refiner:
    """Refined time and memory bounds for the plans of one (model, cluster, workload)."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, workload: Workload):
        self.model, self.cluster, self.workload = model, cluster, workload
        self.splits = SplitCache(model)
        self.pieces = self.splits.pieces
        # Pieces whose compute reads ep/etp (compute.moe_ops); the others do not.
        self._moe = tuple(p in (Piece.MOE, Piece.MTP) and model.moe is not None for p in self.pieces)
        self._piece: dict[tuple, tuple[float, float, float, float]] = {}
        self._pieces: dict[tuple, np.ndarray] = {}
        self._ops: dict[tuple, OpArrays] = {}
        self._plan_splits: dict[tuple, tuple[Split, ...]] = {}
        self._layouts: dict[tuple, object] = {}
        self._params: dict[tuple, np.ndarray] = {}
        self._comm: dict[tuple, np.ndarray] = {}
        self._dp: dict[tuple, object] = {}
        self._p2p: dict[tuple, float] = {}
        self._time: dict = {}
        self._replay: dict[Plan, float] = {}
        self._timelines: dict[tuple, np.ndarray] = {}
        gpu = cluster.gpu
        self.opt_s_per_param = _optimizer_bytes_per_param(workload) / (
            gpu.hbm_bandwidth_bytes_per_s * gpu.efficiency.hbm_fraction)
        self.ep_share = 1.0 - C.compute_constants()["ep_overlap_communication_sms"] / gpu.num_sms
        self.comm_sm_tax = ep_overlap.comm_sm_tax(gpu)  # combined 1F1B's pair (simulate's)
        self.pair_busy_fraction = C.compute_constants()["dualpipe_pair_compute_busy_fraction"]

    def merged(self, plan: Plan) -> bool:
        """Whether ``plan`` runs Megatron-Core's combined 1F1B (:func:`ep_overlap.applies`)."""
        return ep_overlap.applies(self.model, plan, self.workload)

    # -----------------------------------------------------------------------------------
    # Per-shape tables

    def piece_times(self, plan: Plan, share: float = 1.0) -> np.ndarray:
        """(pieces, 4): F, B, W and the attention core's forward seconds of each piece for one
        micro-batch (:func:`compute.piece_ops`, :func:`compute.piece_time`), keyed by what
        they read: Shard.of (tp, cp, micro-batch, sp), the kernel, recompute, the SM share,
        and ep/etp for MoE pieces only."""
        key = (plan.tp, plan.cp, plan.micro_batch_size, plan.sequence_parallel and plan.tp > 1,
               plan.attention_kernel, plan.recompute, share, plan.ep, plan.expert_tp)
        hit = self._pieces.get(key)
        if hit is None:
            hit = self._pieces[key] = np.array([self._piece_row(plan, share, k) for k in range(len(self.pieces))])
        return hit

    def _piece_row(self, plan: Plan, share: float, k: int) -> tuple[float, float, float, float]:
        piece = self.pieces[k]
        key = (plan.tp, plan.cp, plan.micro_batch_size, plan.sequence_parallel and plan.tp > 1,
               plan.attention_kernel, plan.recompute, share, piece) + ((plan.ep, plan.expert_tp) if self._moe[k] else ())
        hit = self._piece.get(key)
        if hit is None:  # all three recompute modes at once (compute_vec: piece_time's twin)
            ops_key = key[:5] + key[7:]  # piece_ops reads neither recompute nor the SM share
            ops = self._ops.get(ops_key)
            if ops is None:
                ops = self._ops[ops_key] = OpArrays.of(C.piece_ops(self.model, plan, self.workload, piece),
                                                       self.cluster.gpu, self.workload.precision)
            times = ops.times(share)
            attn = times[None][0]
            for recompute in Recompute:
                f, b, w, _ = times[recompute]
                self._piece[key[:5] + (recompute,) + key[6:]] = (f, b, w, attn)
            hit = self._piece[key]
        return hit

    def piece_params(self, tp: int, ep: int, etp: int | None = None) -> np.ndarray:
        """(pieces, 2): dense and expert parameters of each piece on one GPU (``etp``: the
        expert tensor-parallel degree, None = tp as in :class:`Plan`)."""
        etp = tp if etp is None else etp
        key = (tp, ep, etp)
        hit = self._params.get(key)
        if hit is None:
            plan = Plan(tp=tp, ep=ep, etp=etp, dp=ep * etp)
            hit = self._params[key] = np.array(
                [[piece_params(self.model, plan, p).dense, piece_params(self.model, plan, p).expert]
                 for p in self.pieces])
        return hit

    def forward_s(self, plan: Plan) -> dict[Piece, float]:
        """Each piece's forward seconds with all SMs (what the simulator balances)."""
        return dict(zip(self.pieces, self.piece_times(plan)[:, 0].tolist(), strict=True))

    def _layout(self, plan: Plan):
        """:func:`rank_layout` of ``plan`` (a function of its degrees and rank order),
        built on one plan per layout so that the simulator's own caches of stage groups
        (keyed by the layout's plan) serve every plan that shares it."""
        key = (plan.tp, plan.cp, plan.ep, plan.expert_tp, plan.dp, plan.pp, plan.rank_order)
        hit = self._layouts.get(key)
        if hit is None:
            hit = self._layouts[key] = rank_layout(Plan(tp=plan.tp, cp=plan.cp, ep=plan.ep, etp=plan.expert_tp,
                                                        dp=plan.dp, pp=plan.pp, rank_order=plan.rank_order))
        return hit

    def stage_comm(self, plan: Plan, stage: int) -> np.ndarray:
        """(pieces, 6): PieceComm.astuple() of each piece on ``stage``."""
        key = (plan.tp, plan.cp, plan.ep, plan.expert_tp, plan.dp, plan.pp, plan.micro_batch_size,
               plan.sequence_parallel, plan.rank_order, plan.recompute, plan.recompute_modules, stage)
        hit = self._comm.get(key)
        if hit is None:
            comm = StageComm(self.model, self.cluster, plan, self.workload, self._layout(plan), stage)
            hit = self._comm[key] = np.array([comm.piece(p).astuple() for p in self.pieces])
        return hit

    def _dp_comm(self, plan: Plan, split: Split, stage: int):
        """:func:`dp_step_comm` of ``stage`` as the simulator calls it: the parameters of its
        pieces, one ZeRO-3 unit per piece that has any."""
        params = self.piece_params(plan.tp, plan.ep, plan.expert_tp)
        dense, expert = (float(x) for x in split.rank_counts[stage] @ params)
        units = int(split.rank_counts[stage] @ (params.sum(axis=1) > 0))
        key = (plan.tp, plan.cp, plan.ep, plan.expert_tp, plan.dp, plan.pp, plan.rank_order, plan.zero_stage,
               plan.pipeline_schedule, stage, dense, expert, units)
        hit = self._dp.get(key)
        if hit is None:
            extra = {"zero3_units": units} if _ZERO3_UNITS else {}
            hit = self._dp[key] = dp_step_comm(self.cluster, plan, self.workload, self._layout(plan), stage,
                                               dense, expert, **extra)
        return hit

    def _dp_floor(self, plan: Plan, split: Split, stage: int) -> float:
        """What :func:`~planner.costmodel.dp_overlap.dp_exposure` charges ``stage`` at least
        beyond (b + w) of its first chunk c0: c0's share of the gradient reduction (all of
        it but interleaved, where c0's last backward is the rank's last), plus the ZeRO-1/2
        gather unless the next forward hides it. So exposed >= max(0, this - (b + w)_c0)."""
        dp = self._dp_comm(plan, split, stage)
        reduce = dp.reduce_s
        if plan.pipeline_schedule is PipelineSchedule.INTERLEAVED:
            totals = self.piece_params(plan.tp, plan.ep, plan.expert_tp).sum(axis=1)
            held = float(split.rank_counts[stage] @ totals)
            own = split.own[stage]
            reduce *= float(split.counts[own[0]] @ totals) / held if held > 0 else 1.0 / len(own)
        return reduce + (0.0 if self.workload.overlap_param_gather else dp.gather_s)

    def p2p_s(self, plan: Plan) -> float:
        key = (plan.tp, plan.cp, plan.ep, plan.dp, plan.pp, plan.micro_batch_size,
               plan.sequence_parallel and plan.tp > 1, plan.rank_order)
        hit = self._p2p.get(key)
        if hit is None:
            hit = self._p2p[key] = pp_p2p_s(self.cluster, plan, self.workload, self._layout(plan), self.model)
        return hit

    def splits_of(self, plan: Plan) -> tuple[Split, ...]:
        """The simulator's candidate splits (:class:`SplitCache`), keyed by what they read:
        the shape and, through the pieces' forward times, what :meth:`piece_times` reads."""
        key = (plan.pp, plan.vpp, plan.pipeline_schedule, plan.tp, plan.cp, plan.micro_batch_size,
               plan.sequence_parallel and plan.tp > 1, plan.attention_kernel, plan.recompute, plan.ep, plan.expert_tp)
        hit = self._plan_splits.get(key)
        if hit is None:  # plans that differ in what the forward times do not show share them
            layers = None if plan.pipeline_layers is None else tuple(plan.pipeline_layers)
            by_times = (plan.pp, plan.vpp, plan.pipeline_schedule, layers, self.piece_times(plan)[:, 0].tobytes())
            hit = self._plan_splits.get(by_times)
            if hit is None:
                hit = self._plan_splits[by_times] = self.splits.splits(plan, self.forward_s(plan))
            self._plan_splits[key] = hit
        return hit

    # -----------------------------------------------------------------------------------
    # Bounds

    def time_bound(self, plan: Plan, data_parallel: bool = True) -> float:
        """The busiest ranks' step-time bound (module docstring), min over the simulator's splits.

        ``data_parallel=False`` leaves out the data-parallel terms (exposed gradient
        reduction, ZeRO-3 waits), which only lowers it, and skips their collectives: the
        search's cheaper first refinement (:meth:`time_bounds`)."""
        if not data_parallel:
            return self.time_bounds([plan])[0]
        return self.time_bound_variants([plan])[0]

    def time_bound_variants(self, plans: list[Plan]) -> list[float]:
        """:meth:`time_bound` of plans that differ only in recompute (one ZeRO stage),
        priced together: the ranks priced are those any of them picks (each rank's bound
        holds for every plan), so each value is at least the one-plan value."""
        todo = [p for p in plans if p not in self._time]
        by_split: dict[tuple, list[Plan]] = {}  # plans sharing the simulator's splits
        for p in todo:
            by_split.setdefault(tuple(id(s) for s in self.splits_of(p)), []).append(p)
        for group in by_split.values():
            sharded = int(group[0].zero_stage >= ZeroStage.OPTIMIZER)
            best = ROUNDING * np.min([self._split_bounds(group, s, True)[:, sharded]
                                      for s in self.splits_of(group[0])], axis=0)
            for p, value in zip(group, best.tolist(), strict=True):
                self._time[p] = value
        return [self._time[p] for p in plans]

    def time_bounds(self, plans: list[Plan], quick: bool = False) -> list[float]:
        """:meth:`time_bound` without the data-parallel terms for plans that differ at most
        in recompute and ZeRO stage (priced together, :meth:`variant_bounds`)."""
        variants: dict[Recompute, Plan] = {}
        for p in plans:
            variants.setdefault(p.recompute, p)
        table = dict(zip(variants, self.variant_bounds(list(variants.values()), quick), strict=True))
        return [float(table[p.recompute][int(p.zero_stage >= ZeroStage.OPTIMIZER)]) for p in plans]

    def variant_bounds(self, variants: list[Plan], quick: bool = False) -> np.ndarray:
        """(variants, 2): :meth:`time_bound` without the data-parallel terms of plans that
        differ only in recompute, for an unsharded and a sharded optimizer (without those
        terms a plan reads the ZeRO stage only there).

        ``quick``: rank 0 alone, with the communication of stage 0 only (chunks homed
        elsewhere at their compute): one stage's collectives per plan shape, for a first
        cut of the many plans whose level 0 leaves out communication."""
        out, todo = self.level1_cached(variants, quick)
        by_split: dict[tuple, list[int]] = {}  # variants sharing the simulator's splits
        for v in todo:
            by_split.setdefault(tuple(id(s) for s in self.splits_of(variants[v])), []).append(v)
        for vs in by_split.values():
            group = [variants[v] for v in vs]
            best = ROUNDING * np.min([self._split_bounds(group, s, False, quick)
                                      for s in self.splits_of(group[0])], axis=0)
            for v, row in zip(vs, best, strict=True):
                out[v] = self._time[self._level1_key(variants[v], quick)] = row
        return out

    def level1_cached(self, variants: list[Plan], quick: bool) -> tuple[np.ndarray, list[int]]:
        """(variants, 2): the :meth:`variant_bounds` already known (NaN elsewhere), and the
        indices of the variants still to price."""
        out = np.full((len(variants), 2), np.nan)
        todo = []
        for v, p in enumerate(variants):
            hit = self._time.get(self._level1_key(p, quick))
            if hit is None:
                todo.append(v)
            else:
                out[v] = hit
        return out, todo

    def store_level1(self, plan: Plan, quick: bool, value: np.ndarray) -> None:
        """Remember a :meth:`variant_bounds` row priced elsewhere (:mod:`planner.search.quick`)."""
        self._time[self._level1_key(plan, quick)] = value

    @staticmethod
    def _level1_key(plan: Plan, quick: bool) -> tuple:
        return (plan.tp, plan.cp, plan.pp, plan.vpp, plan.ep, plan.expert_tp, plan.dp, plan.micro_batch_size,
                plan.sequence_parallel, plan.recompute, plan.pipeline_schedule, plan.attention_kernel,
                plan.rank_order, quick)

    def replay_bound(self, plan: Plan) -> float:
        """The simulator's pipeline replayed.

        Every chunk's times are built as the simulator builds them (:meth:`_chunk_times` on
        every chunk's home stage) and run through the simulator's own event simulation
        (:func:`~planner.costmodel.schedules.simulate_pipeline`), which gives each rank's
        end; the step is then ``max_r(end_r + exposed_r + optimizer_r) + delay`` with the
        simulator's own data-parallel exposure and delay (:mod:`~planner.costmodel.dp_overlap`).
        The min over the simulator's splits.
        Unlike :meth:`time_bound` this reads every stage's communication (more collectives
        to price) and runs the event loop, so the search asks for it last."""
        hit = self._replay.get(plan)
        if hit is None:
            hit = self._replay[plan] = ROUNDING * min(self._replay_split(plan, s) for s in self.splits_of(plan))
        return hit

    def _replay_split(self, plan: Plan, split: Split) -> float:
        n = len(split.partition.chunks)
        durations = self._chunk_times([plan], split, range(n), True)[0]
        merged = self.merged(plan)
        paired = plan.pipeline_schedule in DUAL_SCHEDULES or merged
        times = [ChunkTimes(f, b, w, pair if paired else None) for f, b, w, pair in durations.T.tolist()]
        m, p2p = plan.num_microbatches(self.workload), self.p2p_s(plan)
        key = (plan.pipeline_schedule, m, plan.pp, plan.vpp, merged, p2p, durations.tobytes())
        ends = self._timelines.get(key)
        if ends is None:
            ends = self._timelines[key] = np.array(
                simulate_pipeline(plan.pipeline_schedule, times, m, plan.pp, plan.vpp, p2p,
                                  ep_overlap=merged).rank_end_s)
        totals = self.piece_params(plan.tp, plan.ep, plan.expert_tp)
        params = split.rank_counts @ totals  # (ranks, dense/expert)
        sharded = plan.zero_stage >= ZeroStage.OPTIMIZER
        local = params[:, 0] / (plan.dp * plan.cp if sharded else 1) + params[:, 1] / (plan.edp if sharded else 1)
        dps = [self._dp_comm(plan, split, r) for r in range(plan.pp)]
        exposed, gathers, delay = plan_exposure(plan, self.workload, split.own, durations[0],
                                                durations[1] + durations[2], (split.counts @ totals.sum(axis=1)).tolist(),
                                                [d.reduce_s for d in dps], [d.gather_s for d in dps], p2p)
        # The optimizer waits for every rank's reduction (dp_overlap's barrier).
        return float((ends + exposed).max() + (local * self.opt_s_per_param + gathers).max() + delay)

    def memory_bound(self, plan: Plan, ranks: str = "ends") -> float:
        """min over the simulator's splits of the largest
        :func:`~planner.costmodel.memory.stage_memory` of the first and last ranks
        (``ranks="all"``: of every rank, which is the simulator's peak for that split)."""
        m, gpu = plan.num_microbatches(self.workload), self.cluster.gpu
        which = range(plan.pp) if ranks == "all" else sorted({0, plan.pp - 1})
        merged = self.merged(plan)
        return min(max(stage_memory(self.model, plan, self.workload, s.partition, k, gpu,
                                    inflight_microbatches(plan, m, k, merged)).total_bytes for k in which)
                   for s in self.splits_of(plan))

    def _split_bounds(self, plans: list[Plan], split: Split, data_parallel: bool, quick: bool = False) -> np.ndarray:
        """(variants, 2): the bound of each plan (all alike but recompute) on ``split``, for
        an unsharded and a sharded optimizer (``quick``: :meth:`time_bounds`)."""
        merged = [self.merged(p) for p in plans]
        if len(set(merged)) > 1:  # full recomputation turns combined 1F1B off: other programs
            out = np.empty((len(plans), 2))
            for flag in (False, True):
                idx = [i for i, f in enumerate(merged) if f is flag]
                out[idx] = self._split_bounds([plans[i] for i in idx], split, data_parallel, quick)
            return out
        plan = plans[0]
        prog = programs(plan.pipeline_schedule, plan.num_microbatches(self.workload), plan.pp, plan.vpp, merged[0])
        full = split.counts @ np.stack([self.piece_times(p)[:, :3] for p in plans])  # (variants, chunks, F B W)
        full = full.transpose(0, 2, 1)
        p2p = self.p2p_s(plan)
        ranks = slice(0, 1) if quick else slice(None)
        chain = np.einsum("krjn,vkn->vrj", prog.chain[:, ranks], full) + p2p * prog.chain_sends[ranks]
        drain = np.einsum("krn,vkn->vr", prog.drain[:, ranks], full[:, 1:]) + p2p * prog.drain_sends[ranks]
        if quick:
            return self._rank_bounds(plans, split, prog, 0, chain[:, 0], drain[:, 0], False, quick=True)
        # Which ranks to price (a choice only: any rank gives a bound): the largest with
        # stage 0's communication standing in for every stage's, no ZeRO-3 waits.
        proxy = self._chunk_times(plans, split, None, False)
        end = np.where(prog.valid, chain + np.einsum("krjn,vkn->vrj", prog.rest, proxy), -np.inf).max(axis=2)
        ranks = set(np.argmax(end + drain, axis=1).tolist()) | set(np.argmax(end, axis=1).tolist())
        if data_parallel and plan.zero_stage is ZeroStage.PARAMETERS:  # and the largest ZeRO-3 gathers
            ranks.add(int(np.argmax(split.rank_counts @ self.piece_params(plan.tp, plan.ep, plan.expert_tp).sum(axis=1))))
        return np.max([self._rank_bounds(plans, split, prog, r, chain[:, r], drain[:, r], data_parallel)
                       for r in ranks], axis=0)

    def _rank_bounds(self, plans: list[Plan], split: Split, prog, r: int, chain: np.ndarray, drain: np.ndarray,
                     data_parallel: bool, quick: bool = False) -> np.ndarray:
        plan = plans[0]
        durations = self._chunk_times(plans, split, split.own[r], data_parallel, quick)
        rest = np.einsum("kjn,vkn->vj", prog.rest[:, r], durations)  # what r runs from each position on
        ends = np.where(prog.valid[r], chain + rest, -np.inf)  # (variants, positions)
        end = ends.max(axis=1)
        dense, expert = (float(x) for x in split.rank_counts[r] @ self.piece_params(plan.tp, plan.ep, plan.expert_tp))
        local = np.array([dense + expert, dense / (plan.dp * plan.cp) + expert / plan.edp])
        exposed = end
        if data_parallel:
            # The simulator exposes max(0, dp - (b + w)) of r's first chunk c0: from positions
            # whose rest holds a whole unpaired b and w of c0, end_r + exposed >= end - (b + w) + dp.
            c0 = split.own[r][0]
            whole = (prog.valid[r] & (prog.rest_backward_input[r, :, c0] >= 1)
                     & (prog.rest_backward_weight[r, :, c0] >= 1))
            if whole.any():
                dp = self._dp_floor(plan, split, r)
                exposed = np.maximum(end, ends[:, whole].max(axis=1) - durations[:, 1, c0] - durations[:, 2, c0] + dp)
        return np.maximum(exposed[:, None] + local[None, :] * self.opt_s_per_param, (end + drain)[:, None])

    def _chunk_times(self, plans: list[Plan], split: Split, chunks, data_parallel: bool,
                     stage0_only: bool = False) -> np.ndarray:
        """(variants, 4, chunks): lower bounds of the simulator's f, b, w and DualPipe pair of
        each chunk in ``chunks`` (0 elsewhere), priced on the chunk's home stage, with ZeRO-3
        waits if ``data_parallel``; ``chunks=None``: every chunk, on stage 0's communication.
        ``stage0_only``: chunks homed on other stages without communication (each time is
        at least its compute)."""
        plan = plans[0]
        share = self.ep_share if plan.pipeline_schedule in DUAL_SCHEDULES and plan.ep > 1 else 1.0
        n = len(split.partition.chunks)
        idx = np.arange(n) if chunks is None else np.asarray(chunks)
        counts = split.counts[idx]
        stacked = (self.piece_times(plan, share)[None] if len(plans) == 1
                   else np.stack([self.piece_times(p, share) for p in plans]))
        times = (counts @ stacked).transpose(2, 0, 1)
        gather = scatter = 0.0
        if chunks is None:
            comm = (split.counts @ self.stage_comm(plan, 0)).T
        else:
            homes = split.home[idx]  # the simulator prices chunk c there
            comm = np.zeros((6, len(idx)))
            for h in np.unique(homes).tolist():
                if h == 0 or not stage0_only:  # else no communication (at least the compute)
                    at = homes == h
                    comm[:, at] = (counts[at] @ self.stage_comm(plan, h)).T
            homes = homes.tolist()
            if data_parallel and plan.zero_stage is ZeroStage.PARAMETERS:
                dps = [(self._dp_comm(plan, split, h), len(split.own[h])) for h in homes]
                gather = np.array([d.per_microbatch_gather_s / k for d, k in dps])
                scatter = np.array([d.per_microbatch_scatter_s / k for d, k in dps])
        comp_f, comp_b, comp_w, attn = times  # each (variants, k)
        tp_f, tp_b, cpf, cpb, ep_f, ep_b = comm  # each (k,)
        cp_f, cp_b = np.maximum(0.0, cpf - attn), np.maximum(0.0, cpb - 2 * attn)
        out = np.zeros((len(plans), 4, n))
        out[:, 0, idx] = np.maximum(comp_f + cp_f, gather) + tp_f + ep_f
        out[:, 1, idx] = np.maximum(comp_b + cp_b, gather) + tp_b + ep_b
        out[:, 2, idx] = np.maximum(comp_w, scatter)
        # The F&B pair (DualPipe's, or combined 1F1B's with its SM tax), as simulate.py's
        # _RankCosts.chunk_times (dualpipe_pair_s: it rises with each argument, so lower
        # bounds in give a lower bound out). Below the simulator's would still do for the
        # replay: with f, b, w exact, an F&B pair's duration f k + (b + w) k rises with
        # k = pair / (f + b + w).
        out[:, 3, idx] = dualpipe_pair_s(comp_f + comp_b + comp_w + cp_f + cp_b, ep_f + ep_b, 2 * gather + scatter,
                                         tp_f + tp_b, out[:, 0, idx] + out[:, 1, idx] + out[:, 2, idx],
                                         self.pair_busy_fraction, self.comm_sm_tax if self.merged(plan) else 0.0)
        return out


__all__ = ["ROUNDING", "Refiner"]
