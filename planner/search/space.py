"""The candidate space of the search: every structurally valid Plan for a model, a GPU count
and a workload, within the user's :class:`Constraints`.

Knobs enumerated: tp, cp, pp (dp = GPUs / (tp * cp * pp)), the pipeline schedule with vpp
(interleaved only), ep and etp (MoE models), micro-batch size, ZeRO stage, sequence
parallelism, recomputation and the rank order; the layer-to-stage split is the simulator's
(balanced) choice, not a knob.

``etp`` (expert tensor parallelism) takes the divisors of tp that the user lists
(``Constraints.etp``, ``--etp 1,2``); unlisted, it stays at Megatron's default, etp = tp.
The expert fold re-splits a stage's tp * cp * dp ranks as etp * ep * edp, and an expert-TP
group inside a TP group keeps an expert's shards on the GPUs that already share its tokens.
Dense models have no experts: there etp = tp and an ``etp`` list is ignored.

Rank orders (:data:`RANK_ORDERS`, Megatron ``order``, fastest dimension first): the ones the
user lists (``--rank-order``), else Megatron's default ``tp-cp-ep-dp-pp`` alone
(:data:`DEFAULT_RANK_ORDERS`). The useful alternative is ``tp-cp-ep-pp-dp``
(:data:`ALTERNATE_RANK_ORDER`), the layout of Megatron's ``--use-tp-pp-dp-mapping``
(pipeline stages on neighbouring GPUs, inside a node when tp * cp * pp fits one, and
data-parallel replicas outermost, across nodes): it can win where the DP traffic (and
ZeRO's gathers) outweighs the p2p activations. Moving tp, cp or ep outward only takes their
per-layer collectives off NVLink.

Why both default to Megatron's value: each multiplies the space (DeepSeek-V3 on 2048 GPUs:
380k valid candidates with the defaults, 2.4 M with every etp and both orders, a search
3.7 times longer) for little: on the shipped cases the best plan changes by at most 113 us
with the second order, and etp < tp wins only where TP's expert shards cost memory (e.g.
Qwen3-235B on 256 H100s: tp2 etp1), which ``--etp 1,2`` finds.

The space is built as integer numpy columns (:class:`CandidateTable`, :func:`candidate_table`:
about a second for DeepSeek-V3's 10.7 M combinations on 2048 GPUs); :func:`candidates`
yields the same rows as :class:`Plan` objects. Validity is decided by the same rules as the
simulator, applied as masks: :class:`~planner.specs.plan.Plan`'s validators,
:func:`~planner.specs.compat.check_plan` and the schedule's micro-batch rules
(:func:`~planner.costmodel.schedules.check_schedule`), and a chunk per pipeline stage needs
a block (DualPipeV has 2 * pp chunks); tests/test_search.py keeps the plan-by-plan reference
and checks both give the same plans and counts. Every rejection is counted under the
rule's name (the plan field it names). Three *equivalence* rules drop exact duplicates
before validation, also counted: sequence parallelism with tp == 1 (no effect: nothing to
split), a schedule other than 1F1B with pp == 1 (no pipeline to schedule), and a rank
order that lays the row's ranks out exactly as an earlier allowed order does
(``rank_order_same_layout``; e.g. the two default orders when pp == 1 or dp == 1): the
layout (:func:`~planner.hwmodels.placement.rank_layout`) only reads the order of the
dimensions of size > 1, in the dense view (tp, cp, dp, pp) and the expert view (etp, ep,
edp, pp), so two orders that list those alike give the same groups, hence the same plan to
the simulator and the same answer to the expert-fold rule (:func:`_same_layout_codes`).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from planner.errors import SpecError
from planner.specs.model import ModelSpec
from planner.specs.plan import (
    DEFAULT_RANK_ORDER, PipelineP2P, PipelineSchedule, Plan, Recompute, Workload, ZeroStage,
)

ORDER_DIMS = ("tp", "cp", "ep", "dp", "pp")
"""The dimensions a rank order permutes (:attr:`Plan.rank_order`)."""
ALTERNATE_RANK_ORDER = "tp-cp-ep-pp-dp"
"""Megatron's ``--use-tp-pp-dp-mapping`` layout (module docstring)."""
RANK_ORDERS = (DEFAULT_RANK_ORDER, ALTERNATE_RANK_ORDER) + tuple(
    o for o in ("-".join(p) for p in itertools.permutations(ORDER_DIMS))
    if o not in (DEFAULT_RANK_ORDER, ALTERNATE_RANK_ORDER))
