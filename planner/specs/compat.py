"""Rules that tie a Plan to a model, a workload and a GPU count.

:func:`check_plan` raises :class:`~planner.errors.SpecError` for the first broken rule,
naming the plan field, its value and the rule; the simulator, the search and the
launcher all call it, so an invalid plan is rejected the same way everywhere.
"""

from __future__ import annotations

from planner.errors import SpecError
from planner.specs.model import ModelSpec
from planner.specs.plan import DUAL_SCHEDULES, PipelineP2P, PipelineSchedule, Plan, Workload


def _require(ok: bool, field: str, value: object, rule: str) -> None:
    if not ok:
        raise SpecError(f"plan.{field}", value, rule)


def check_plan(model: ModelSpec, workload: Workload, plan: Plan, num_gpus: int | None = None) -> None:
    """Raise SpecError unless ``plan`` can run ``model`` on ``workload`` (and ``num_gpus``)."""
    tp, heads = plan.tp, model.num_attention_heads
    _require(heads % tp == 0, "tp", tp, f"must divide num_attention_heads ({heads})")
    if model.mla is None:
        kv = model.kv_heads
        _require(kv % tp == 0, "tp", tp, f"must divide the key/value heads ({kv})")
    if model.num_dense_ffn_layers and model.ffn_hidden_size:
        ffn = model.ffn_hidden_size
        _require(ffn % tp == 0, "tp", tp, f"must divide ffn_hidden_size ({ffn})")
    if model.moe is None:
        _require(plan.ep == 1, "ep", plan.ep, f"must be 1: {model.name} has no experts")
    else:
        experts = model.moe.num_experts
        _require(experts % plan.ep == 0, "ep", plan.ep, f"must divide the routed experts ({experts})")
        size = model.moe.expert_ffn_hidden_size
        _require(size % plan.expert_tp == 0, "etp", plan.expert_tp, f"must divide expert_ffn_hidden_size ({size})")
        _require(
            plan.expert_fold_keeps_stages(),
            "rank_order",
            plan.rank_order,
            "the expert layers would see other pipeline stages than the dense layers; "
            "put pp after the dimensions the expert fold changes (e.g. last)",
        )
    chunks = plan.pp * plan.vpp
    _require(
        chunks <= model.num_layers,
        "pp",
        plan.pp,
        f"pp * vpp ({chunks}) must be <= num_layers ({model.num_layers})",
    )
    offload = plan.cpu_offloading_num_layers
    _require(offload < model.num_layers, "cpu_offloading_num_layers", offload,
             f"must be < num_layers ({model.num_layers}): the last block's activations stay on the GPU")
    if plan.pipeline_layers is not None:
        total = sum(plan.pipeline_layers)
        _require(
            total == model.num_layers, "pipeline_layers", list(plan.pipeline_layers),
            f"must add up to num_layers ({model.num_layers}); they add up to {total}",
        )
    if plan.cp > 1:
        seq = workload.seq_length
        # Causal load balancing splits the sequence into 2*cp chunks (Megatron-LM CP).
        _require(seq % (2 * plan.cp) == 0, "cp", plan.cp, f"2 * cp must divide seq_length ({seq})")
    per_step = plan.dp * plan.micro_batch_size
    batch = workload.global_batch_size
    _require(
        batch % per_step == 0,
        "micro_batch_size",
        plan.micro_batch_size,
        f"dp * micro_batch_size ({per_step}) must divide global_batch_size ({batch})",
    )
    if plan.pipeline_schedule in DUAL_SCHEDULES:
        micro = plan.num_microbatches(workload)
        # dualpipe.py / dualpipev.py step(): num_chunks even (DualPipe) and >= 2 * num_ranks.
        _require(
            micro >= 2 * plan.pp and (micro % 2 == 0 or plan.pipeline_schedule is PipelineSchedule.DUALPIPEV),
            "pipeline_schedule",
            plan.pipeline_schedule.value,
            f"needs an even number of micro-batches >= 2 * pp ({2 * plan.pp}); this plan has {micro}",
        )
    if workload.pipeline_p2p is PipelineP2P.DEEPSPEED and plan.pp > 1:
        _require(
            plan.pipeline_schedule is PipelineSchedule.ONE_F_ONE_B,
            "pipeline_schedule",
            plan.pipeline_schedule.value,
            "must be 1f1b under pipeline_p2p deepspeed (the only training schedule of DeepSpeed's PipelineEngine)",
        )
    if num_gpus is not None:
        _require(
            plan.world_size == num_gpus,
            "dp",
            plan.dp,
            f"tp * cp * dp * pp ({plan.world_size}) must equal the GPUs ({num_gpus})",
        )
