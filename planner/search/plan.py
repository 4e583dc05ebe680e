"""``plan(model, cluster, workload) -> SearchResult``: the fastest plans that fit, ranked.

1. Enumerate the structurally valid candidates as integer columns
   (:func:`planner.search.space.candidate_table`).
2. Level-0 bounds for all of them at once (:mod:`planner.search.prune`): drop those whose
   peak-memory lower bound is over ``capacity * max_memory_fraction``.
3. Best-first on the step-time lower bounds: pop the smallest, refine it one level and
   push it back, so that expensive bounds are only computed for plans whose cheaper bound
   is already the smallest left (:mod:`planner.search.refine`):

   - level 1: rank 0 with stage 0's communication, no data-parallel terms (the plans that
     differ only in recompute and ZeRO stage are priced together: one per group; and the
     groups next in line are priced in one batch, :mod:`planner.search.quick`);
   - level 2: the busiest ranks with their stages' communication (per group);
   - level 3: the same with the data-parallel terms (exposed gradient reduction, ZeRO-3;
     per group and ZeRO stage);
   - then the exact memory of the end ranks (dropped if over the limit in every split
     the simulator may pick: memory rule), and level 4, the simulator's pipeline replayed
     with every chunk priced on its stage;
   - then it is simulated.

   Stop once the smallest bound left exceeds the k-th best feasible step simulated (ties:
   strictly greater, so equal plans are still simulated).
4. Re-split each of the k best by CP-SAT (:mod:`planner.search.fit`): a plan takes the
   fitted layer split where its simulated step is shorter and it still fits; re-rank.

Why steps 1-3 are lossless: every bound is a proven lower bound of what ``simulate`` reports for
that plan (prune.py says why for each), so a plan never simulated has a step time above the
k-th best simulated one, or memory over the limit; the ranking is by ``simulate``'s step
time alone, ties by enumeration order, exactly as ``exhaustive=True`` (simulate every valid
candidate) ranks them. The fast estimate (:mod:`planner.costmodel.fast`) is not used here:
ordering by bounds already simulates only plans whose bound is below the k-th best step.

A plan is *feasible* when the simulator reports it fits (status ok) and its peak memory is
at most ``max_memory_fraction`` of HBM. A plan the cost model refuses while pricing it
(:class:`~planner.errors.SpecError` or :class:`~planner.errors.UnsupportedError`, e.g. an
expert group spread over more nodes than its routing limit allows) is counted as invalid
under ``costmodel.<field>`` with the structurally invalid ones.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from planner.costmodel.report import StepReport
from planner.costmodel.simulate import simulate
from planner.errors import InfeasibleError, PlannerError, SpecError, UnsupportedError
from planner.search import parallel
from planner.search.fit import Refit, refit_split
from planner.search.prune import BoundCalculator, PlanBounds, PruneRule
from planner.search.space import Constraints, SpaceStats, candidate_table
from planner.specs.hardware import ClusterSpec
from planner.specs.model import ModelSpec
from planner.specs.plan import Plan, Workload

GIB = 2**30
QUICK_BATCH = (128, 1024)
"""Fewest and most groups given their first refinement in one batch (a cost trade only:
each batch pays a few numpy calls per pipeline program; groups refined beyond the stopping
point are wasted work)."""


@dataclass(frozen=True)
class RankedPlan:
    """One recommended plan with its simulated step and the bounds that ordered it."""

    rank: int
    plan: Plan
    report: StepReport
    bounds: PlanBounds
    memory_limit_bytes: float
    """capacity * max_memory_fraction."""
    simulator_split_step_s: float | None = None
    """When CP-SAT's layer split replaced the simulator's (:mod:`planner.search.fit`; the
    plan then names it in ``pipeline_layers``): the step on the simulator's split, which
    the bounds are for; None otherwise."""

    @property
    def memory_headroom_bytes(self) -> float:
        return self.memory_limit_bytes - self.report.memory_peak_bytes

    def to_record(self) -> dict:
        """One flat row: the knobs, then the figures (SI units in the names)."""
        p, r = self.plan, self.report
        return {
            "rank": self.rank, "tp": p.tp, "pp": p.pp, "vpp": p.vpp, "cp": p.cp, "ep": p.ep, "etp": p.expert_tp,
            "dp": p.dp, "rank_order": p.rank_order, "micro_batch_size": p.micro_batch_size,
            "num_microbatches": r.num_microbatches,
            "zero_stage": int(p.zero_stage), "sequence_parallel": p.sequence_parallel,
            "recompute": p.recompute.value, "pipeline_schedule": p.pipeline_schedule.value,
            "pipeline_layers": ",".join(str(n) for n in r.pipeline_layers),
            "layer_split": "simulator" if self.simulator_split_step_s is None else "cp-sat",
            "step_time_s": r.step_time_s, "tokens_per_s_per_gpu": r.tokens_per_s_per_gpu,
            "mfu_causal": r.mfu_causal, "mfu_noncausal": r.mfu_noncausal,
            "memory_peak_bytes": r.memory_peak_bytes, "memory_capacity_bytes": r.memory_capacity_bytes,
            "memory_headroom_bytes": self.memory_headroom_bytes,
            "step_time_lower_bound_s": self.bounds.step_time_s,
            "step_time_simulator_split_s": (r.step_time_s if self.simulator_split_step_s is None
                                            else self.simulator_split_step_s),
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
    workers: int | None = None, fit_splits: bool = True,
) -> SearchResult:
    """The ``top_k`` fastest feasible plans for ``model`` on all of ``cluster``'s GPUs.

    ``progress(done, total)`` is called every tenth of a second or so and once at the end
    (``done == total``): ``total`` valid candidates, ``done`` of them decided (pruned,
    simulated, or passed over in bound order: the time bound decides the rest at once).

    ``workers``: processes for the best-first stage, 1 or 2 (:mod:`planner.search.parallel`;
    default: 2 on a large space where fork and two CPUs are available). The ranking is the
    same either way.

    ``fit_splits``: re-split each of the ``top_k`` by CP-SAT and keep the faster split
    (:mod:`planner.search.fit`); the ranking of the simulator's splits before it is exactly
    the exhaustive one.

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
    search = _Search(model, cluster, workload, table, limit, top_k, progress)
    pruned = Counter({PruneRule.DIVISIBILITY.value: sum(stats.rejected.values())})
    with _collector_paused():
        search.run(exhaustive, pruned, workers)
    rejected = Counter(search.rejected.values())  # plans the cost model refused while pricing them
    pruned[PruneRule.DIVISIBILITY.value] += len(search.rejected)
    for rule in PruneRule:
        pruned.setdefault(rule.value, 0)
    counts = SearchCounts(
        generated=stats.generated, enumerated=len(table) - len(search.rejected),
        invalid_by_rule=dict(stats.rejected + rejected),
        pruned={rule.value: pruned[rule.value] for rule in PruneRule}, simulated=search.simulated,
        feasible_simulated=len(search.feasible),
    )
    if progress is not None:
        progress(len(table), len(table))
    if not search.feasible:
        raise InfeasibleError(_infeasible_message(model, cluster, constraints, counts, search.shortfall, limit,
                                                  stats.dropped))
    # Deliver 4: each of the top_k re-split by CP-SAT where that is faster (planner.search.fit).
    rows = []
    for _, i, report in search.feasible[:top_k]:
        p = search.plan_of(i)
        rows.append((refit_split(model, cluster, workload, p, report, limit) if fit_splits else Refit(p, report, False),
                     i, report))
    rows.sort(key=lambda row: (row[0].report.step_time_s, row[1]))
    ranked = tuple(
        RankedPlan(rank=k + 1, plan=fit.plan, report=fit.report,
                   bounds=PlanBounds(step_time_s=float(search.bound[i]), memory_bytes=float(search.memory[i])),
                   memory_limit_bytes=limit, simulator_split_step_s=report.step_time_s if fit.fitted else None)
        for k, (fit, i, report) in enumerate(rows)
    )
    return SearchResult(ranked=ranked, counts=counts, elapsed_s=time.perf_counter() - start,
                        exhaustive=exhaustive, memory_limit_bytes=limit)


