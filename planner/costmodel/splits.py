"""The layer-to-stage splits the simulator may pick for a plan, computed once per shape.

:func:`planner.costmodel.simulate.simulate` splits the model evenly when the blocks divide
(and the schedule is not DualPipe), otherwise it simulates up to three candidates, a split
balanced by forward time, one by block count and Megatron-Bridge's filled split
(:func:`~planner.costmodel.partition.filled_counts`), and keeps the fastest that fits. A
bound that holds for each holds for whichever it keeps, so the search prices them all
(:class:`SplitCache`).

Speed: the candidates are :func:`planner.costmodel.partition.partition` calls, once per
(pp, vpp, schedule, forward times); the block-count and filled splits do not depend on the
plan's times and are computed once per shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.costmodel.partition import (
    Partition, Piece, SplitRule, model_pieces, partition, rule_partition, split_rules, splits_evenly,
)
from planner.specs.model import ModelSpec
from planner.specs.plan import DUAL_SCHEDULES, Plan


@dataclass(frozen=True)
class Split:
    """One partition with the arrays the bounds read."""

    partition: Partition
    counts: np.ndarray
    """(chunks, pieces): how many of each piece every chunk holds (pieces in the order of
    :attr:`SplitCache.pieces`)."""
    own: tuple[tuple[int, ...], ...]
    """Per rank, its chunks (:meth:`Partition.chunks_of_rank` order: the first is the one
    whose backward the simulator lets the data-parallel reduction overlap)."""
    where: tuple[tuple[int, ...], ...]
    """Per direction (two for DualPipe), the rank running each chunk."""
    rank_counts: np.ndarray
    """(ranks, pieces): how many of each piece every rank holds (all its chunks)."""
    home: np.ndarray
    """(chunks,): each chunk's ``rank`` (the stage the simulator prices its communication on)."""
    held: np.ndarray
    """(ranks, chunks): 1 where the rank holds the chunk (``own``), else 0."""
    homed: np.ndarray
    """(ranks, chunks): 1 where the chunk is also homed on the rank (``chunk.rank``: the
    stage the simulator prices its communication on), else 0."""


class SplitCache:
    """The simulator's candidate splits of every plan shape of one model, memoised."""

    def __init__(self, model: ModelSpec):
        self.model = model
        self.pieces = tuple(sorted(set(model_pieces(model)), key=lambda p: p.value))
        self._index = {p: k for k, p in enumerate(self.pieces)}
        self._splits: dict[tuple, Split] = {}

    def even(self, plan: Plan) -> bool:
        """The simulator's condition for its single (even) split."""
        return splits_evenly(self.model, plan)

    def splits(self, plan: Plan, forward_s: dict[Piece, float]) -> tuple[Split, ...]:
        """The splits :func:`~planner.costmodel.simulate.simulate` may pick for ``plan``;
        ``forward_s`` is each piece's forward seconds as the simulator computes it (full
        SMs), read only for the time-balanced split."""
        shape = self._shape(plan)
        if self.even(plan):
            return (self._split(shape + ("even",), lambda: partition(self.model, plan)),)
        return tuple(self._rule_split(plan, rule, forward_s) for rule in split_rules(self.model, plan))

    def count_split(self, plan: Plan) -> Split:
        """The even split where the simulator uses it, else its block-count split."""
        return self.splits(plan, {})[-1] if self.even(plan) else self._rule_split(plan, SplitRule.COUNT, {})

    def _shape(self, plan: Plan) -> tuple:
        # Outside DualPipe(V) chunk c sits on rank c % pp whatever the schedule.
        return plan.pp, plan.vpp, plan.pipeline_schedule if plan.pipeline_schedule in DUAL_SCHEDULES else "linear"

    def _rule_split(self, plan: Plan, rule: SplitRule, forward_s: dict[Piece, float]) -> Split:
        # The time-balanced split is keyed by each piece's time (the partition reads those
        # of the model's pieces only); the others depend on the shape alone.
        times = tuple(forward_s.get(p) for p in self.pieces) if rule is SplitRule.TIME else ()
        return self._split(self._shape(plan) + (rule, *times),
                           lambda: rule_partition(self.model, plan, rule, forward_s))

    def _split(self, key: tuple, make) -> Split:
        hit = self._splits.get(key)
        if hit is None:
            part = make()
            counts = np.zeros((len(part.chunks), len(self.pieces)))
            for ch in part.chunks:
                for p in ch.pieces:
                    counts[ch.index, self._index[p]] += 1
            own = tuple(tuple(c.index for c in part.chunks_of_rank(r)) for r in range(part.pp))
            where = [tuple(ch.rank for ch in part.chunks)]
            if part.mirrored:  # direction 1 runs chunk c on rank pp-1-c
                where.append(tuple(part.pp - 1 - ch.rank for ch in part.chunks))
            rank_counts = np.stack([counts[list(chunks)].sum(axis=0) for chunks in own])
            held = np.zeros((part.pp, len(part.chunks)))
            for r, chunks in enumerate(own):
                held[r, list(chunks)] = 1.0
            home = np.array([ch.rank for ch in part.chunks], dtype=np.int64)
            homed = held * (home[None, :] == np.arange(part.pp)[:, None])
            hit = self._splits[key] = Split(part, counts, own, tuple(where), rank_counts, home, held, homed)
        return hit


__all__ = ["Split", "SplitCache"]
