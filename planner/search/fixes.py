"""What makes an out-of-memory plan fit on the same GPUs with the same layout: each single
change of a knob that trades step time for memory (recomputation, a smaller micro-batch, a
higher ZeRO stage, sequence parallelism, offloading activations to the host), simulated,
and those that fit ranked by step time. When none fits alone, all of them at once, which
either fits or tells how far the plan stays from fitting. ``planner simulate`` prints them
under an OOM report; the search (:mod:`planner.search.plan`) explores these knobs itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planner.costmodel.report import StepReport
from planner.costmodel.simulate import simulate
from planner.errors import PlannerError
from planner.presets import revalidate
from planner.specs import ClusterSpec, ModelSpec, Plan, Workload
from planner.specs.plan import RECOMPUTE_ORDER, Recompute, ZeroStage


@dataclass(frozen=True)
class MemoryFix:
    """One way to change a plan, its CLI flags and its simulation."""

    flags: str
    plan: Plan
    report: StepReport


@dataclass(frozen=True)
class MemoryFixes:
    """``fits``: the single changes that fit, fastest first. ``leanest``: every change at
    once, given only when no single one fits (it may still be out of memory)."""

    fits: tuple[MemoryFix, ...]
    leanest: MemoryFix | None


def _simulated(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload, flags: str,
               **changes: Any) -> MemoryFix | None:
    """The plan with ``changes`` and its simulation; None where the change breaks a rule."""
    try:
        variant = revalidate(plan, **changes)
        return MemoryFix(flags, variant, simulate(model, cluster, variant, workload))
    except PlannerError:
        return None


def _single_changes(plan: Plan) -> list[tuple[str, dict[str, Any]]]:
    """(flags, plan changes) of each knob that lowers memory from where ``plan`` sets it."""
    changes: list[tuple[str, dict[str, Any]]] = []
    for recompute in RECOMPUTE_ORDER[RECOMPUTE_ORDER.index(plan.recompute) + 1:]:
        changes.append((f"--recompute {recompute.value}",
                        {"recompute": recompute, "recompute_modules": None, "cpu_offloading_num_layers": 0}))
    for mb in sorted({plan.micro_batch_size // 2, 1} - {0, plan.micro_batch_size}, reverse=True):
        changes.append((f"--micro-batch {mb}", {"micro_batch_size": mb}))
    if plan.dp * plan.cp > 1 or plan.edp > 1:
        for zero in range(int(plan.zero_stage) + 1, int(ZeroStage.PARAMETERS) + 1):
            changes.append((f"--zero {zero}", {"zero_stage": zero}))
    if plan.tp > 1 and not plan.sequence_parallel:
        changes.append(("--sequence-parallel", {"sequence_parallel": True}))
    return changes


def _fewest_offloaded(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload) -> MemoryFix | None:
    """The fewest blocks whose activations, offloaded to the host, make ``plan`` fit
    (memory falls as blocks are added, so a bisection), or None. Megatron-Core offloads
    only with pp 1 and no recomputation (:class:`~planner.specs.plan.Plan`'s rule)."""
    if plan.pp != 1 or plan.recompute is not Recompute.NONE or plan.cpu_offloading_num_layers:
        return None

    def attempt(n: int) -> MemoryFix | None:
        return _simulated(model, cluster, plan, workload, f"--cpu-offloading-num-layers {n}",
                          cpu_offloading_num_layers=n)

    low, high = 0, model.num_layers - 1  # the last block's activations never leave (offload.py)
    best = attempt(high) if high >= 1 else None
    if best is None or not best.report.fits:
        return None
    while high - low > 1:
        mid = (low + high) // 2
        trial = attempt(mid)
        if trial is not None and trial.report.fits:
            high, best = mid, trial
        else:
            low = mid
    return best


def memory_fixes(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload,
                 report: StepReport | None = None) -> MemoryFixes:
    """What would make ``plan`` fit without changing tp, pp, cp, ep or dp (see the module
    docstring); ``report`` is the plan's simulation where the caller has it. Returns no
    fixes for a plan that fits already."""
    if (report or simulate(model, cluster, plan, workload)).fits:
        return MemoryFixes((), None)
    singles = [_simulated(model, cluster, plan, workload, flags, **changes)
               for flags, changes in _single_changes(plan)]
    singles.append(_fewest_offloaded(model, cluster, plan, workload))
    fits = sorted((f for f in singles if f is not None and f.report.fits), key=lambda f: f.report.step_time_s)
    if fits:
        return MemoryFixes(tuple(fits), None)
    # The knobs' last changes save the most (_single_changes orders each knob that way).
    leanest = {flags.split()[0]: (flags, changes) for flags, changes in _single_changes(plan)}
    if not leanest:
        return MemoryFixes((), None)
    lean_flags = " ".join(flags for flags, _ in leanest.values())
    lean_changes = {k: v for _, changes in leanest.values() for k, v in changes.items()}
    return MemoryFixes((), _simulated(model, cluster, plan, workload, lean_flags, **lean_changes))


__all__ = ["MemoryFix", "MemoryFixes", "memory_fixes"]
