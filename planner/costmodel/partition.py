"""Which layers each pipeline stage holds.

The model is a sequence of *pieces*: the input embedding, ``num_layers`` Transformer
blocks (the first ``num_dense_layers`` with a dense FFN, the rest MoE for a MoE model),
the final norm + LM head + loss, and the MTP modules (DeepSeek-V3 §2.2; each reuses the
embedding and head, so it sits on the last stage beside the head, §3.2.3).

A plan cuts that sequence into ``num_chunks`` contiguous model chunks and places them on
pipeline ranks:

- 1F1B, zero-bubble: pp chunks, chunk r on rank r;
- interleaved 1F1B: pp * vpp chunks, chunk c on rank c % pp (Megatron's virtual stages);
- DualPipe: pp chunks; rank r holds chunk r for the forward-direction micro-batches and
  chunk pp-1-r for the reverse direction, hence 2x parameters (V3 Table 2);
- DualPipeV: 2 * pp chunks; rank r holds chunk r and chunk 2pp-1-r ("cut-in-half").

Layer split: Megatron splits the blocks evenly when they divide (embedding on the first
chunk, head on the last); otherwise, or when the ends carry heavy pieces (a large head, MTP),
:func:`balanced_split` minimises the most expensive chunk over contiguous splits, exactly.
Under DualPipe/DualPipeV a rank runs *both* its chunks for every micro-batch, so what must
balance is the pair: :func:`pair_balanced_counts` water-fills blocks onto ranks around
the fixed pieces (embedding, head, MTP) of their chunks, which is how DeepSeek-V3 can put
the embedding and the head on one rank (§3.2.3). :func:`filled_counts` is Megatron-Bridge's
rule for DeepSeek-V3's uneven 61 blocks (full chunks, the remainder beside the head), which
the simulator also tries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from planner.specs.model import ModelSpec
from planner.specs.plan import DUAL_SCHEDULES, PipelineSchedule, Plan


class Piece(StrEnum):
    """One unit of the model's sequence of layers."""

    EMBEDDING = "embedding"
    DENSE = "dense"
    """Attention + dense FFN block."""
    MOE = "moe"
    """Attention + MoE block."""
    HEAD = "head"
    """Final norm, LM head and the loss."""
    MTP = "mtp"
    """One multi-token-prediction module: projection, one block, the shared head again."""


BLOCK_PIECES = (Piece.DENSE, Piece.MOE)
"""The Transformer blocks among the pieces (the rest are the ends: embedding, head, MTP)."""


@dataclass(frozen=True)
class Chunk:
    """A contiguous slice of the model placed on one pipeline rank."""

    index: int
    rank: int
    pieces: tuple[Piece, ...]

    def count(self, piece: Piece) -> int:
        return sum(1 for p in self.pieces if p is piece)

    @property
    def num_blocks(self) -> int:
        return sum(1 for p in self.pieces if p in BLOCK_PIECES)


@dataclass(frozen=True)
class Partition:
    """All chunks of a plan, in model order, and which ranks hold them."""

    chunks: tuple[Chunk, ...]
    pp: int
    mirrored: bool = False
    """DualPipe: every rank also holds the mirror chunk pp-1-r (the reverse direction)."""

    def chunks_of_rank(self, rank: int) -> tuple[Chunk, ...]:
        """Chunks whose parameters live on ``rank`` (two for DualPipe and DualPipeV)."""
        own = [c for c in self.chunks if c.rank == rank]
        if self.mirrored:
            own.append(self.chunks[self.pp - 1 - rank])
        return tuple(own)


def model_pieces(model: ModelSpec) -> tuple[Piece, ...]:
    """The model's pieces in execution order."""
    blocks = [Piece.DENSE] * model.num_dense_ffn_layers + [Piece.MOE] * model.num_moe_layers
    return (Piece.EMBEDDING, *blocks, Piece.HEAD, *([Piece.MTP] * model.mtp_depth))


def num_chunks(plan: Plan) -> int:
    return plan.num_chunks


def chunk_rank(plan: Plan, index: int) -> int:
    """Pipeline rank that holds model chunk ``index``."""
    pp = plan.pp
    if plan.pipeline_schedule is PipelineSchedule.DUALPIPEV:
        return index if index < pp else 2 * pp - 1 - index
    return index % pp


