"""The search's first refinement for many plan groups at once: rank 0 with stage 0's communication.

:meth:`planner.search.refine.Refiner.variant_bounds` with ``quick=True`` prices one group
of plans (alike but for recompute and ZeRO stage) at a time: a dozen small numpy
operations per (plan, split), which is most of a large search's time when thousands of
groups reach it. :func:`quick_bounds` computes the same bound for a batch of groups: the
per-shape tables (piece times, the simulator's splits, stage 0's communication, p2p) are
looked up per group from the refiner's caches; the chunk times of every (group,
recompute, split) item with as many chunks are then built in one set of stacked numpy
operations, and each pipeline program (schedule, micro-batches, pp, vpp) prices its own
items with three matrix products.

What is computed, per item and why it is a lower bound of ``simulate``'s step, is
:meth:`Refiner._split_bounds` with ``quick=True`` term for term (refine.py's module
docstring): for rank 0 of the split, ``end_0 >= chain_j + rest_j`` at every position j of
its program, with the chain of inputs at compute with all SMs plus p2p sends, and the rest
at chunk times built as the simulator builds them on stage 0 (chunks homed on other stages
at their compute alone, which is below what the simulator charges there); the step is at
least ``max(end_0 + optimizer_0, end_0 + drain_0)``, without the data-parallel terms (each
>= 0). The smallest over the simulator's splits is kept, scaled by :data:`ROUNDING` (the
sums run in another order than the simulator's). Only the evaluation order differs from
the one-group path, so the values agree to rounding (tests/test_search.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from planner.costmodel.simulate import dualpipe_pair_s
from planner.specs.plan import DUAL_SCHEDULES
from planner.errors import PlannerError, SpecError, UnsupportedError
from planner.search.programs import programs
from planner.search.refine import ROUNDING, Refiner
from planner.specs.plan import Plan


@dataclass
class _Bucket:
    """Items (one per group, variant and split) with as many chunks, as stacked columns."""

    owner: list[tuple[int, int]] = field(default_factory=list)  # (group, variant) per item
    program: list[tuple] = field(default_factory=list)  # (schedule, micro-batches, pp, vpp) per item
    counts: list[np.ndarray] = field(default_factory=list)  # (chunks, pieces)
    full: list[np.ndarray] = field(default_factory=list)  # (pieces, 3): F, B, W with all SMs
    timed: list[np.ndarray] = field(default_factory=list)  # (pieces, 4): at the SM share, + attention
    comm: list[np.ndarray] = field(default_factory=list)  # (pieces, 6): stage 0's PieceComm
    own: list[np.ndarray] = field(default_factory=list)  # (chunks,): chunk held by rank 0
    home: list[np.ndarray] = field(default_factory=list)  # (chunks,): ... and homed on stage 0
    scalars: list[tuple[float, float, float]] = field(default_factory=list)  # p2p, local unsharded, sharded


def quick_bounds(refiner: Refiner, groups: list[list[Plan]]) -> tuple[list[np.ndarray | None], dict[int, PlannerError]]:
    """Per group (its plans, one per recompute, alike otherwise), the (variants, 2) array of
    ``refiner.variant_bounds(plans, quick=True)`` (unsharded and sharded optimizer), or
    None where the cost model refuses the group's shape (the error, by group index)."""
    out: list[np.ndarray | None] = [None] * len(groups)
    errors: dict[int, PlannerError] = {}
    buckets: dict[int, _Bucket] = {}  # by number of chunks
    for g, variants in enumerate(groups):
        values = np.full((len(variants), 2), np.nan)
        out[g] = values
        try:
            _collect(refiner, g, variants, values, buckets)
        except (SpecError, UnsupportedError) as exc:
            errors[g] = exc
            out[g] = None
    best: dict[tuple[int, int], np.ndarray] = {}
    for bucket in buckets.values():
        for (g, v), row in zip(bucket.owner, _price(bucket, refiner.opt_s_per_param, refiner.pair_busy_fraction), strict=True):
            best[g, v] = row if (g, v) not in best else np.minimum(best[g, v], row)
    for (g, v), row in best.items():
        if g in errors:
            continue
        value = ROUNDING * row
        out[g][v] = value
        refiner.store_level1(groups[g][v], True, value)
    return out, errors


