"""Specs from command-line options, shared by the commands (no typer app here, so any
command module can import it without a cycle through ``planner.cli.main``)."""

from __future__ import annotations

from pathlib import Path

from planner.budget import BudgetWorkload, TrainingCost, budget_workload, training_cost
from planner.costmodel.accounting import describe_model
from planner.errors import SpecError
from planner.presets import read_plan_fields, validate_spec
from planner.specs import ClusterSpec, ModelSpec, Plan, Workload
from planner.sweep import whole_dp
from planner.validation.accuracy import Accuracy


def parse_ints(option: str, text: str | None, minimum: int = 1) -> tuple[int, ...] | None:
    """``"8,16"`` -> (8, 16); None stays None; anything else is a SpecError naming ``option``."""
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SpecError(option, text, "must be a comma-separated list of integers") from None
    if not values or min(values) < minimum:
        raise SpecError(option, text, f"must list integers >= {minimum}")
    return values


def build_plan(plan_file: Path | None, gpus: int, knobs: dict) -> Plan:
    """A Plan from an optional YAML file plus CLI knobs (None = not given)."""
    data = _short_names(read_plan_fields(str(plan_file))) if plan_file else {}
    data.update({k: v for k, v in knobs.items() if v is not None})
    if "dp" not in data:
        data["dp"] = whole_dp(gpus, data.get("tp", 1), data.get("cp", 1), data.get("pp", 1),
                              hint="; change --tp, --cp or --pp (or --gpus)")
    return validate_spec(Plan, data, str(plan_file) if plan_file else "plan")


def build_workload(model: ModelSpec, global_batch: int, seq_len: int | None, precision: str,
                   adam_moments: str = "fp32", moe_dispatch: str = "bf16", grad_reduce: str = "fp32",
                   overlap_param_gather: bool = True, moe_dispatcher: str = "deepep",
                   moe_routing: str = "balanced", pipeline_p2p: str = "megatron",
                   cross_entropy: str = "unfused", tp_comm_overlap: bool = False,
                   fp8_implementation: str = "te", ep_comm_overlap: bool = False) -> Workload:
    """The Workload of the CLI options; the sequence length defaults to the model's."""
    return validate_spec(
        Workload,
        {"global_batch_size": global_batch, "seq_length": seq_len or model.default_seq_length,
         "precision": precision, "adam_moment_dtype": adam_moments, "moe_dispatch_dtype": moe_dispatch,
         "grad_reduce_dtype": grad_reduce, "overlap_param_gather": overlap_param_gather,
         "moe_dispatcher": moe_dispatcher, "moe_routing": moe_routing, "pipeline_p2p": pipeline_p2p,
         "cross_entropy": cross_entropy, "tp_comm_overlap": tp_comm_overlap,
         "fp8_implementation": fp8_implementation, "ep_comm_overlap": ep_comm_overlap},
        "workload",
    )


def _short_names(fields: dict) -> dict:
    """Megatron long names -> the Plan's short field names (tp, pp, ...)."""
    aliases = {}
    for name, info in Plan.model_fields.items():
        choices = getattr(info.validation_alias, "choices", None) or []
        for alias in choices:
            aliases[alias] = name
    return {aliases.get(key, key): value for key, value in fields.items()}


def resolve_workload(model: ModelSpec, num_gpus: int, global_batch: int | None, tokens: float | None,
                     seq_len: int | None, precision: str, adam_moments: str = "fp32",
                     moe_dispatch: str = "bf16", grad_reduce: str = "fp32",
                     overlap_param_gather: bool = True,
                     moe_dispatcher: str = "deepep",
                     moe_routing: str = "balanced",
                     pipeline_p2p: str = "megatron",
                     cross_entropy: str = "unfused",
                     tp_comm_overlap: bool = False,
                     fp8_implementation: str = "te",
                     ep_comm_overlap: bool = False) -> tuple[Workload, BudgetWorkload | None]:
    """The Workload of ``--global-batch``, or, without it, of the token budget ``--tokens``
    (DeepSeek LLM's B_opt law, :func:`planner.budget.budget_workload`); the second value is
    that derivation (None when the batch was given)."""
    if global_batch is None:
        if tokens is None:
            raise SpecError("--global-batch", None, "give --global-batch (sequences per step) or --tokens "
                            "(a token budget; the batch then follows DeepSeek LLM's B_opt law)")
        seq = seq_len or model.default_seq_length
        m = describe_model(model, seq).flops_per_token_nonembedding
        budget = budget_workload(m, tokens, seq, num_gpus)
        return build_workload(model, budget.global_batch_size, seq, precision, adam_moments, moe_dispatch,
                              grad_reduce, overlap_param_gather, moe_dispatcher, moe_routing, pipeline_p2p,
                              cross_entropy, tp_comm_overlap, fp8_implementation, ep_comm_overlap), budget
    return build_workload(model, global_batch, seq_len, precision, adam_moments, moe_dispatch, grad_reduce,
                          overlap_param_gather, moe_dispatcher, moe_routing, pipeline_p2p, cross_entropy,
                          tp_comm_overlap, fp8_implementation, ep_comm_overlap), None


def cost_of(report, workload: Workload, num_gpus: int, tokens: float | None, price: float | None) -> TrainingCost:
    """The training cost of ``tokens`` (default 1e12) at one simulated step."""
    return training_cost(report.step_time_s, workload.tokens_per_step, num_gpus, tokens, price)


def accuracy_line(accuracy: Accuracy | None, cluster: ClusterSpec) -> str:
    """How close the model came to published runs like this one (:mod:`planner.validation.accuracy`)."""
    if accuracy is None:
        return (f"accuracy: no published run on {cluster.gpu.name} in the validation set; "
                "this GPU's prediction is not validated")
    return f"accuracy: {accuracy.line()}"


def accuracy_json(accuracy: Accuracy | None) -> dict | None:
    return None if accuracy is None else {"group": accuracy.group, "runs": accuracy.runs,
                                          "median_ape": accuracy.median_ape, "within_15pct": accuracy.within}