class _Search:
    """The state of one search: bounds per candidate, the best simulated plans so far."""

    def __init__(self, model, cluster, workload, table, limit: float, top_k: int, progress):
        self.model, self.cluster, self.workload, self.table = model, cluster, workload, table
        self.limit, self.top_k, self.progress = limit, top_k, progress
        self.calc = BoundCalculator(model, cluster, workload)
        self.memory = self.calc.memory_bounds(table)
        self.bound = np.zeros(len(table))
        self.level0 = self.bound  # level-0 bounds (run() keeps a copy)
        self.shortfall = _Shortfall()
        self.feasible: list[tuple[float, int, StepReport]] = []
        self.simulated = 0
        self.rejected: dict[int, str] = {}  # candidate -> the cost model's rule it broke
        self._plans: dict[int, Plan] = {}
        self._done, self._shown = 0, time.perf_counter()
        # Two processes (planner.search.parallel): the k best step times of each, and which
        # slot is this process's (0: the parent, 1: the forked child).
        self.shared: np.ndarray | None = None
        self.slot, self._done_at_fork = 0, 0

    def plan_of(self, i: int) -> Plan:
        if i not in self._plans:
            self._plans[i] = self.table.plan(i)
        return self._plans[i]

    def share(self, shared: np.ndarray | None, slot: int) -> None:
        """Run as one of two processes (:mod:`planner.search.parallel`) sharing ``shared``:
        slots ``[slot k, (slot + 1) k)`` hold this process's k best step times, the last
        entry how many candidates the child (slot 1) has decided."""
        self.shared, self.slot, self._done_at_fork = shared, slot, self._done

    def _kth(self) -> float:
        """The k-th best feasible step simulated so far (by both processes when two run)."""
        own = self.feasible[self.top_k - 1][0] if len(self.feasible) >= self.top_k else np.inf
        if self.shared is None:
            return own
        both = np.partition(self.shared[: 2 * self.top_k], self.top_k - 1)
        return min(own, float(both[self.top_k - 1]))

    def _publish(self) -> None:
        """Write this process's k best step times to its slots, in increasing index order
        (why that order: planner.search.parallel)."""
        if self.shared is None:
            return
        base = self.slot * self.top_k
        for j, (step, _, _) in enumerate(self.feasible[: self.top_k]):
            self.shared[base + j] = step

    def _tick(self, decided: int = 1) -> None:
        self._done += decided
        if self.slot == 1:  # the child: the parent shows progress
            self.shared[-1] = self._done - self._done_at_fork
            return
        if self.progress is not None and time.perf_counter() - self._shown > 0.1:
            self._shown = time.perf_counter()
            child = int(self.shared[-1]) if self.shared is not None else 0
            self.progress(self._done + child, len(self.table))

    def _reject(self, rows, exc: PlannerError) -> None:
        rule = f"costmodel.{getattr(exc, 'field', type(exc).__name__)}"
        for k in np.atleast_1d(rows):
            self.rejected[int(k)] = rule

    def _simulate(self, i: int) -> None:
        try:
            report = simulate(self.model, self.cluster, self.plan_of(i), self.workload)
        except (SpecError, UnsupportedError) as exc:
            self._reject(i, exc)
            return
        self.simulated += 1
        if report.fits and report.memory_peak_bytes <= self.limit:
            self.feasible.append((report.step_time_s, i, report))
            self.feasible.sort(key=lambda x: (x[0], x[1]))
            self._publish()
        else:
            self.shortfall.see(report.memory_peak_bytes - self.limit, self.plan_of(i), exact=True)

    def run(self, exhaustive: bool, pruned: Counter, workers: int | None = None) -> None:
        table, limit = self.table, self.limit
        if exhaustive:  # level-0 bounds only for the record (RankedPlan.bounds)
            self.bound = self.calc.time_bounds(table)
            for i in range(len(table)):
                self._simulate(i)
                self._tick()
            return
        over = self.memory > limit
        pruned[PruneRule.MEMORY_LOWER_BOUND.value] += int(over.sum())
        if over.any():
            i = int(np.flatnonzero(over)[np.argmin(self.memory[over])])
            self.shortfall.see(float(self.memory[i] - limit), self.plan_of(i), exact=False)
        survivors = np.flatnonzero(~over)
        self._tick(int(over.sum()))
        self.bound[survivors] = self.calc.time_bounds(table.take(survivors))
        self.level0 = self.bound.copy()  # the groups' order, whatever refining raises later
        parallel.best_first(self, survivors, pruned, workers)

    def _best_first(self, survivors: np.ndarray, pruned: Counter, part: tuple[int, int] = (0, 1)) -> None:
        """Pop the smallest bound; refine it one level and push it back, check its memory,
        simulate it at the last level; stop once the smallest bound left exceeds the k-th
        best feasible step. Level 0 is kept per group (the plans that differ only in
        recompute and ZeRO stage, at their smallest level-0 bound), in a sorted queue beside
        the heap; the first refinement is priced for a batch of groups at once
        (:func:`planner.search.quick.quick_bounds`): every group whose level-0 bound is
        not above the smallest refined bound left (they would be popped next anyway), at
        least ``QUICK_BATCH[0]`` (fewer only past the k-th best step), at most
        ``QUICK_BATCH[1]``. The busiest ranks (level 2 above) are priced per group, with the
        data-parallel terms (level 3) per group and ZeRO stage: a plan's first pop prices
        its siblings too. Refining more plans than needed only costs time: every bound is a
        lower bound, whoever asks for it. ``part = (j, n)``: only the groups at positions
        j, j + n, j + 2n, ... of the level-0 order (one of n processes)."""
        calc, table, bound, memory, limit = self.calc, self.table, self.bound, self.memory, self.limit
        group, members = _groups(table, survivors)
        first = np.full(len(members), np.inf)  # each group's level-0 bound
        np.minimum.at(first, group[survivors], self.level0[survivors])
        queue = np.argsort(first, kind="stable")[part[0]::part[1]]  # level 0, smallest first (ties: group order)
        sorted_first = first[queue]
        heap: list[tuple[float, int, int]] = []  # (bound, level >= 1, candidate)
        nxt = 0  # queue[nxt:] are the groups still at level 0
        ranks_bound = np.full(len(table), np.nan)  # the busiest ranks, priced per group
        dp_bound = np.full(len(table), np.nan)  # ... with the DP terms, per group and ZeRO stage

        while nxt < len(queue) or heap:
            # ``level``: how far b is refined (0: level 0, per group ... 4: replayed; then simulated).
            b0 = float(sorted_first[nxt]) if nxt < len(queue) else np.inf
            bh = heap[0][0] if heap else np.inf
            kth = self._kth()
            if min(b0, bh) > kth:
                # The candidates left, but those the cost model refused while pricing them.
                left = np.concatenate([members[g] for g in queue[nxt:].tolist()]
                                      + [np.array([k for *_, k in heap], dtype=np.int64)])
                rest = len(left) - int(np.isin(left, np.fromiter(self.rejected, dtype=np.int64)).sum())
                pruned[PruneRule.TIME_LOWER_BOUND.value] += rest
                break
            if b0 <= bh:  # level 0 (ties first)
                # The groups popped next anyway (bound <= the heap's), at least QUICK_BATCH[0]
                # of those not past the k-th best step, at most QUICK_BATCH[1].
                end = int(np.searchsorted(sorted_first, min(bh, kth), side="right"))
                under = int(np.searchsorted(sorted_first, kth, side="right"))
                end = max(end, min(nxt + QUICK_BATCH[0], under))
                end = min(max(end, nxt + 1), nxt + QUICK_BATCH[1], len(queue))
                self._quick([members[g] for g in queue[nxt:end].tolist()], heap)
                nxt = end
                continue
            b, level, i = heapq.heappop(heap)
            if i in self.rejected:
                continue
            try:
                if level == 1:
                    if np.isnan(ranks_bound[i]):
                        rows = members[group[i]]
                        ranks_bound[rows] = calc.refined_rows(table, rows)
                    bound[i] = max(b, float(ranks_bound[i]))
                elif level == 2:
                    if np.isnan(dp_bound[i]):
                        rows = members[group[i]]
                        rows = rows[table.zero[rows] == table.zero[i]]
                        try:
                            dp_bound[rows] = calc.refined_variants(table, rows)
                        except (SpecError, UnsupportedError):  # find out whether plan i is refused
                            dp_bound[i] = calc.refined(self.plan_of(i))
                    bound[i] = max(b, float(dp_bound[i]))
                elif level == 3:
                    memory[i] = max(memory[i], calc.refined_memory(self.plan_of(i)))
                    if memory[i] > limit:  # every split the simulator may pick has a rank over the limit
                        pruned[PruneRule.MEMORY_LOWER_BOUND.value] += 1
                        self.shortfall.see(float(memory[i] - limit), self.plan_of(i), exact=False)
                        continue
                    bound[i] = max(b, calc.replayed(self.plan_of(i)))
                else:
                    self._simulate(i)
                    continue
            except (SpecError, UnsupportedError) as exc:
                self._reject(members[group[i]] if level == 1 else i, exc)
                continue
            heapq.heappush(heap, (float(bound[i]), level + 1, i))

    def _quick(self, groups: list[np.ndarray], heap: list) -> None:
        """The first refinement (level 0 -> 1) of the candidates of ``groups``, in one batch
        (:meth:`BoundCalculator.quick_rows`), pushed on the heap; a group whose shape the
        cost model refuses is rejected whole."""
        self._tick(sum(len(rows) for rows in groups))
        for rows, values in zip(groups, self.calc.quick_rows(self.table, groups), strict=True):
            if isinstance(values, PlannerError):
                self._reject(rows, values)
                continue
            for r, value in zip(rows.tolist(), values.tolist(), strict=True):
                self.bound[r] = max(self.bound[r], value)
                heapq.heappush(heap, (float(self.bound[r]), 1, r))


