"""Lower bounds that let the search skip plans without ever losing the optimum.

Two bounds, each cheap (no pipeline event simulation, no communication model) and each
provably never above what :func:`planner.costmodel.simulate.simulate` reports:

- :attr:`PlanBounds.memory_bytes` <= ``StepReport.memory_peak_bytes``, and
- :attr:`PlanBounds.step_time_s` <= ``StepReport.step_time_s``.

The search uses them in two named rules (divisibility, the third, is the space's own):

``memory_lower_bound``
    the bound exceeds ``capacity * max_memory_fraction``: every partition the simulator
    could choose has a rank over the limit, so the plan is infeasible.
``time_lower_bound``
    candidates are simulated in ascending order of their time bound; once the next bound
    exceeds the k-th best feasible step found so far, no remaining plan can enter the top k
    (branch and bound).

Both bounds are taken over the same layer-to-stage partitions the simulator considers (its
even split, or both of its balanced splits) and the smaller is kept, so whichever split the
simulator picks, the bound holds for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from planner.costmodel import compute as C
from planner.costmodel.memory import memory_constants, piece_params, rank_params
from planner.costmodel.partition import Partition, Piece, model_pieces, partition
from planner.costmodel.simulate import DUAL, _optimizer_bytes_per_param
from planner.specs.hardware import ClusterSpec
from planner.specs.model import ModelSpec
from planner.specs.plan import Plan, Workload, ZeroStage


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


def _piece_cost_key(plan: Plan, piece: Piece) -> tuple:
    # Everything :func:`compute.piece_ops` and :func:`compute.piece_time` read from a plan
    # (Shard.of: tp, cp, micro-batch, sequence parallel; MoE: ep, etp; the attention kernel;
    # recompute); dp, pp, vpp, ZeRO and the schedule do not change a piece's compute.
    return (plan.tp, plan.cp, plan.micro_batch_size, plan.sequence_parallel, plan.ep, plan.expert_tp,
            plan.attention_kernel, plan.recompute, piece)


class BoundCalculator:
    """Computes :class:`PlanBounds` for the plans of one (model, cluster, workload),
    memoising per-piece compute across plans that share the knobs it depends on."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, workload: Workload):
        self.model, self.cluster, self.workload = model, cluster, workload
        self._piece_times: dict[tuple, C.PieceTime] = {}
        self._partitions: dict[tuple, tuple[Partition, ...]] = {}
        self._pieces = set(model_pieces(model))

    def piece_time(self, plan: Plan, piece: Piece) -> C.PieceTime:
        """Compute seconds of one piece for one micro-batch with all SMs (compute_share 1)."""
        key = _piece_cost_key(plan, piece)
        hit = self._piece_times.get(key)
        if hit is None:
            ops = C.piece_ops(self.model, plan, self.workload, piece)
            hit = self._piece_times[key] = C.piece_time(ops, self.cluster.gpu, self.workload.precision, plan.recompute)
        return hit

    def partitions(self, plan: Plan) -> tuple[Partition, ...]:
        """The layer-to-stage splits :func:`~planner.costmodel.simulate.simulate` may pick
        (mirrors its choice: the even split, else its two balanced candidates)."""
        model = self.model
        if model.num_layers % (plan.pp * plan.vpp) == 0 and plan.pipeline_schedule not in DUAL:
            key = (plan.pp, plan.vpp, plan.pipeline_schedule)
            if key not in self._partitions:
                self._partitions[key] = (partition(model, plan),)
            return self._partitions[key]
        forward = {piece: self.piece_time(plan, piece).forward_s for piece in self._pieces}
        key = (plan.pp, plan.vpp, plan.pipeline_schedule, tuple(sorted(forward.items())))
        if key not in self._partitions:
            unit = {Piece.DENSE: 1.0, Piece.MOE: 1.0, Piece.HEAD: 1.0, Piece.MTP: 1.0}
            self._partitions[key] = (partition(model, plan, forward), partition(model, plan, unit))
        return self._partitions[key]

    def bounds(self, plan: Plan) -> PlanBounds:
        """Lower bounds of ``simulate(model, cluster, plan, workload)``'s step time and
        peak memory (see :meth:`time_bound` and :meth:`memory_bound`)."""
        parts = self.partitions(plan)
        return PlanBounds(
            step_time_s=min(self.time_bound(plan, p) for p in parts),
            memory_bytes=min(self.memory_bound(plan, p) for p in parts),
        )

    def time_bound(self, plan: Plan, part: Partition) -> float:
        """max over pipeline ranks r of ``runs * sum(F + B + W of r's chunks) + optimizer_r``.

        Why the simulated step is never shorter, for the same partition:

        1. A rank runs its program's operations one after another (an operation starts no
           earlier than the previous one ends), so its last operation ends no earlier than
           the sum of their durations; the step is ``max_r(end_r + exposed DP_r +
           optimizer_r)`` >= ``end_r + optimizer_r`` for every r, and ``optimizer_r`` is
           computed here exactly as the simulator does.
        2. Each (micro-batch, chunk) of rank r costs one forward and one backward. The
           simulator's durations add exposed TP/CP/EP communication and ZeRO-3 waits to the
           compute (``max(compute, wait) + comm >= compute``). Under DualPipe an F&B pair
           costs ``F_a k_a + (B_b + W_b) k_b`` with ``k_c = pair_c / (F_c + B_c + W_c) <= 1``
           (the pair hides communication, never compute), so chunk c's work over the step is
           at least ``k_c (F_c + B_c + W_c) = pair_c >= its compute``. Compute with SMs given
           to communication (compute_share < 1) only takes longer than with all of them.
        3. Runs per chunk: m micro-batches, except DualPipe, where each of a rank's two
           chunks serves one direction's m / 2.
        """
        m = plan.num_microbatches(self.workload)
        runs = m / 2 if part.mirrored else m
        opt_bytes = _optimizer_bytes_per_param(self.workload)
        gpu = self.cluster.gpu
        hbm_s = gpu.hbm_bandwidth_bytes_per_s * gpu.efficiency.hbm_fraction
        zero = plan.zero_stage >= ZeroStage.OPTIMIZER
        best = 0.0
        for rank in range(plan.pp):
            busy = dense = expert = 0.0
            for chunk in part.chunks_of_rank(rank):
                for piece in chunk.pieces:
                    t = self.piece_time(plan, piece)
                    busy += t.forward_s + t.backward_input_s + t.backward_weight_s
                    params = piece_params(self.model, plan, piece)
                    dense += params.dense
                    expert += params.expert
            local = dense / (plan.dp * plan.cp) + expert / plan.edp if zero else dense + expert
            best = max(best, runs * busy + local * opt_bytes / hbm_s)
        return best

    def memory_bound(self, plan: Plan, part: Partition) -> float:
        """max over pipeline ranks of weights + gradients + optimizer states + the fixed
        workspace (CUDA context, NCCL buffers, GEMM workspace).

        :func:`~planner.costmodel.memory.stage_memory` counts the same parameters
        (``rank_params``) at the same bytes per parameter with the same ZeRO sharding, and
        only adds to them (ZeRO-2/3's unsharded piece and prefetch, activations, transient
        buffers and fragmentation are all >= 0), so its total is never smaller.
        """
        c = memory_constants()
        states = c.state_bytes_per_param[self.workload.precision]
        zero = plan.zero_stage
        fixed = c.cuda_context_bytes + c.nccl_buffers_bytes + c.gemm_workspace_bytes
        best = 0.0
        for rank in range(plan.pp):
            params = rank_params(self.model, plan, part, rank)
            sharded = params.dense / (plan.dp * plan.cp) + params.expert / plan.edp
            total = 0.0
            for per_param, on in ((states.weights, zero >= ZeroStage.PARAMETERS),
                                  (states.gradients, zero >= ZeroStage.GRADIENTS),
                                  (states.optimizer, zero >= ZeroStage.OPTIMIZER)):
                total += (sharded if on else params.total) * per_param
            best = max(best, total + fixed)
        return best

