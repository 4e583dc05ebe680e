"""The candidate space of the search: every structurally valid Plan for a model, a GPU count
and a workload, within the user's :class:`Constraints`.

Knobs enumerated: tp, cp, pp (dp = GPUs / (tp * cp * pp)), the pipeline schedule with vpp
(interleaved only), ep (MoE models), micro-batch size, ZeRO stage, sequence parallelism and
recomputation. ``etp`` stays at Megatron's default (= tp) and the rank order at the default;
the layer-to-stage split is the simulator's (balanced) choice, not a knob.

The space is built as integer numpy columns (:class:`CandidateTable`, :func:`candidate_table`:
about a second for DeepSeek-V3's 1.26 M combinations on 2048 GPUs); :func:`candidates`
yields the same rows as :class:`Plan` objects. Validity is decided by the same rules as the
simulator, applied as masks: :class:`~planner.specs.plan.Plan`'s validators,
:func:`~planner.specs.compat.check_plan` and the schedule's micro-batch rules
(:func:`~planner.costmodel.schedules.check_schedule`), and a chunk per pipeline stage needs
a block (DualPipeV has 2 * pp chunks); tests/test_search.py keeps the plan-by-plan reference
and checks both give the same plans and counts. Every rejection is counted under the
rule's name (the plan field it names). Two *equivalence* rules drop exact duplicates before
validation, also counted: sequence parallelism with tp == 1 (no effect: nothing to split)
and a schedule other than 1F1B with pp == 1 (no pipeline to schedule).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from planner.errors import SpecError
from planner.specs.model import ModelSpec
from planner.specs.plan import DEFAULT_RANK_ORDER, PipelineSchedule, Plan, Recompute, Workload, ZeroStage

DEFAULT_MICRO_BATCH_SIZES = (1, 2, 4, 8)
"""Micro-batch sizes tried unless pinned (those that divide the per-replica batch)."""
DEFAULT_VPPS = (2, 4)
"""Model chunks per rank tried for the interleaved schedule unless pinned."""
DEFAULT_CPS = (1, 2, 4, 8)
"""Context-parallel degrees tried unless pinned."""


@dataclass(frozen=True)
class Constraints:
    """What the user pins or bounds; ``None`` = the search's default range for that knob.

    Each knob is a tuple of allowed values (one value pins it). ``max_memory_fraction``
    bounds the peak memory of a feasible plan to that fraction of the GPU's HBM.
    """

    tp: tuple[int, ...] | None = None
    pp: tuple[int, ...] | None = None
    vpp: tuple[int, ...] | None = None
    cp: tuple[int, ...] | None = None
    ep: tuple[int, ...] | None = None
    micro_batch_size: tuple[int, ...] | None = None
    zero_stage: tuple[ZeroStage, ...] | None = None
    sequence_parallel: tuple[bool, ...] | None = None
    recompute: tuple[Recompute, ...] | None = None
    pipeline_schedule: tuple[PipelineSchedule, ...] | None = None
    max_memory_fraction: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.max_memory_fraction <= 1.0:
            raise SpecError("max_memory_fraction", self.max_memory_fraction, "must be in (0, 1]")
        for name in ("tp", "pp", "vpp", "cp", "ep", "micro_batch_size"):
            values = getattr(self, name)
            if values is not None and (not values or any(int(v) < 1 for v in values)):
                raise SpecError(name, values, "must be a non-empty list of integers >= 1")


@dataclass
class SpaceStats:
    """What enumeration produced: candidates generated, and rejections per rule."""

    generated: int = 0
    """Knob combinations looked at (before any rule)."""
    rejected: Counter[str] = field(default_factory=Counter)
    """Structurally invalid or duplicate combinations, per rule name."""

    @property
    def valid(self) -> int:
        return self.generated - sum(self.rejected.values())


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _allowed(pinned: tuple | None, default) -> list:
    return list(pinned) if pinned is not None else list(default)


@dataclass(frozen=True)
class CandidateTable:
    """Candidates as integer columns (one row per plan, enumeration order).

    ``sched`` and ``rec`` index :data:`SCHEDULES` and :data:`RECOMPUTES`; ``zero`` is the
    ZeRO stage; ``sp`` is 0/1. ``etp`` is tp, ``rank_order`` the default (the space's)."""

    tp: np.ndarray
    cp: np.ndarray
    pp: np.ndarray
    vpp: np.ndarray
    ep: np.ndarray
    dp: np.ndarray
    mb: np.ndarray
    zero: np.ndarray
    sp: np.ndarray
    rec: np.ndarray
    sched: np.ndarray

    COLUMNS = ("tp", "cp", "pp", "vpp", "ep", "dp", "mb", "zero", "sp", "rec", "sched")

    def __len__(self) -> int:
        return len(self.tp)

    def take(self, index) -> CandidateTable:
        """The rows ``index`` (a mask or integer array), in that order."""
        return CandidateTable(*(getattr(self, c)[index] for c in self.COLUMNS))

    def plan(self, i: int) -> Plan:
        """Row ``i`` as a validated :class:`Plan`."""
        return Plan(tp=int(self.tp[i]), cp=int(self.cp[i]), pp=int(self.pp[i]), vpp=int(self.vpp[i]),
                    ep=int(self.ep[i]), dp=int(self.dp[i]), micro_batch_size=int(self.mb[i]),
                    zero_stage=ZeroStage(int(self.zero[i])), sequence_parallel=bool(self.sp[i]),
                    recompute=RECOMPUTES[int(self.rec[i])], pipeline_schedule=SCHEDULES[int(self.sched[i])])

    def microbatches(self, workload: Workload) -> np.ndarray:
        """``Plan.num_microbatches`` per row."""
        return workload.global_batch_size // (self.dp * self.mb)

    @classmethod
    def from_plans(cls, plans: Sequence[Plan]) -> CandidateTable:
        """Columns of ``plans`` (each with etp = tp and the default rank order)."""
        for p in plans:
            if p.expert_tp != p.tp or p.rank_order != DEFAULT_RANK_ORDER:
                raise SpecError("plan.etp", p.etp, "the array path needs etp = tp and the default rank order")
        rows = [(p.tp, p.cp, p.pp, p.vpp, p.ep, p.dp, p.micro_batch_size, int(p.zero_stage), int(p.sequence_parallel),
                 _REC_CODE[p.recompute], _SCHED_CODE[p.pipeline_schedule]) for p in plans]
        arr = np.array(rows, dtype=np.int64).reshape(len(rows), 11)
        return cls(*(arr[:, k].copy() for k in range(11)))


SCHEDULES = tuple(PipelineSchedule)
RECOMPUTES = tuple(Recompute)
_SCHED_CODE = {s: k for k, s in enumerate(SCHEDULES)}
_REC_CODE = {r: k for k, r in enumerate(RECOMPUTES)}
S_1F1B, S_INTERLEAVED, S_ZB, S_DUALPIPE, S_DUALPIPEV = (_SCHED_CODE[s] for s in (
    PipelineSchedule.ONE_F_ONE_B, PipelineSchedule.INTERLEAVED, PipelineSchedule.ZERO_BUBBLE,
    PipelineSchedule.DUALPIPE, PipelineSchedule.DUALPIPEV))


def candidate_table(
    model: ModelSpec, num_gpus: int, workload: Workload, constraints: Constraints | None = None,
    stats: SpaceStats | None = None,
) -> CandidateTable:
    """Every structurally valid plan as integer columns, in :func:`candidates`' order.

    Knob combinations are generated block by block (one block per tp, cp, pp, schedule,
    vpp: the product of ep, micro-batch, ZeRO, sp, recompute) and the rules below are
    applied as masks, each rejection counted under the first rule it breaks."""
    c = constraints or Constraints()
    stats = stats if stats is not None else SpaceStats()
    divisors = _divisors(num_gpus)
    tps = [t for t in _allowed(c.tp, divisors) if t in divisors]
    cps = [x for x in _allowed(c.cp, DEFAULT_CPS) if x in divisors]
    pps = [p for p in _allowed(c.pp, divisors) if p in divisors]
    eps = _allowed(c.ep, _divisors(model.moe.num_experts) if model.moe else (1,))
    schedules = _allowed(c.pipeline_schedule, PipelineSchedule)
    vpps = _allowed(c.vpp, DEFAULT_VPPS)
    zeros = [int(z) for z in _allowed(c.zero_stage, ZeroStage)]
    sps = [int(s) for s in _allowed(c.sequence_parallel, (False, True))]
    recs = [_REC_CODE[Recompute(r)] for r in _allowed(c.recompute, Recompute)]
    blocks = []
    for tp, cp, pp in itertools.product(tps, cps, pps):
        if num_gpus % (tp * cp * pp):
            continue
        dp = num_gpus // (tp * cp * pp)
        per_replica = workload.global_batch_size // dp if workload.global_batch_size % dp == 0 else 0
        mbs = _allowed(c.micro_batch_size, [m for m in DEFAULT_MICRO_BATCH_SIZES if m <= max(per_replica, 1)])
        inner = np.array(list(itertools.product(eps, mbs, zeros, sps, recs)), dtype=np.int64).reshape(-1, 5)
        for schedule in schedules:
            for vpp in (vpps if schedule is PipelineSchedule.INTERLEAVED else [1]):
                head = np.array([tp, cp, pp, vpp, dp, _SCHED_CODE[PipelineSchedule(schedule)]], dtype=np.int64)
                blocks.append(np.hstack([np.broadcast_to(head, (len(inner), 6)), inner]))
    rows = np.vstack(blocks) if blocks else np.zeros((0, 11), dtype=np.int64)
    tp, cp, pp, vpp, dp, sched, ep, mb, zero, sp, rec = (rows[:, k] for k in range(11))
    stats.generated += len(rows)
    keep = _rules(model, workload, stats, tp, cp, pp, vpp, dp, sched, ep, mb, sp)
    return CandidateTable(tp=tp[keep], cp=cp[keep], pp=pp[keep], vpp=vpp[keep], ep=ep[keep], dp=dp[keep],
                          mb=mb[keep], zero=zero[keep], sp=sp[keep], rec=rec[keep], sched=sched[keep])


def _rules(model, workload, stats, tp, cp, pp, vpp, dp, sched, ep, mb, sp) -> np.ndarray:
    """The validity mask; rejections counted per rule. The rules and their order are those
    :func:`candidates` used to apply one plan at a time (tests/test_search.py keeps that
    reference and checks the two agree): the space's two equivalence rules, Plan's
    validators, :func:`~planner.specs.compat.check_plan`, :func:`check_schedule`, and a
    block per DualPipeV chunk. The expert-fold rule (``plan.rank_order``) always holds here:
    with the default order tp-cp-ep-dp-pp and etp = tp both views put tp*cp*dp ranks before pp."""
    alive = np.ones(len(tp), dtype=bool)

    def rule(name: str, broken: np.ndarray) -> None:
        nonlocal alive
        hit = alive & broken
        if hit.any():
            stats.rejected[name] += int(hit.sum())
        alive &= ~broken

    dual = (sched == S_DUALPIPE) | (sched == S_DUALPIPEV)
    rule("sequence_parallel_without_tp", (sp == 1) & (tp == 1))
    rule("schedule_without_pp", (pp == 1) & (sched != S_1F1B))
    # Plan._check
    rule("plan.vpp", (vpp > 1) & (sched != S_INTERLEAVED))
    rule("plan.vpp", (sched == S_INTERLEAVED) & (vpp < 2))
    rule("plan.pp", dual & (pp < 2))
    rule("plan.pp", (sched == S_DUALPIPE) & (pp % 2 == 1))
    rule("plan.ep", (tp * cp * dp) % (ep * tp) != 0)
    # check_plan
    rule("plan.tp", model.num_attention_heads % tp != 0)
    if model.mla is None:
        rule("plan.tp", model.kv_heads % tp != 0)
    if model.num_dense_ffn_layers and model.ffn_hidden_size:
        rule("plan.tp", model.ffn_hidden_size % tp != 0)
    if model.moe is None:
        rule("plan.ep", ep != 1)
    else:
        rule("plan.ep", model.moe.num_experts % ep != 0)
        rule("plan.etp", model.moe.expert_ffn_hidden_size % tp != 0)
    rule("plan.pp", pp * vpp > model.num_layers)
    rule("plan.cp", (cp > 1) & (workload.seq_length % (2 * cp) != 0))
    batch = workload.global_batch_size
    rule("plan.micro_batch_size", batch % (dp * mb) != 0)
    m = batch // (dp * mb)
    rule("plan.pipeline_schedule", dual & ~((m >= 2 * pp) & ((m % 2 == 0) | (sched == S_DUALPIPEV))))
    # check_schedule (the others are implied by the rules above)
    rule("schedule.num_microbatches", (sched == S_INTERLEAVED) & (m % pp != 0))
    # DualPipeV: 2 * pp chunks of >= 1 block
    rule("partition.num_chunks", (sched == S_DUALPIPEV) & (2 * pp > model.num_layers))
    return alive


def candidates(
    model: ModelSpec, num_gpus: int, workload: Workload, constraints: Constraints | None = None,
    stats: SpaceStats | None = None,
) -> Iterator[Plan]:
    """Yield every structurally valid plan, in a fixed (deterministic) order.

    ``stats`` (optional) is filled with the counts (all at once, before the first plan)."""
    table = candidate_table(model, num_gpus, workload, constraints, stats)
    for i in range(len(table)):
        yield table.plan(i)
