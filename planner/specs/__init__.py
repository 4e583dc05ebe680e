"""Typed, validated, immutable inputs: the model, the cluster, the workload and the plan.

Every spec is a frozen pydantic model that rejects unknown fields; internal units are SI
and every field name carries its unit. Copy with changes through
:func:`planner.presets.revalidate` (or ``model_copy(update=...)`` when the change cannot
break a rule).
"""

from planner.specs.hardware import (
    ClusterSpec,
    Dtype,
    FabricKind,
    FabricSpec,
    GPUEfficiency,
    GPUSpec,
    HostSpec,
    NodeSpec,
    PCIeSpec,
    ScaleUpKind,
    ScaleUpSpec,
)
from planner.specs.model import (
    AttentionKind,
    FFNActivation,
    MLASpec,
    ModelSpec,
    MoESpec,
    Normalization,
    PositionEmbedding,
    RouterScore,
)
from planner.specs.plan import (
    AttentionKernel,
    CrossEntropyKernel,
    DEFAULT_RANK_ORDER,
    DispatchDtype,
    FP8Implementation,
    GradReduceDtype,
    MoEDispatcher,
    MoERouting,
    MomentDtype,
    PipelineP2P,
    PipelineSchedule,
    Plan,
    Precision,
    Recompute,
    RecomputeModule,
    Workload,
    ZeroStage,
)

__all__ = [
    "AttentionKernel",
    "CrossEntropyKernel",
    "DEFAULT_RANK_ORDER",
    "DispatchDtype",
    "FP8Implementation",
    "GradReduceDtype",
    "MoEDispatcher",
    "MoERouting",
    "MomentDtype",
    "PipelineP2P",
    "AttentionKind",
    "ClusterSpec",
    "Dtype",
    "FFNActivation",
    "FabricKind",
    "FabricSpec",
    "GPUEfficiency",
    "GPUSpec",
    "HostSpec",
    "MLASpec",
    "ModelSpec",
    "MoESpec",
    "NodeSpec",
    "Normalization",
    "PCIeSpec",
    "PipelineSchedule",
    "Plan",
    "PositionEmbedding",
    "Precision",
    "Recompute",
    "RecomputeModule",
    "RouterScore",
    "ScaleUpKind",
    "ScaleUpSpec",
    "Workload",
    "ZeroStage",
]
