"""The candidate space of the search: every structurally valid Plan for a model, a GPU count
and a workload, within the user's :class:`Constraints`.

Knobs enumerated: tp, cp, pp (dp = GPUs / (tp * cp * pp)), the pipeline schedule with vpp
(interleaved only), ep (MoE models), micro-batch size, ZeRO stage, sequence parallelism and
recomputation. ``etp`` stays at Megatron's default (= tp) and the rank order at the default;
the layer-to-stage split is the simulator's (balanced) choice, not a knob.

Validity is decided by the same rules as the simulator: :class:`~planner.specs.plan.Plan`'s
validators, :func:`~planner.specs.compat.check_plan` and the schedule's micro-batch rules
(:func:`~planner.costmodel.schedules.check_schedule`), and a chunk per pipeline stage
needs a block (DualPipeV has 2 * pp chunks). Every rejection is counted under the
rule's name (the plan field it names). Two *equivalence* rules drop exact duplicates before
validation, also counted: sequence parallelism with tp == 1 (no effect: nothing to split)
and a schedule other than 1F1B with pp == 1 (no pipeline to schedule).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydantic import ValidationError

from planner.costmodel.partition import num_chunks
from planner.costmodel.schedules import check_schedule
from planner.errors import SpecError
from planner.specs.compat import check_plan
from planner.specs.model import ModelSpec
from planner.specs.plan import PipelineSchedule, Plan, Recompute, Workload, ZeroStage

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


def candidates(
    model: ModelSpec, num_gpus: int, workload: Workload, constraints: Constraints | None = None,
    stats: SpaceStats | None = None,
) -> Iterator[Plan]:
    """Yield every structurally valid plan, in a fixed (deterministic) order.

    ``stats`` (optional) is filled with the counts as the generator runs.
    """
    c = constraints or Constraints()
    stats = stats if stats is not None else SpaceStats()
    divisors = _divisors(num_gpus)
    tps = [t for t in _allowed(c.tp, divisors) if t in divisors]
    cps = [x for x in _allowed(c.cp, DEFAULT_CPS) if x in divisors]
    pps = [p for p in _allowed(c.pp, divisors) if p in divisors]
    eps = _allowed(c.ep, _divisors(model.moe.num_experts) if model.moe else (1,))
    schedules = _allowed(c.pipeline_schedule, PipelineSchedule)
    vpps = _allowed(c.vpp, DEFAULT_VPPS)
    zeros = _allowed(c.zero_stage, ZeroStage)
    sps = _allowed(c.sequence_parallel, (False, True))
    recomputes = _allowed(c.recompute, Recompute)
    for tp, cp, pp in itertools.product(tps, cps, pps):
        if num_gpus % (tp * cp * pp):
            continue  # not a factorisation of the GPU count: never a candidate
        dp = num_gpus // (tp * cp * pp)
        per_replica = workload.global_batch_size // dp if workload.global_batch_size % dp == 0 else 0
        mbs = _allowed(c.micro_batch_size, [m for m in DEFAULT_MICRO_BATCH_SIZES if m <= max(per_replica, 1)])
        for schedule in schedules:
            for vpp in (vpps if schedule is PipelineSchedule.INTERLEAVED else [1]):
                for ep, mb, zero, sp, rec in itertools.product(eps, mbs, zeros, sps, recomputes):
                    stats.generated += 1
                    if sp and tp == 1:
                        stats.rejected["sequence_parallel_without_tp"] += 1
                        continue
                    if pp == 1 and schedule is not PipelineSchedule.ONE_F_ONE_B:
                        stats.rejected["schedule_without_pp"] += 1
                        continue
                    plan = _validate(model, workload, num_gpus, stats, tp=tp, cp=cp, pp=pp, dp=dp, vpp=vpp,
                                     ep=ep, micro_batch_size=mb, zero_stage=zero, sequence_parallel=sp,
                                     recompute=rec, pipeline_schedule=schedule)
                    if plan is not None:
                        yield plan


def _validate(model: ModelSpec, workload: Workload, num_gpus: int, stats: SpaceStats, **knobs) -> Plan | None:
    """The Plan, or None after counting the rule it breaks."""
    try:
        plan = Plan(**knobs)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = (error.get("ctx") or {}).get("field") or ".".join(map(str, error.get("loc") or ())) or "?"
        stats.rejected[f"plan.{name}"] += 1
        return None
    try:
        check_plan(model, workload, plan, num_gpus)
        check_schedule(plan.pipeline_schedule, plan.num_microbatches(workload), plan.pp, plan.vpp)
        if num_chunks(plan) > model.num_layers:  # DualPipeV: 2 * pp chunks of >= 1 block
            raise SpecError("partition.num_chunks", num_chunks(plan), f"must be <= num_layers ({model.num_layers})")
    except SpecError as exc:
        name = exc.field if "." in exc.field else f"schedule.{exc.field}"
        stats.rejected[name] += 1
        return None
    return plan