@contextlib.contextmanager
def _collector_paused():
    """The cyclic garbage collector off while the search runs (back on after, if it was on).
    The search fills its caches with millions of small objects, which trigger the collector
    over a thousand times for nothing to free: ~0.7 s of DeepSeek-V3's full search and of
    GPT-3's (gc.callbacks timing, 2-core machine). Reference counting still frees the rest."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _groups(table, rows: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per candidate, its group among ``rows`` (same knobs, etp and rank order included,
    but recompute and ZeRO stage), and each group's rows."""
    group = np.full(len(table), -1, dtype=np.int64)
    if len(rows) == 0:
        return group, []
    # Mixed-radix code of the key columns' ranks: the lexicographic order of the columns.
    code = np.zeros(len(rows), dtype=np.int64)
    for c in ("tp", "cp", "pp", "vpp", "sched", "ep", "etp", "order", "dp", "mb", "sp"):
        values, rank = np.unique(getattr(table, c)[rows], return_inverse=True)
        code = code * len(values) + rank.reshape(-1)
    _, inverse = np.unique(code, return_inverse=True)
    inverse = inverse.reshape(-1)
    group[rows] = inverse
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return group, np.split(rows[order], bounds)


_EQUIVALENT = ("sequence_parallel_without_tp", "schedule_without_pp", "rank_order_same_layout")
"""Rules of planner.search.space that drop duplicates of another candidate, not invalid plans."""