"""Every rank order, the default first: the ``order`` column of a :class:`CandidateTable`
indexes it."""
DEFAULT_RANK_ORDERS = RANK_ORDERS[:1]
"""Rank orders tried unless listed (module docstring): Megatron's default."""
_ORDER_CODE = {o: k for k, o in enumerate(RANK_ORDERS)}

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
    etp: tuple[int, ...] | None = None
    """Expert tensor-parallel degrees (MoE models; those dividing tp are tried; None = tp,
    Megatron's default; ignored for dense models)."""
    rank_order: tuple[str, ...] | None = None
    """Rank orders (:data:`RANK_ORDERS`); None = :data:`DEFAULT_RANK_ORDERS`."""
    micro_batch_size: tuple[int, ...] | None = None
    zero_stage: tuple[ZeroStage, ...] | None = None
    sequence_parallel: tuple[bool, ...] | None = None
    recompute: tuple[Recompute, ...] | None = None
    pipeline_schedule: tuple[PipelineSchedule, ...] | None = None
    max_memory_fraction: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.max_memory_fraction <= 1.0:
            raise SpecError("max_memory_fraction", self.max_memory_fraction, "must be in (0, 1]")
        for name in ("tp", "pp", "vpp", "cp", "ep", "etp", "micro_batch_size"):
            values = getattr(self, name)
            if values is not None and (not values or any(int(v) < 1 for v in values)):
                raise SpecError(name, values, "must be a non-empty list of integers >= 1")
        if self.rank_order is not None and (not self.rank_order or any(o not in _ORDER_CODE for o in self.rank_order)):
            raise SpecError("rank_order", self.rank_order,
                            f"must be a non-empty list of '-'-separated permutations of {', '.join(ORDER_DIMS)} "
                            f"(e.g. {DEFAULT_RANK_ORDER})")