def balanced_split(costs: list[float], parts: int) -> list[int]:
    """Sizes of ``parts`` contiguous, non-empty groups of ``costs`` minimising the largest
    group sum: the exact dynamic programme best[k][i] = min over the last cut j of
    max(best[k-1][j], sum of costs j..i), one numpy step per part (126 blocks in 64 parts
    in a few ms). Ties go to the smallest cut j."""
    n = len(costs)
    if not 1 <= parts <= n:
        raise ValueError(f"cannot split {n} items into {parts} non-empty parts")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    pre = np.array(prefix)
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    cuts = np.zeros((parts + 1, n + 1), dtype=np.int64)
    for k in range(1, parts + 1):
        # Row i (k..n-parts+k items in k parts), column j (the last cut, k-1..i-1).
        i = np.arange(k, n - (parts - k) + 1)
        j = np.arange(k - 1, n - (parts - k))
        value = np.maximum(best[j][None, :], pre[i][:, None] - pre[j][None, :])
        value[j[None, :] >= i[:, None]] = np.inf
        arg = value.argmin(axis=1)
        best = np.full(n + 1, np.inf)
        best[i] = value[np.arange(len(i)), arg]
        cuts[k, i] = j[arg]
    sizes, at = [], n
    for k in range(parts, 0, -1):
        j = int(cuts[k, at])
        sizes.append(at - j)
        at = j
    return sizes[::-1]


def pair_balanced_counts(rank_chunks: list[list[int]], fixed: list[float], blocks: int, block_cost: float) -> list[int]:
    """Blocks per chunk when each rank runs all of its chunks for every micro-batch.

    Greedy water-filling, one block at a time, onto the least-loaded rank (exact for
    equal block costs: it minimises the largest rank load), then each rank's blocks are
    shared evenly over its chunks (shallower chunk first). Every chunk gets a block
    whenever there are enough blocks, so no chunk is a bare embedding."""
    counts = [0] * len(fixed)
    load = [sum(fixed[c] for c in chunks) for chunks in rank_chunks]
    per_rank = [0] * len(rank_chunks)
    # Seed one block per chunk so that every chunk computes something.
    for r, chunks in enumerate(rank_chunks):
        per_rank[r] += len(chunks)
        load[r] += len(chunks) * block_cost
    remaining = blocks - sum(per_rank)
    for _ in range(remaining):
        r = min(range(len(load)), key=lambda i: (load[i], i))
        per_rank[r] += 1
        load[r] += block_cost
    for r, chunks in enumerate(rank_chunks):
        base, extra = divmod(per_rank[r], len(chunks))
        for i, c in enumerate(sorted(chunks)):
            counts[c] = base + (1 if i < extra else 0)
    return counts