def _rule_text(rule: str, model) -> str:
    """A structural rule of planner.search.space in words, for the infeasible message."""
    if rule == "plan.tp":
        kv = "" if model.mla is not None else f", the KV heads ({model.kv_heads})"
        return f"tp must divide the attention heads ({model.num_attention_heads}){kv} and the FFN size"
    if rule == "plan.ep" and model.moe is not None:
        return f"ep must divide the experts ({model.moe.num_experts}) and ep x etp must divide tp x cp x dp"
    if rule == "plan.micro_batch_size":
        return "dp x micro-batch must divide the global batch"
    if rule == "plan.pp":
        return f"pp x vpp must not exceed the layers ({model.num_layers}); DualPipe needs an even pp >= 2"
    return rule


def _infeasible_message(model, cluster, constraints: Constraints, counts: SearchCounts, shortfall: _Shortfall,
                        limit: float, dropped: list[str]) -> str:
    where = f"{model.name} on {cluster.num_gpus} x {cluster.gpu.name}"
    if not counts.enumerated:
        why = list(dropped)
        rules = sorted(((n, rule) for rule, n in counts.invalid_by_rule.items() if n and rule not in _EQUIVALENT),
                       reverse=True)
        if rules:
            why.append("the combinations break " + "; ".join(f"{_rule_text(rule, model)} ({n:,})"
                                                              for n, rule in rules[:3]))
        return (f"no structurally valid plan for {where} within the constraints"
                + (f": {'; '.join(why)}" if why else "") + "; relax the pinned knobs")
    best = shortfall.plan
    amount = f"{shortfall.bytes / GIB:,.1f} GiB" if shortfall.exact else f"at least {shortfall.bytes / GIB:,.1f} GiB"
    knobs = (f"tp={best.tp} pp={best.pp} ep={best.ep} etp={best.expert_tp} zero={int(best.zero_stage)} "
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
