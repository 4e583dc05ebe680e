"""planner: auto-parallel planner and performance simulator for distributed LLM training.

Public API (more arrives with the cost model and the search):

- :func:`load_model`, :func:`load_gpu`, :func:`load_cluster`: specs from presets or YAML;
- :func:`describe_model`: parameter, FLOP and KV-cache accounting of a model;
- :func:`simulate`: step time, its breakdown and memory per GPU of one plan;
- :func:`sweep`: a what-if grid of simulations as a pandas DataFrame;
- :func:`plan`: the fastest feasible plans under :class:`Constraints` (lossless search);
- :func:`training_cost`: time, GPU-hours and US$ to train a token budget at one step time;
  :func:`budget_workload`: global batch and peak LR of a token budget (DeepSeek LLM's laws);
- the spec classes in :mod:`planner.specs`.
"""

from planner.budget import BudgetWorkload, TrainingCost, budget_workload, training_cost
from planner.costmodel.accounting import ModelAccount, describe_model
from planner.costmodel.report import StepReport
from planner.costmodel.simulate import simulate
from planner.errors import InfeasibleError, PlannerError, SpecError, UnsupportedError
from planner.presets import load_cluster, load_gpu, load_model, preset_names, revalidate
from planner.search import Constraints, SearchResult, plan
from planner.specs import ClusterSpec, GPUSpec, ModelSpec, Plan, Workload
from planner.sweep import SweepBase, sweep

__version__ = "0.1.0"

__all__ = [
    "BudgetWorkload",
    "ClusterSpec",
    "Constraints",
    "GPUSpec",
    "InfeasibleError",
    "ModelAccount",
    "ModelSpec",
    "Plan",
    "PlannerError",
    "SearchResult",
    "SpecError",
    "StepReport",
    "SweepBase",
    "TrainingCost",
    "UnsupportedError",
    "Workload",
    "__version__",
    "budget_workload",
    "describe_model",
    "load_cluster",
    "load_gpu",
    "load_model",
    "plan",
    "preset_names",
    "revalidate",
    "simulate",
    "sweep",
    "training_cost",
]