@dataclass
class SpaceStats:
    """What enumeration produced: candidates generated, and rejections per rule."""

    generated: int = 0
    """Knob combinations looked at (before any rule)."""
    rejected: Counter[str] = field(default_factory=Counter)
    """Structurally invalid or duplicate combinations, per rule name."""
    dropped: list[str] = field(default_factory=list)
    """Pinned values no plan can take, said in words (a tp, cp or pp not dividing the GPUs)."""

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

    ``sched``, ``rec`` and ``order`` index :data:`SCHEDULES`, :data:`RECOMPUTES` and
    :data:`RANK_ORDERS`; ``zero`` is the ZeRO stage; ``sp`` is 0/1; ``etp`` is the resolved
    expert tensor-parallel degree (tp for dense models)."""

    tp: np.ndarray
    cp: np.ndarray
    pp: np.ndarray
    vpp: np.ndarray
    ep: np.ndarray
    etp: np.ndarray
    dp: np.ndarray
    mb: np.ndarray
    zero: np.ndarray
    sp: np.ndarray
    rec: np.ndarray
    sched: np.ndarray
    order: np.ndarray

    COLUMNS = ("tp", "cp", "pp", "vpp", "ep", "etp", "dp", "mb", "zero", "sp", "rec", "sched", "order")

    def __len__(self) -> int:
        return len(self.tp)

    def take(self, index) -> CandidateTable:
        """The rows ``index`` (a mask or integer array), in that order."""
        return CandidateTable(*(getattr(self, c)[index] for c in self.COLUMNS))

    def plan(self, i: int) -> Plan:
        """Row ``i`` as a validated :class:`Plan` (``etp=None`` where it equals tp, Megatron's
        default, so that a row is the Plan one writes without naming it)."""
        tp, etp = int(self.tp[i]), int(self.etp[i])
        return Plan(tp=tp, cp=int(self.cp[i]), pp=int(self.pp[i]), vpp=int(self.vpp[i]), ep=int(self.ep[i]),
                    etp=None if etp == tp else etp, dp=int(self.dp[i]), micro_batch_size=int(self.mb[i]),
                    zero_stage=ZeroStage(int(self.zero[i])), sequence_parallel=bool(self.sp[i]),
                    recompute=RECOMPUTES[int(self.rec[i])], pipeline_schedule=SCHEDULES[int(self.sched[i])],
                    rank_order=RANK_ORDERS[int(self.order[i])])

    def microbatches(self, workload: Workload) -> np.ndarray:
        """``Plan.num_microbatches`` per row."""
        return workload.global_batch_size // (self.dp * self.mb)

    @classmethod
    def from_plans(cls, plans: Sequence[Plan]) -> CandidateTable:
        """Columns of ``plans``; :meth:`plan` gives them back (with ``etp=None`` where it is tp;
        ``pipeline_layers`` and the attention kernel have no column)."""
        rows = [(p.tp, p.cp, p.pp, p.vpp, p.ep, p.expert_tp, p.dp, p.micro_batch_size, int(p.zero_stage),
                 int(p.sequence_parallel), _REC_CODE[p.recompute], _SCHED_CODE[p.pipeline_schedule],
                 _ORDER_CODE[p.rank_order]) for p in plans]
        width = len(cls.COLUMNS)
        arr = np.array(rows, dtype=np.int64).reshape(len(rows), width)
        return cls(*(arr[:, k].copy() for k in range(width)))


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
    vpp: the product of ep, etp, rank order, micro-batch, sp, ZeRO, recompute) and the rules
    below are applied as masks, each rejection counted under the first rule it breaks."""
    c = constraints or Constraints()
    stats = stats if stats is not None else SpaceStats()
    divisors = _divisors(num_gpus)
    for name in ("tp", "cp", "pp"):
        stats.dropped += [f"{name} {v} does not divide the {num_gpus} GPUs"
                          for v in getattr(c, name) or () if v not in divisors]
    tps = [t for t in _allowed(c.tp, divisors) if t in divisors]
    cps = [x for x in _allowed(c.cp, DEFAULT_CPS) if x in divisors]
    pps = [p for p in _allowed(c.pp, divisors) if p in divisors]
    eps = _allowed(c.ep, _divisors(model.moe.num_experts) if model.moe else (1,))
    orders = [_ORDER_CODE[o] for o in _allowed(c.rank_order, DEFAULT_RANK_ORDERS)]
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
        inner = np.array(list(itertools.product(eps, expert_tps(model, tp, c.etp), orders, mbs, sps)),
                         dtype=np.int64).reshape(-1, 5)
        for schedule in schedules:
            for vpp in (vpps if schedule is PipelineSchedule.INTERLEAVED else [1]):
                head = np.array([tp, cp, pp, vpp, dp, _SCHED_CODE[PipelineSchedule(schedule)]], dtype=np.int64)
                blocks.append(np.hstack([np.broadcast_to(head, (len(inner), 6)), inner]))
    # The rules read neither the ZeRO stage nor recompute: they run on the other columns
    # and each verdict counts for every (ZeRO stage, recompute) pair, innermost.
    if not blocks and tps and cps and pps:
        stats.dropped.append(f"no tp x cp x pp of the allowed values divides the {num_gpus} GPUs")
    rows = np.vstack(blocks) if blocks else np.zeros((0, 11), dtype=np.int64)
    pairs = len(zeros) * len(recs)
    stats.generated += len(rows) * pairs
    keep = _rules(model, workload, stats, orders, pairs, *(rows[:, k] for k in range(11)))
    rows = np.repeat(rows[keep], pairs, axis=0)
    inner = np.array(list(itertools.product(zeros, recs)), dtype=np.int64).reshape(-1, 2)
    zero, rec = np.tile(inner, (len(rows) // max(pairs, 1), 1)).T
    tp, cp, pp, vpp, dp, sched, ep, etp, order, mb, sp = (np.ascontiguousarray(rows[:, k]) for k in range(11))
    return CandidateTable(tp=tp, cp=cp, pp=pp, vpp=vpp, ep=ep, etp=etp, dp=dp, mb=mb, zero=zero.copy(), sp=sp,
                          rec=rec.copy(), sched=sched, order=order)


def expert_tps(model: ModelSpec, tp: int, pinned: tuple[int, ...] | None) -> list[int]:
    """The etp values tried with ``tp`` (module docstring): [tp] (Megatron's default) unless
    listed, else the listed divisors of tp, tp first; [tp] for a dense model."""
    if model.moe is None or pinned is None:
        return [tp]
    return [e for e in [tp] + [d for d in _divisors(tp) if d != tp] if e in pinned]


def _same_layout_codes(order: int, experts: bool, tp, cp, ep, etp, dp, pp) -> np.ndarray:
    """Per row, a code of the dimensions of size > 1 in the order ``RANK_ORDERS[order]``
    lists them, in the dense view (tp, cp, dp, pp) and, if ``experts`` (a MoE model: the
    simulator reads that view only then), the expert view (etp, ep, edp, pp):
    :class:`~planner.hwmodels.placement.RankLayout` lays the ranks out as an array with one
    axis per dimension, which a size-1 axis does not change, so two orders with the same
    code give a row the same groups (tests/test_search.py checks it)."""
    edp = (tp * cp * dp) // np.maximum(ep * etp, 1)
    sizes = {"tp": (tp, etp), "cp": (cp, 1), "ep": (1, ep), "dp": (dp, edp), "pp": (pp, pp)}
    code = np.zeros(len(tp), dtype=np.int64)
    for view in ((0, 1) if experts else (0,)):
        for dim in RANK_ORDERS[order].split("-"):
            digit = ORDER_DIMS.index(dim) + 1
            big = np.asarray(sizes[dim][view]) > 1
            code = np.where(big, code * 6 + digit, code)
        code = code * 6  # separates the views
    return code


def _fold_keeps_stages(order: np.ndarray, tp, cp, ep, etp, dp, pp) -> np.ndarray:
    """:meth:`Plan.expert_fold_keeps_stages` per row: pp == 1, or the dimensions before pp
    in the row's order cover as many ranks in the dense view as in the expert view."""
    edp = (tp * cp * dp) // np.maximum(ep * etp, 1)
    ok = pp == 1
    for k in np.unique(order).tolist():
        dims = RANK_ORDERS[k].split("-")
        before = dims[: dims.index("pp")]
        dense = {"tp": tp, "cp": cp, "ep": 1, "dp": dp}
        expert = {"tp": etp, "cp": 1, "ep": ep, "dp": edp}
        dense_ranks = np.prod([np.broadcast_to(dense[d], tp.shape) for d in before], axis=0) if before else 1
        expert_ranks = np.prod([np.broadcast_to(expert[d], tp.shape) for d in before], axis=0) if before else 1
        ok = ok | ((order == k) & (dense_ranks == expert_ranks))
    return ok


def _rules(model, workload, stats, orders, weight, tp, cp, pp, vpp, dp, sched, ep, etp, order, mb, sp) -> np.ndarray:
    """The validity mask; rejections counted per rule (``weight`` combinations per row). The rules and their order are those
    :func:`candidates` used to apply one plan at a time (tests/test_search.py keeps that
    reference and checks the two agree): the space's three equivalence rules, Plan's
    validators, :func:`~planner.specs.compat.check_plan`, :func:`check_schedule`, and a
    block per DualPipeV chunk. ``orders``: the allowed rank orders, in the order tried."""
    alive = np.ones(len(tp), dtype=bool)

    def rule(name: str, broken: np.ndarray) -> None:
        nonlocal alive
        hit = alive & broken
        if hit.any():
            stats.rejected[name] += int(hit.sum()) * weight
        alive &= ~broken

    dual = (sched == S_DUALPIPE) | (sched == S_DUALPIPEV)
    rule("sequence_parallel_without_tp", (sp == 1) & (tp == 1))
    rule("schedule_without_pp", (pp == 1) & (sched != S_1F1B))
    if len(orders) > 1:  # an order that lays the row out as an earlier allowed one does
        codes = [_same_layout_codes(o, model.moe is not None, tp, cp, ep, etp, dp, pp) for o in orders]
        same = np.zeros(len(tp), dtype=bool)
        for j in range(1, len(orders)):
            earlier = np.zeros(len(tp), dtype=bool)
            for i in range(j):
                earlier |= codes[i] == codes[j]
            same |= (order == orders[j]) & earlier
        rule("rank_order_same_layout", same)
    # Plan._check
    rule("plan.vpp", (vpp > 1) & (sched != S_INTERLEAVED))
    rule("plan.vpp", (sched == S_INTERLEAVED) & (vpp < 2))
    rule("plan.pp", dual & (pp < 2))
    rule("plan.pp", (sched == S_DUALPIPE) & (pp % 2 == 1))
    rule("plan.ep", (tp * cp * dp) % (ep * etp) != 0)
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
        rule("plan.etp", model.moe.expert_ffn_hidden_size % etp != 0)
        rule("plan.rank_order", ~_fold_keeps_stages(order, tp, cp, ep, etp, dp, pp))
    rule("plan.pp", pp * vpp > model.num_layers)
    rule("plan.cp", (cp > 1) & (workload.seq_length % (2 * cp) != 0))
    batch = workload.global_batch_size
    rule("plan.micro_batch_size", batch % (dp * mb) != 0)
    m = batch // (dp * mb)
    rule("plan.pipeline_schedule", dual & ~((m >= 2 * pp) & ((m % 2 == 0) | (sched == S_DUALPIPEV))))
    if workload.pipeline_p2p is PipelineP2P.DEEPSPEED:
        rule("plan.pipeline_schedule", (pp > 1) & (sched != S_1F1B))
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
