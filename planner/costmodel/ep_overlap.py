"""Megatron-Core's combined 1F1B (``Workload.ep_comm_overlap``): when it runs.

In the 1F1B steady state Megatron-Core merges the forward of micro-batch ``k + warm-up``
with the backward of micro-batch ``k`` into one schedule node and runs the expert-parallel
dispatch and combine of each under the computation of the other
(``--overlap-moe-expert-parallel-comm``; Megatron-Core user guide, "Combined 1F1B:
Expert-Parallel All-to-All Overlap"). The simulator prices such a node as DualPipe's F&B
pair (:func:`planner.costmodel.simulate.dualpipe_pair_s`) and the schedules merge the
steady-state operations (:func:`planner.costmodel.schedules.raw_programs` with
``ep_overlap``).

Megatron-Bridge's checks (``CommOverlapConfig`` validation): EP > 1, a MoE model, and with
PP > 1 a virtual pipeline (the interleaved schedule); full recomputation is not supported
("Avoid EP overlap when full activation recompute is enabled"). DualPipe already pairs its
chunks, so the flag changes nothing there.
"""

from __future__ import annotations

from planner.costmodel import compute as C
from planner.specs.hardware import GPUSpec
from planner.specs.model import ModelSpec
from planner.specs.plan import PipelineSchedule, Plan, Recompute, Workload

__all__ = ["applies", "comm_sm_tax", "merges"]


def applies(model: ModelSpec, plan: Plan, workload: Workload) -> bool:
    """Whether ``workload.ep_comm_overlap`` merges this plan's steady-state F and B."""
    return merges(workload.ep_comm_overlap and model.moe is not None, plan.ep, plan.recompute, plan.pp,
                  plan.pipeline_schedule)


def merges(enabled: bool, ep: int, recompute: Recompute, pp: int, schedule: PipelineSchedule) -> bool:
    """:func:`applies` on the fields it reads (``enabled``: the flag is on and the model is a
    MoE), for callers that hold plans as columns (the fast estimate, per distinct row)."""
    if not enabled or ep < 2 or recompute is Recompute.FULL:
        return False
    if pp == 1:
        return schedule is PipelineSchedule.ONE_F_ONE_B
    return schedule is PipelineSchedule.INTERLEAVED


def comm_sm_tax(gpu: GPUSpec) -> float:
    """Compute seconds lost per second of all-to-all run beside it in a combined-1F1B pair:
    the dispatch kernels hold ``ep_overlap_communication_sms`` (data/costmodel/compute.yaml)
    of the GPU's SMs while they run, and the compute beside them runs on the rest."""
    sms = C.compute_constants()["ep_overlap_communication_sms"]
    return sms / (gpu.num_sms - sms)