def _dual_counts(model: ModelSpec, plan: Plan, piece_cost: dict[Piece, float]) -> list[int]:
    parts = num_chunks(plan)
    pieces = model_pieces(model)
    blocks = model.num_layers
    tail = list(pieces[1 + blocks :])
    fixed = [0.0] * parts
    fixed[0] += piece_cost.get(Piece.EMBEDDING, 0.0)
    fixed[-1] += sum(piece_cost.get(p, 0.0) for p in tail)
    block_cost = piece_cost.get(Piece.MOE if model.moe else Piece.DENSE, 1.0)
    if plan.pipeline_schedule is PipelineSchedule.DUALPIPE:
        rank_chunks = [[r, plan.pp - 1 - r] for r in range(plan.pp)]
    else:
        rank_chunks = [[c for c in range(parts) if chunk_rank(plan, c) == r] for r in range(plan.pp)]
    # DualPipe's chunk r and chunk pp-1-r sit on ranks r and pp-1-r both: balance half.
    if plan.pipeline_schedule is PipelineSchedule.DUALPIPE:
        rank_chunks = rank_chunks[: plan.pp // 2]
    return pair_balanced_counts(rank_chunks, fixed, blocks, block_cost)


def filled_counts(blocks: int, parts: int) -> list[int] | None:
    """``ceil(blocks / parts)`` blocks in every chunk but the last, which takes the rest
    beside the head, loss and MTP; None when that leaves a chunk before the last empty.

    Megatron-Bridge's DeepSeek-V3 layouts are this rule (recipes/deepseek/deepseek_v3.py,
    ``set_deepseek_v3_pipeline_model_parallel_layout``): 61 blocks over PP16 (or PP8 x VPP2)
    are ``[embedding + 4] + [4] * 14 + [1 + mtp + loss]``, over PP8 ``[embedding + 8] +
    [8] * 6 + [5 + mtp + loss]``, over PP4 ``16, 16, 16, 13``."""
    per = -(-blocks // parts)
    rest = blocks - per * (parts - 1)
    if parts < 2 or rest < 0:
        return None
    return [per] * (parts - 1) + [rest]


def partition_from_counts(model: ModelSpec, plan: Plan, counts: Sequence[int]) -> Partition:
    """The contiguous split with ``counts[c]`` blocks in chunk c (embedding first, head and
    MTP last, the last chunk possibly nothing else), placed on ranks as the plan's schedule
    places chunks."""
    parts = num_chunks(plan)
    if len(counts) != parts or sum(counts) != model.num_layers or min(counts[:-1], default=1) < 1 or counts[-1] < 0:
        raise ValueError(f"counts {list(counts)} do not split {model.num_layers} blocks into {parts} chunks")
    pieces = model_pieces(model)
    body, tail = list(pieces[1 : 1 + model.num_layers]), list(pieces[1 + model.num_layers :])
    groups, start = [], 0
    for n in counts:
        groups.append(body[start : start + n])
        start += n
    groups[0].insert(0, Piece.EMBEDDING)
    groups[-1].extend(tail)
    chunks = tuple(Chunk(k, chunk_rank(plan, k), tuple(g)) for k, g in enumerate(groups))
    return Partition(chunks=chunks, pp=plan.pp, mirrored=plan.pipeline_schedule is PipelineSchedule.DUALPIPE)


def partition(model: ModelSpec, plan: Plan, piece_cost: dict[Piece, float] | None = None) -> Partition:
    """Split ``model`` into the plan's chunks.

    The plan's own ``pipeline_layers``, when given, decide. Otherwise ``piece_cost``
    (relative compute of each piece) switches on the balanced split; without it the blocks
    are split evenly (Megatron) and an uneven count falls back to balancing blocks as equal
    units.
    """
    if plan.pipeline_layers is not None:
        return partition_from_counts(model, plan, plan.pipeline_layers)
    parts = num_chunks(plan)
    pieces = model_pieces(model)
    blocks = model.num_layers
    dual = plan.pipeline_schedule in DUAL_SCHEDULES
    if dual and piece_cost is not None and blocks >= parts:
        return partition_from_counts(model, plan, _dual_counts(model, plan, piece_cost))
    if piece_cost is None and blocks % parts == 0:
        return partition_from_counts(model, plan, [blocks // parts] * parts)
    cost = piece_cost or {Piece.DENSE: 1.0, Piece.MOE: 1.0}
    # The embedding and the head/MTP tail are glued to their neighbours: a chunk
    # needs at least one block (or the tail) to be worth a pipeline stage.
    units: list[list[Piece]] = [[p] for p in pieces[1 : 1 + blocks]]
    units[0].insert(0, Piece.EMBEDDING)
    tail = list(pieces[1 + blocks :])
    if parts < len(units) + 1:
        units.append(tail)
    else:
        units[-1].extend(tail)
    weights = [sum(cost.get(p, 0.0) for p in unit) for unit in units]
    sizes = balanced_split(weights, parts)
    groups, start = [], 0
    for size in sizes:
        groups.append([p for unit in units[start : start + size] for p in unit])
        start += size
    chunks = tuple(Chunk(k, chunk_rank(plan, k), tuple(g)) for k, g in enumerate(groups))
    mirrored = plan.pipeline_schedule is PipelineSchedule.DUALPIPE
    return Partition(chunks=chunks, pp=plan.pp, mirrored=mirrored)


# ---------------------------------------------------------------------------------------
# The splits the simulator tries


def splits_evenly(model: ModelSpec, plan: Plan) -> bool:
    """Megatron's even split is the runtime's: the blocks divide over the chunks and the
    schedule is not DualPipe(V), whose ranks balance their two chunks as a pair."""
    return model.num_layers % (plan.pp * plan.vpp) == 0 and plan.pipeline_schedule not in DUAL_SCHEDULES


class SplitRule(StrEnum):
    """A split the simulator tries when :func:`splits_evenly` does not hold."""

    TIME = "time"
    """Balanced by each piece's forward time."""
    COUNT = "count"
    """Balanced by block count, the head and MTP counting as blocks."""
    FILLED = "filled"
    """Megatron-Bridge's filled chunks (:func:`filled_counts`)."""

    @property
    def note(self) -> str:
        return _SPLIT_NOTES[self]


_SPLIT_NOTES = {
    SplitRule.TIME: "layers split over pipeline chunks to balance forward time",
    SplitRule.COUNT: "layers split over pipeline chunks by count (head and MTP count as blocks)",
    SplitRule.FILLED: "layers split over pipeline chunks as Megatron-Bridge fills them (ceil(layers / chunks) "
                      "per chunk, the rest beside the head)",
}
UNIT_COST = {Piece.DENSE: 1.0, Piece.MOE: 1.0, Piece.HEAD: 1.0, Piece.MTP: 1.0}
"""The block-count split's piece costs."""


def split_rules(model: ModelSpec, plan: Plan) -> tuple[SplitRule, ...]:
    """The rules that apply to ``plan`` (the filled split only where it leaves no chunk
    before the last empty)."""
    if filled_counts(model.num_layers, num_chunks(plan)) is None:
        return (SplitRule.TIME, SplitRule.COUNT)
    return tuple(SplitRule)


def rule_partition(model: ModelSpec, plan: Plan, rule: SplitRule, forward_s: dict[Piece, float]) -> Partition:
    """The split ``rule`` makes; ``forward_s`` (each piece's forward seconds) is read by
    :attr:`SplitRule.TIME` only."""
    if rule is SplitRule.TIME:
        return partition(model, plan, forward_s)
    if rule is SplitRule.COUNT:
        return partition(model, plan, UNIT_COST)
    counts = filled_counts(model.num_layers, num_chunks(plan))
    if counts is None:
        raise ValueError(f"no filled split of {model.num_layers} blocks into {num_chunks(plan)} chunks")
    return partition_from_counts(model, plan, counts)
