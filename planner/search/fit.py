"""The search's last step: each recommended pipeline plan re-split by CP-SAT.

The best-first search ranks plans on the simulator's own layer splits (even, or balanced by
forward time or by block count, :func:`~planner.costmodel.simulate.simulate`). Layers differ
in cost and memory (dense and MoE blocks, the embedding on the first chunk, the head and MTP
on the last), so a split chosen for the plan can do better: for each of the ``top_k`` plans
with pp > 1, :func:`~planner.costmodel.partition_solver.fit_pipeline_layers` finds the
contiguous split that minimises the busiest rank's work per micro-batch with every rank
within the memory limit (OR-Tools CP-SAT), the simulator prices it, and the plan takes it
(``Plan.pipeline_layers``) when its simulated step is shorter and it still fits; the list is
then ranked again.

What the search proves is unchanged: the ranking before this step is exactly the exhaustive
one over the simulator's splits (:mod:`planner.search.plan`). The fitted split only ever
shortens a recommended plan's step; a plan outside the ``top_k`` whose fitted split would
beat them is not looked for (no lower bound holds for every split).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from planner.costmodel.partition_solver import fit_pipeline_layers
from planner.costmodel.report import StepReport
from planner.costmodel.simulate import simulate
from planner.errors import PlannerError
from planner.specs.hardware import ClusterSpec
from planner.specs.model import ModelSpec
from planner.specs.plan import Plan, Workload


@dataclass(frozen=True)
class Refit:
    """One plan after the CP-SAT step: ``fitted`` when its split was replaced."""

    plan: Plan
    report: StepReport
    fitted: bool


def refit_splits(model: ModelSpec, cluster: ClusterSpec, workload: Workload,
                 entries: Sequence[tuple[Plan, StepReport]], limit_bytes: float) -> list[Refit]:
    """Each (plan, report) in ranked order, with the fitted split where it is faster and fits
    within ``limit_bytes``; the result sorted by step time (stable: ties keep their order)."""
    out = [refit_split(model, cluster, workload, plan, report, limit_bytes) for plan, report in entries]
    return sorted(out, key=lambda r: r.report.step_time_s)


def refit_split(model: ModelSpec, cluster: ClusterSpec, workload: Workload, plan: Plan, report: StepReport,
                limit_bytes: float) -> Refit:
    """``plan`` (simulated as ``report``) with CP-SAT's split if that is faster and fits."""
    if plan.pp == 1 or plan.pipeline_layers is not None:
        return Refit(plan, report, False)
    try:
        fit = fit_pipeline_layers(model, cluster, plan, workload, capacity_bytes=limit_bytes)
        if fit is None:
            return Refit(plan, report, False)
        layers = tuple(chunk.num_blocks for chunk in fit.partition.chunks)
        if layers == tuple(report.pipeline_layers):
            return Refit(plan, report, False)
        fitted = plan.model_copy(update={"pipeline_layers": layers})
        new = simulate(model, cluster, fitted, workload)
    except PlannerError:  # a split the cost model refuses: keep the simulator's
        return Refit(plan, report, False)
    if new.fits and new.memory_peak_bytes <= limit_bytes and new.step_time_s < report.step_time_s:
        return Refit(fitted, new, True)
    return Refit(plan, report, False)
