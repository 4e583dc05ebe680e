"""A layer split that fits in memory: minimise the bottleneck rank, by CP-SAT.

:func:`planner.costmodel.partition.partition` balances compute and ignores memory. With a
1F1B-family schedule the first pipeline rank keeps the most micro-batches in flight
(``pp - rank`` of them, Narayanan et al. 2021), so the balanced split can overflow rank 0
while the last ranks sit half empty; Megatron-LM answers with uneven first and last stages
(``--decoder-first-pipeline-num-layers``). :func:`fit_partition` finds such a split:

    minimise    T
    subject to  T >= sum over chunks c of rank r of  time(c)              for every rank r
                memory_r = M0_r + sum over c of rank r of  mu_rc . blocks(c)  <= capacity
                b_0 = 0 < b_1 < ... < b_C = L,   blocks(c) = b_{c+1} - b_c  (contiguous, >= 1)

and then, where a rank holds k > 1 chunks (interleaved, DualPipe), with T held at its minimum,

    minimise    sum over chunks c of  | time(c) - T / k |

with ``b_c`` the first block of chunk c, the dense blocks the first ``D`` of the ``L``
(so chunk c holds ``min(b_{c+1}, D) - min(b_c, D)`` dense blocks), the embedding on chunk 0
and the head and MTP on the last chunk, as :func:`~planner.costmodel.partition.partition`
places them. ``time(c)`` is the chunk's forward + backward time per micro-batch (the caller's
per-piece costs): the quantity every schedule runs once per micro-batch per chunk.

Memory is linearised around a starting split: each rank's per-block coefficients
``mu_rc`` are finite differences of the simulator's own
:func:`~planner.costmodel.memory.stage_memory` (one block more in chunk c), so they carry the
in-flight micro-batches of the rank and chunk, the ZeRO sharding and the allocator fraction.
The few non-linear terms (the largest working set, the largest FP8 weight copy) are held at
their starting values, so the proposed split is re-checked with ``stage_memory`` and, where a
rank still overflows, that rank's budget is cut by the overshoot and the model re-solved
(a few rounds). CP-SAT (OR-Tools) solves each round exactly in integers: nanoseconds and
KiB.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from planner.costmodel import ep_overlap
from planner.costmodel.memory import inflight_microbatches, stage_memory
from planner.costmodel.partition import (
    BLOCK_PIECES, Chunk, Partition, Piece, num_chunks, partition, partition_from_counts,
)
from planner.costmodel.simulate import piece_chunk_times, piece_compute
from planner.errors import UnsupportedError
from planner.specs.hardware import ClusterSpec
from planner.specs.model import ModelSpec
from planner.specs.plan import Plan, Workload

__all__ = ["FitResult", "blocks_per_chunk", "fit_partition", "fit_pipeline_layers"]

_NS = 1e9
_KIB = 1024.0


@dataclass(frozen=True)
class FitResult:
    """A split found by :func:`fit_partition` and what the solver proved about it."""

    partition: Partition
    bottleneck_s: float
    """The largest per-rank chunk time per micro-batch under the split."""
    optimal: bool
    """CP-SAT proved the bottleneck minimal for the (linearised) memory model."""
    rounds: int


def blocks_per_chunk(part: Partition) -> list[int]:
    """Transformer blocks in each chunk, in model order."""
    return [chunk.num_blocks for chunk in part.chunks]


def _rank_chunks(part: Partition) -> list[list[int]]:
    return [[c.index for c in part.chunks_of_rank(r)] for r in range(part.pp)]


def _with_extra(part: Partition, index: int, piece: Piece) -> Partition:
    chunks = tuple(
        Chunk(c.index, c.rank, (*c.pieces, piece)) if c.index == index else c for c in part.chunks
    )
    return Partition(chunks=chunks, pp=part.pp, mirrored=part.mirrored)


def _linear_memory(
    part: Partition, kinds: Sequence[Piece], rank_memory: Callable[[Partition, int], float],
) -> tuple[list[float], dict[tuple[int, int, Piece], float]]:
    """Per-rank constant and per-(rank, chunk, block kind) slope of ``rank_memory`` at ``part``."""
    ranks = _rank_chunks(part)
    base = [rank_memory(part, r) for r in range(part.pp)]
    slope: dict[tuple[int, int, Piece], float] = {}
    for c in range(len(part.chunks)):
        for kind in kinds:
            bumped = _with_extra(part, c, kind)
            for r, own in enumerate(ranks):
                if c in own:
                    slope[(r, c, kind)] = rank_memory(bumped, r) - base[r]
    counts = {(c.index, k): c.count(k) for c in part.chunks for k in kinds}
    const = [
        base[r] - sum(slope[(r, c, k)] * counts[(c, k)] for c in own for k in kinds)
        for r, own in enumerate(ranks)
    ]
    return const, slope


def fit_partition(
    model: ModelSpec,
    plan: Plan,
    piece_s: Mapping[Piece, float],
    rank_memory: Callable[[Partition, int], float],
    capacity_bytes: float,
    start: Partition,
    *,
    max_rounds: int = 4,
    time_limit_s: float = 5.0,
) -> FitResult | None:
    """The contiguous split minimising the busiest rank's chunk time per micro-batch with
    every rank's ``rank_memory(part, rank)`` within ``capacity_bytes``, or None when no split
    fits (or the solver finds none within its limits).

    ``piece_s``: forward + backward seconds per micro-batch of each piece on its rank;
    ``start``: the split to linearise memory around (the balanced one).

    Exact (the minimal bottleneck among the splits that fit) when memory is linear in the
    block counts; otherwise conservative where the linearisation over-estimates (a chunk
    that loses every block of a kind also loses that kind's working set), and never worse
    than ``start`` when ``start`` fits."""
    try:
        from ortools.sat.python import cp_model
    except ImportError as exc:  # pragma: no cover - ortools is a dependency
        raise UnsupportedError("the memory-constrained layer split needs OR-Tools: pip install ortools") from exc

    parts, blocks, dense = num_chunks(plan), model.num_layers, model.num_dense_ffn_layers
    if blocks < parts:
        return None
    kinds = [k for k in BLOCK_PIECES if any(c.count(k) for c in start.chunks)] or [Piece.DENSE]
    ranks = _rank_chunks(start)
    fixed_s = [sum(piece_s.get(p, 0.0) for p in c.pieces if p not in BLOCK_PIECES) for c in start.chunks]
    budget = [capacity_bytes] * plan.pp
    const, slope = _linear_memory(start, kinds, rank_memory)
    for round_ in range(1, max_rounds + 1):
        m = cp_model.CpModel()
        b = [m.NewIntVar(0, blocks, f"b{c}") for c in range(parts + 1)]
        m.Add(b[0] == 0)
        m.Add(b[parts] == blocks)
        for c in range(parts):
            m.Add(b[c + 1] >= b[c] + 1)
        # Dense blocks come first: chunk c holds min(b_{c+1}, D) - min(b_c, D) of them.
        low = []
        for c in range(parts + 1):
            v = m.NewIntVar(0, dense, f"d{c}")
            m.AddMinEquality(v, [b[c], dense])
            low.append(v)
        count = {Piece.DENSE: [low[c + 1] - low[c] for c in range(parts)],
                 Piece.MOE: [(b[c + 1] - b[c]) - (low[c + 1] - low[c]) for c in range(parts)]}
        if model.moe is None:
            count[Piece.DENSE] = [b[c + 1] - b[c] for c in range(parts)]
        horizon = int(_NS * (sum(fixed_s) + blocks * max(piece_s.get(k, 0.0) for k in BLOCK_PIECES))) + 1
        bottleneck = m.NewIntVar(0, horizon, "T")
        for r, own in enumerate(ranks):
            load = sum(
                round(_NS * fixed_s[c]) + sum(round(_NS * piece_s.get(k, 0.0)) * count[k][c] for k in BLOCK_PIECES)
                for c in own
            )
            m.Add(bottleneck >= load)
            mem = sum(round(slope.get((r, c, k), 0.0) / _KIB) * count[k][c] for c in own for k in kinds)
            # Rounding each slope to a KiB errs by at most half a KiB per block: allow it,
            # the split is re-checked with the real memory model below.
            room = int((budget[r] - const[r]) // _KIB) + blocks
            if isinstance(mem, int):
                if mem > room:
                    return None
            else:
                m.Add(mem <= room)
        m.Minimize(bottleneck)
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = time_limit_s
        solver.parameters.num_workers = 1
        status = solver.Solve(m)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            break
        if len(ranks[0]) > 1:
            # Second objective, the bottleneck held: even chunks. A rank's chunks are separate
            # pipeline passes (DualPipe's two directions, interleaved stages), so a rank
            # balanced by one heavy and one light chunk still stalls its neighbours on the
            # heavy one. Among the splits with the least bottleneck, take the one whose chunks
            # deviate least (sum of absolute deviations) from an equal share of it.
            best = solver.Value(bottleneck)
            m.Add(bottleneck <= best)
            share = best // len(ranks[0])
            deviation = []
            for c in range(parts):
                load = round(_NS * fixed_s[c]) + sum(round(_NS * piece_s.get(k, 0.0)) * count[k][c] for k in BLOCK_PIECES)
                d = m.NewIntVar(0, horizon, f"dev{c}")
                m.AddAbsEquality(d, load - share)
                deviation.append(d)
            m.Minimize(sum(deviation))
            second = solver.Solve(m)
            if second not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                break
            status = second if status == cp_model.OPTIMAL else status
        counts = [solver.Value(b[c + 1]) - solver.Value(b[c]) for c in range(parts)]
        part = partition_from_counts(model, plan, counts)
        over = [rank_memory(part, r) - capacity_bytes for r in range(plan.pp)]
        if max(over) <= 0:
            return FitResult(part, _bottleneck_s(part, piece_s), status == cp_model.OPTIMAL, round_)
        for r, e in enumerate(over):
            if e > 0:
                budget[r] -= e + _KIB
    # Budgets cut this far exclude the starting split too; it is still an answer if it fits.
    if all(rank_memory(start, r) <= capacity_bytes for r in range(plan.pp)):
        return FitResult(start, _bottleneck_s(start, piece_s), False, max_rounds)
    return None


def _bottleneck_s(part: Partition, piece_s: Mapping[Piece, float]) -> float:
    return max(
        sum(piece_s.get(p, 0.0) for c in part.chunks_of_rank(r) for p in c.pieces) for r in range(part.pp)
    )


def fit_pipeline_layers(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload,
                        capacity_bytes: float | None = None) -> FitResult | None:
    """The split of ``plan`` (its ``pipeline_layers`` ignored) that fits every pipeline rank
    in ``capacity_bytes`` (default: the GPU's HBM) with the least bottleneck, priced with the
    simulator's own compute and memory models; None when none fits or pp == 1. Linearised
    around the forward-balanced split."""
    if plan.pp == 1:
        return None
    plan = plan.model_copy(update={"pipeline_layers": None})
    # A piece's work per micro-batch as the simulator prices it on a chunk: compute with its
    # TP, CP and EP communication, or, under DualPipe, its F&B pair (the all-to-all hidden
    # behind the compute of the paired chunk, as far as it can be).
    piece_s, forward_s = {}, {}
    for piece, t in piece_chunk_times(model, cluster, plan, workload).items():
        serial = t.forward_s + t.backward_input_s + t.backward_weight_s
        piece_s[piece] = serial if t.overlapped_fb_s is None else t.overlapped_fb_s
        forward_s[piece] = piece_compute(model, plan, workload, cluster.gpu, piece, 1.0)[0].forward_s
    num = plan.num_microbatches(workload)

    def rank_memory(part: Partition, rank: int) -> float:
        inflight = inflight_microbatches(plan, num, rank, ep_overlap.applies(model, plan, workload))
        return stage_memory(model, plan, workload, part, rank, cluster.gpu, inflight).total_bytes

    start = partition(model, plan, forward_s)
    capacity = cluster.gpu.hbm_capacity_bytes if capacity_bytes is None else capacity_bytes
    return fit_partition(model, plan, piece_s, rank_memory, capacity, start)