def _collect(refiner: Refiner, g: int, variants: list[Plan], values: np.ndarray, buckets) -> None:
    """Look up group ``g``'s per-shape tables (any may raise the cost model's errors) and
    file one item per (variant, split) still to price, by its number of chunks."""
    plan = variants[0]
    known, todo = refiner.level1_cached(variants, True)
    values[:] = known
    if not todo:
        return
    program = (plan.pipeline_schedule, plan.num_microbatches(refiner.workload), plan.pp, plan.vpp)
    # Full recomputation turns combined 1F1B off, so the variants' programs may differ.
    p2p = refiner.p2p_s(plan)
    comm = refiner.stage_comm(plan, 0)
    params = refiner.piece_params(plan.tp, plan.ep, plan.expert_tp)
    share = refiner.ep_share if plan.pipeline_schedule in DUAL_SCHEDULES and plan.ep > 1 else 1.0
    for v in todo:
        p = variants[v]
        full, timed = refiner.piece_times(p)[:, :3], refiner.piece_times(p, share)
        for split in refiner.splits_of(p):
            bucket = buckets.get(len(split.partition.chunks))
            if bucket is None:
                bucket = buckets[len(split.partition.chunks)] = _Bucket()
            dense, expert = (float(x) for x in split.rank_counts[0] @ params)
            bucket.owner.append((g, v))
            bucket.program.append((*program, refiner.merged(p)))
            bucket.counts.append(split.counts)
            bucket.full.append(full)
            bucket.timed.append(timed)
            bucket.comm.append(comm)
            bucket.own.append(split.held[0])
            bucket.home.append(split.homed[0])
            bucket.scalars.append((p2p, dense + expert, dense / (p.dp * p.cp) + expert / p.edp))


def _price(bucket: _Bucket, opt_s_per_param: float, pair_busy_fraction: float) -> np.ndarray:
    """(items, 2): rank 0's bound of every item, unsharded and sharded optimizer
    (:meth:`Refiner._split_bounds` with ``quick=True``)."""
    counts = np.stack(bucket.counts)  # (x, chunks, pieces)
    p2p, local_unsharded, local_sharded = np.array(bucket.scalars).T
    full = np.einsum("xnp,xpk->xkn", counts, np.stack(bucket.full))  # (x, 3, chunks)
    # Chunk times of rank 0's chunks (refine.py's _chunk_times with stage0_only, no ZeRO-3 waits).
    comp_f, comp_b, comp_w, attn = np.einsum("xnp,xpk->kxn", counts, np.stack(bucket.timed))
    comm = np.einsum("xnp,xpk->kxn", counts, np.stack(bucket.comm)) * np.stack(bucket.home)[None]
    tp_f, tp_b, cpf, cpb, ep_f, ep_b = comm
    cp_f, cp_b = np.maximum(0.0, cpf - attn), np.maximum(0.0, cpb - 2 * attn)
    own = np.stack(bucket.own)
    fwd, bwd = comp_f + cp_f + tp_f + ep_f, comp_b + cp_b + tp_b + ep_b
    # (Combined 1F1B's SM tax left out: the pair only rises with it, so still a bound.)
    pair = dualpipe_pair_s(comp_f + comp_b + comp_w + cp_f + cp_b, ep_f + ep_b, 0.0, tp_f + tp_b,
                           fwd + bwd + comp_w, pair_busy_fraction)
    durations = np.stack([fwd, bwd, comp_w, pair], axis=1) * own[:, None, :]  # (x, 4, chunks), 0 off rank 0
    end, drain = np.empty(len(counts)), np.empty(len(counts))
    by_program: dict[tuple, list[int]] = {}
    for x, key in enumerate(bucket.program):
        by_program.setdefault(key, []).append(x)
    for key, xs in by_program.items():
        prog = programs(*key)
        chain = np.einsum("kjn,xkn->xj", prog.chain[:, 0], full[xs]) + p2p[xs, None] * prog.chain_sends[0]
        drain[xs] = np.einsum("kn,xkn->x", prog.drain[:, 0], full[xs, 1:]) + p2p[xs] * prog.drain_sends[0]
        rest = np.einsum("kjn,xkn->xj", prog.rest[:, 0], durations[xs])
        end[xs] = np.where(prog.valid[0], chain + rest, -np.inf).max(axis=1)
    local = np.stack([local_unsharded, local_sharded], axis=1) * opt_s_per_param
    return np.maximum(end[:, None] + local, (end + drain)[:, None])


__all__ = ["quick_bounds"]
