"""``plan(model, cluster, workload) -> SearchResult``: the fastest plans that fit, ranked.

1. Enumerate the structurally valid candidates as integer columns
   (:func:`planner.search.space.candidate_table`).
2. Level-0 bounds for all of them at once (:mod:`planner.search.prune`): drop those whose
   peak-memory lower bound is over ``capacity * max_memory_fraction``.
3. Best-first on the step-time lower bounds: pop the smallest; a level-0 bound is refined to
   the level-1 bound (one rank priced with communication) and pushed back; a refined plan
   whose exact memory of its first and last ranks is over the limit in every split is
   dropped (memory rule); otherwise it is simulated. Stop once the smallest bound left
   exceeds the k-th best feasible step simulated (ties: strictly greater, so equal plans
   are still simulated).

Why this is lossless: every bound is a proven lower bound of what ``simulate`` reports for
that plan (prune.py says why for each), so a plan never simulated has a step time above the
k-th best simulated one, or memory over the limit; the ranking is by ``simulate``'s step
time alone, ties by enumeration order, exactly as ``exhaustive=True`` (simulate every valid
candidate) ranks them. The fast estimate (:mod:`planner.costmodel.fast`) is not used here:
ordering by bounds already simulates only plans whose bound is below the k-th best step.

A plan is *feasible* when the simulator reports it fits (status ok) and its peak memory is
at most ``max_memory_fraction`` of HBM.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from planner.costmodel.report import StepReport
from planner.costmodel.simulate import simulate
from planner.errors import InfeasibleError
from planner.search.prune import BoundCalculator, PlanBounds, PruneRule
from planner.search.space import Constraints, SpaceStats, candidate_table
from planner.specs.hardware import ClusterSpec
from planner.specs.model import ModelSpec
from planner.specs.plan import Plan, Workload

GIB = 2**30


@dataclass(frozen=True)
class RankedPlan:
    """One recommended plan with its simulated step and the bounds that ordered it."""

    rank: int
    plan: Plan
    report: StepReport
    bounds: PlanBounds
    memory_limit_bytes: float
    """capacity * max_memory_fraction."""

    @property
    def memory_headroom_bytes(self) -> float:
        return self.memory_limit_bytes - self.report.memory_peak_bytes

    def to_record(self) -> dict:
        """One flat row: the knobs, then the figures (SI units in the names)."""
        p, r = self.plan, self.report
        return {
            "rank": self.rank, "tp": p.tp, "pp": p.pp, "vpp": p.vpp, "cp": p.cp, "ep": p.ep, "etp": p.expert_tp,
            "dp": p.dp, "micro_batch_size": p.micro_batch_size, "num_microbatches": r.num_microbatches,
            "zero_stage": int(p.zero_stage), "sequence_parallel": p.sequence_parallel,
            "recompute": p.recompute.value, "pipeline_schedule": p.pipeline_schedule.value,
            "step_time_s": r.step_time_s, "tokens_per_s_per_gpu": r.tokens_per_s_per_gpu,
            "mfu_causal": r.mfu_causal, "mfu_noncausal": r.mfu_noncausal,
            "memory_peak_bytes": r.memory_peak_bytes, "memory_capacity_bytes": r.memory_capacity_bytes,
            "memory_headroom_bytes": self.memory_headroom_bytes,
            "step_time_lower_bound_s": self.bounds.step_time_s,
        }


@dataclass(frozen=True)
class SearchCounts:
    """What the search looked at and what each rule removed."""

    generated: int
    """Knob combinations looked at."""
    enumerated: int
    """Structurally valid candidates."""
    invalid_by_rule: dict[str, int]
    """Invalid or duplicate combinations per rule (together: ``divisibility``)."""
    pruned: dict[str, int]
    """Candidates removed per :class:`PruneRule` (divisibility = all invalid ones)."""
    simulated: int
    feasible_simulated: int
    """Simulated candidates that fit."""

    def line(self) -> str:
        pruned = ", ".join(f"{k} {v:,}" for k, v in self.pruned.items())
        return (f"{self.generated:,} combinations, {self.enumerated:,} valid candidates; pruned: {pruned}; "
                f"simulated {self.simulated:,} ({self.feasible_simulated:,} fit)")


@dataclass(frozen=True)
class SearchResult:
    """Ranked feasible plans, best first, and how the search got there."""

    ranked: tuple[RankedPlan, ...]
    counts: SearchCounts
    elapsed_s: float
    exhaustive: bool
    memory_limit_bytes: float

    @property
    def best(self) -> RankedPlan:
        return self.ranked[0]

    @property
    def candidates_per_s(self) -> float:
        """Valid candidates decided (simulated or pruned) per second of search."""
        return self.counts.enumerated / self.elapsed_s if self.elapsed_s > 0 else float("inf")

    def to_records(self) -> list[dict]:
        """One dict per ranked plan (``pandas.DataFrame(result.to_records())``)."""
        return [r.to_record() for r in self.ranked]

    def to_json(self) -> dict:
        """The stable JSON of ``planner plan --format json``."""
        c = self.counts
        return {
            "plans": self.to_records(),
            "counts": {"generated": c.generated, "enumerated": c.enumerated, "invalid_by_rule": c.invalid_by_rule,
                       "pruned": c.pruned, "simulated": c.simulated, "feasible_simulated": c.feasible_simulated},
            "exhaustive": self.exhaustive,
            "elapsed_s": self.elapsed_s,
            "candidates_per_s": self.candidates_per_s,
            "memory_limit_bytes": self.memory_limit_bytes,
        }


@dataclass
class _Shortfall:
    """Smallest memory overshoot seen over the limit (bytes) and the plan that had it."""

    bytes: float = float("inf")
    plan: Plan | None = None
    exact: bool = False

    def see(self, overshoot: float, plan: Plan, exact: bool) -> None:
        if overshoot < self.bytes:
            self.bytes, self.plan, self.exact = overshoot, plan, exact


def plan(
    model: ModelSpec, cluster: ClusterSpec, workload: Workload, constraints: Constraints | None = None,
    top_k: int = 5, exhaustive: bool = False, progress: Callable[[int, int], None] | None = None,
) -> SearchResult:
    """The ``top_k`` fastest feasible plans for ``model`` on all of ``cluster``'s GPUs.

    ``progress(done, total)`` is called after each full simulation (total = candidates
    left after the memory rule; the time bound usually stops the loop well before it).

    Raises :class:`~planner.errors.InfeasibleError` when no candidate fits, naming the
    smallest memory shortfall seen and what would close it.
    """
    if top_k < 1:
        raise ValueError("top_k must be >= 1")
    constraints = constraints or Constraints()
    start = time.perf_counter()
    stats = SpaceStats()
    table = candidate_table(model, cluster.num_gpus, workload, constraints, stats)
    limit = cluster.gpu.hbm_capacity_bytes * constraints.max_memory_fraction
    calc = BoundCalculator(model, cluster, workload)
    memory = calc.memory_bounds(table)
    shortfall = _Shortfall()
    pruned = Counter({PruneRule.DIVISIBILITY.value: sum(stats.rejected.values())})
    plans: dict[int, Plan] = {}

    def plan_of(i: int) -> Plan:
        if i not in plans:
            plans[i] = table.plan(i)
        return plans[i]

    if exhaustive:
        survivors = np.arange(len(table))
    else:
        over = memory > limit
        pruned[PruneRule.MEMORY_LOWER_BOUND.value] += int(over.sum())
        if over.any():
            i = int(np.flatnonzero(over)[np.argmin(memory[over])])
            shortfall.see(float(memory[i] - limit), plan_of(i), exact=False)
        survivors = np.flatnonzero(~over)
    coarse = np.zeros(len(table))
    coarse[survivors] = calc.time_bounds(table.take(survivors))
    bound = coarse.copy()
    feasible: list[tuple[float, int, StepReport]] = []
    simulated = 0

    def run(i: int) -> None:
        nonlocal simulated
        report = simulate(model, cluster, plan_of(i), workload)
        simulated += 1
        if progress is not None:
            progress(simulated, len(survivors))
        if report.fits and report.memory_peak_bytes <= limit:
            feasible.append((report.step_time_s, i, report))
            feasible.sort(key=lambda x: (x[0], x[1]))
        else:
            shortfall.see(report.memory_peak_bytes - limit, plan_of(i), exact=True)

    if exhaustive:
        for i in survivors:
            run(int(i))
    else:
        # Best-first on the bounds (level 0 for all, refined to level 1 when popped, then
        # simulated): a plan is simulated only once its refined bound is the smallest left.
        heap = [(float(coarse[i]), 0, int(i)) for i in survivors]
        heapq.heapify(heap)
        while heap:
            b, level, i = heapq.heappop(heap)
            if len(feasible) >= top_k and b > feasible[top_k - 1][0]:
                pruned[PruneRule.TIME_LOWER_BOUND.value] += len(heap) + 1
                break
            if level == 0:
                bound[i] = max(b, calc.refined(plan_of(i)))
                heapq.heappush(heap, (float(bound[i]), 1, i))
                continue
            memory[i] = max(memory[i], calc.refined_memory(plan_of(i)))
            if memory[i] > limit:  # every split the simulator may pick has a rank over the limit
                pruned[PruneRule.MEMORY_LOWER_BOUND.value] += 1
                shortfall.see(float(memory[i] - limit), plan_of(i), exact=False)
                continue
            run(i)
    for rule in PruneRule:
        pruned.setdefault(rule.value, 0)
    counts = SearchCounts(
        generated=stats.generated, enumerated=len(table), invalid_by_rule=dict(stats.rejected),
        pruned={rule.value: pruned[rule.value] for rule in PruneRule}, simulated=simulated,
        feasible_simulated=len(feasible),
    )
    if not feasible:
        raise InfeasibleError(_infeasible_message(model, cluster, constraints, len(table), shortfall, limit))
    ranked = tuple(
        RankedPlan(rank=k + 1, plan=plan_of(i), report=report,
                   bounds=PlanBounds(step_time_s=float(bound[i]), memory_bytes=float(memory[i])),
                   memory_limit_bytes=limit)
        for k, (_, i, report) in enumerate(feasible[:top_k])
    )
    return SearchResult(ranked=ranked, counts=counts, elapsed_s=time.perf_counter() - start,
                        exhaustive=exhaustive, memory_limit_bytes=limit)


def _infeasible_message(model, cluster, constraints: Constraints, num_plans: int, shortfall: _Shortfall,
                        limit: float) -> str:
    where = f"{model.name} on {cluster.num_gpus} x {cluster.gpu.name}"
    if not num_plans:
        return f"no structurally valid plan for {where} within the constraints; relax the pinned knobs"
    best = shortfall.plan
    amount = f"{shortfall.bytes / GIB:,.1f} GiB" if shortfall.exact else f"at least {shortfall.bytes / GIB:,.1f} GiB"
    knobs = (f"tp={best.tp} pp={best.pp} ep={best.ep} zero={int(best.zero_stage)} "
             f"recompute={best.recompute.value} mb={best.micro_batch_size}")
    fixes = ["more GPUs (or GPUs with more HBM)"]
    if constraints.pp is not None:
        fixes.append("allow a higher --pp")
    if constraints.zero_stage is not None:
        fixes.append("allow a higher ZeRO stage")
    if constraints.recompute is not None:
        fixes.append("allow --recompute full")
    if constraints.max_memory_fraction < 1.0:
        fixes.append("a higher --max-memory-frac")
    if len(fixes) == 1:
        fixes.append("a larger pp, ZeRO-3 and full recompute are already in the space")
    return (f"no plan fits {where}: the closest ({knobs}) needs {amount} more per GPU than the "
            f"{limit / GIB:,.1f} GiB allowed; fix: {'; '.join(fixes)}")
