"""What :func:`planner.simulate` returns: the step time, where it goes, and memory per stage.

Every quantity is SI (seconds, bytes, FLOP/s) with the unit in its name. The report is a
pydantic model, so ``report.model_dump(mode="json")`` is the stable JSON of the CLI.

Time decomposition (DESIGN.md §4):

    step_time_s = pipeline makespan (forward-only + backward-input + weight-backward +
                  overlapped F&B + bubble, on the critical pipeline rank; it already holds
                  the exposed TP/CP/EP communication and PP p2p)
                + exposed DP/ZeRO communication + optimizer step

The pipeline phases follow ISCA'25 "Insights into DeepSeek-V3" Table 4 (1F, 1B, 1W, 1F1B,
bubble, opt), which partition the step of one rank.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Status(StrEnum):
    OK = "ok"
    OOM = "oom"
    """Some stage needs more memory than the GPU has; the breakdown says what."""


class Dim(StrEnum):
    """Parallel dimensions whose communication is reported separately."""

    TP = "tp"
    CP = "cp"
    EP = "ep"
    PP = "pp"
    DP = "dp"


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)


class MemoryBreakdown(_Out):
    """Bytes on one GPU of one pipeline rank at its peak."""

    weights_bytes: float
    """Parameters held (after TP/EP/PP sharding and ZeRO-3), in their training dtype."""
    gradients_bytes: float
    """Gradient buffers (sharded by ZeRO-2/3)."""
    optimizer_bytes: float
    """FP32 master weights and Adam moments (sharded by ZeRO-1+)."""
    activations_bytes: float
    """Activations kept for backward, times the micro-batches in flight."""
    workspace_bytes: float
    """Communication buffers, GEMM workspace, allocator fragmentation."""
    capacity_bytes: float
    """Usable HBM of the GPU."""
    inflight_microbatches: float = 0.0
    """Micro-batches whose activations the schedule keeps at the peak."""
    host_offload_bytes: float = 0.0
    """Activations offloaded to host memory (``Plan.cpu_offloading_num_layers``); not in
    :attr:`total_bytes`."""
    host_capacity_bytes: float | None = None
    """This GPU's share of its node's host memory, when offloading uses it."""

    @property
    def total_bytes(self) -> float:
        return (
            self.weights_bytes
            + self.gradients_bytes
            + self.optimizer_bytes
            + self.activations_bytes
            + self.workspace_bytes
        )

    @property
    def fits(self) -> bool:
        host = self.host_capacity_bytes is None or self.host_offload_bytes <= self.host_capacity_bytes
        return self.total_bytes <= self.capacity_bytes and host


class StageReport(_Out):
    """One pipeline rank: its layers, per-micro-batch compute and its memory."""

    rank: int
    pieces: dict[str, int]
    """Pieces held (embedding, dense, moe, head, mtp) summed over the rank's chunks."""
    forward_s: float
    """Forward time of one micro-batch through all of the rank's chunks (incl. exposed comm)."""
    backward_input_s: float
    """Backward-for-inputs time of one micro-batch (incl. recompute and exposed comm)."""
    backward_weight_s: float
    """Backward-for-weights time of one micro-batch."""
    memory: MemoryBreakdown


class TimeBreakdown(_Out):
    """Seconds of one optimizer step, by phase; the phases sum to the step time."""

    forward_s: float
    """Forward passes on the critical rank not overlapped with a backward (all of them
    outside DualPipe; its warm-up and ends under it)."""
    backward_input_s: float
    """Backward passes not overlapped with a forward: input-gradient passes (B, their weight
    gradients deferred) and full backward passes (BW, input and weight gradients in one
    pass, as 1F1B runs every backward and DualPipe its unsplit chunks; ISCA'25 Table 4's
    1B)."""
    backward_weight_s: float
    """Deferred weight-gradient passes (zero-bubble W) not overlapped with a forward."""
    overlapped_fb_s: float
    """Overlapped forward-and-backward pairs: DualPipe's, or the steady state of
    Megatron-Core's combined 1F1B (``Workload.ep_comm_overlap``); zero otherwise."""
    bubble_s: float
    """Idle time of the critical rank inside the pipeline makespan."""
    dp_exposed_s: float
    """Data-parallel / ZeRO communication not hidden behind backward."""
    optimizer_s: float
    """Optimizer step (memory bound)."""


PHASE_LABELS = {
    "forward_s": "forward only",
    "backward_input_s": "backward only",
    "backward_weight_s": "deferred weight gradients",
    "overlapped_fb_s": "steady F&B",
    "bubble_s": "pipeline bubble",
    "dp_exposed_s": "exposed DP/ZeRO comm",
    "optimizer_s": "optimizer",
}
"""Display name of each :class:`TimeBreakdown` field, in field order (CLI, explain, plots)."""


class StepReport(_Out):
    """Prediction for one training step of a plan."""

    status: Status
    step_time_s: float
    breakdown: TimeBreakdown
    comm_exposed_s: dict[Dim, float]
    """Communication on the critical path, per dimension, per step."""
    comm_hidden_s: dict[Dim, float]
    """Communication hidden behind compute, per dimension, per step."""
    compute_s: float
    """Busy compute time of the critical rank per step (forward, backward, recompute)."""
    recompute_s: float
    """Of ``compute_s``, the forward work repeated by activation recomputation."""
    tokens_per_s_per_gpu: float
    mfu_causal: float
    """Model FLOPs utilisation, attention counted as a causal lower triangle."""
    mfu_noncausal: float
    """Model FLOPs utilisation, full attention matrix (Megatron convention)."""
    mfu_peak_flops_per_s: float
    """The peak the MFUs are stated against (dense BF16 tensor core)."""
    stages: list[StageReport]
    memory_peak_bytes: float
    memory_capacity_bytes: float
    num_microbatches: int
    pipeline_layers: tuple[int, ...] = ()
    """Transformer blocks in each model chunk of the split simulated (model order), to be
    set as the plan's ``pipeline_layers`` so that a launch runs the same split."""
    messages: list[str] = Field(default_factory=list)
    """Assumptions and defaults taken, in words."""
    timeline: Any = Field(default=None, exclude=True, repr=False)
    """The simulated :class:`~planner.costmodel.schedules.PipelineTimeline` (not in the JSON;
    :func:`planner.report.trace.chrome_trace` exports it)."""

    @property
    def fits(self) -> bool:
        return self.status is Status.OK
