"""Search over parallel plans: candidate space, lossless pruning, ranking.

``plan(model, cluster, workload, constraints)`` returns the fastest feasible plans
(:class:`SearchResult`); see :mod:`planner.search.plan`.
"""

from planner.search.fixes import MemoryFix, MemoryFixes, memory_fixes
from planner.search.plan import RankedPlan, SearchCounts, SearchResult, plan
from planner.search.prune import BoundCalculator, PlanBounds, PruneRule
from planner.search.space import Constraints, SpaceStats, candidates

__all__ = [
    "BoundCalculator", "Constraints", "MemoryFix", "MemoryFixes", "PlanBounds", "PruneRule", "RankedPlan",
    "SearchCounts", "SearchResult", "SpaceStats", "candidates", "memory_fixes", "plan",
]
