"""Search constraints and the search run behind ``planner plan`` and ``planner report``
(kept apart from :mod:`planner.cli.plan` so that importing it never goes through
``planner.cli.main``, which imports every command)."""

from __future__ import annotations

import typer

from planner.cli.inputs import parse_ints
from planner.cli.output import progress_bar
from planner.errors import SpecError
from planner.search import Constraints, SearchResult, plan
from planner.search.space import ORDER_DIMS, RANK_ORDERS
from planner.specs.plan import PipelineSchedule, Recompute, ZeroStage

_ints = parse_ints


def _enums(option: str, text: str | None, kind) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        known = ", ".join(str(k.value) for k in kind)
        raise SpecError(option, text, f"must be a comma-separated list of: {known}") from None


def _bools(option: str, text: str | None) -> tuple[bool, ...] | None:
    if text is None:
        return None
    table = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}
    try:
        return tuple(table[v.strip().lower()] for v in text.split(",") if v.strip())
    except KeyError:
        raise SpecError(option, text, "must be a comma-separated list of on/off") from None


def _orders(option: str, text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    values = tuple(v.strip().lower() for v in text.split(",") if v.strip())
    if not values or any(v not in RANK_ORDERS for v in values):
        raise SpecError(option, text, f"must be a comma-separated list of '-'-separated permutations of "
                                      f"{', '.join(ORDER_DIMS)} (e.g. {RANK_ORDERS[0]},{RANK_ORDERS[1]})")
    return values


def constraints_from_options(tp, pp, vpp, cp, ep, micro_batch, zero, sp, recompute, schedule,
                             max_memory_frac, etp=None, rank_order=None) -> Constraints:
    """Search constraints from the comma-separated knob options (None = the default range)."""
    zeros = _ints("--zero", zero, minimum=0)
    if zeros is not None and max(zeros) > 3:
        raise SpecError("--zero", zero, "ZeRO stages are 0-3")
    return Constraints(
        tp=_ints("--tp", tp), pp=_ints("--pp", pp), vpp=_ints("--vpp", vpp), cp=_ints("--cp", cp),
        ep=_ints("--ep", ep), etp=_ints("--etp", etp), rank_order=_orders("--rank-order", rank_order),
        micro_batch_size=_ints("--micro-batch", micro_batch),
        zero_stage=tuple(ZeroStage(z) for z in zeros) if zeros is not None else None,
        sequence_parallel=_bools("--sequence-parallel", sp), recompute=_enums("--recompute", recompute, Recompute),
        pipeline_schedule=_enums("--schedule", schedule, PipelineSchedule), max_memory_fraction=max_memory_frac,
    )


def etp_option():
    """``--etp``: the expert tensor-parallel degrees the search may use."""
    return typer.Option(
        None, "--etp", "--expert-tensor-parallel-size",
        help="Expert tensor-parallel degrees (MoE models; ignored for dense ones), comma-separated, each a "
             "divisor of tp, e.g. 1,8 \\[default: tp, Megatron's default].")


def rank_order_option():
    """``--rank-order``: the rank orders the search may use."""
    return typer.Option(
        None, "--rank-order", metavar="ORDER[,ORDER]",
        help="Rank orders (Megatron order, fastest dimension first), comma-separated, e.g. "
             "tp-cp-ep-dp-pp,tp-cp-ep-pp-dp (Megatron's default and its --use-tp-pp-dp-mapping layout) "
             "\\[default: tp-cp-ep-dp-pp].")


def run_search(model_spec, cluster_spec, workload, constraints, top_k: int, exhaustive: bool,
               show_progress: bool = True, workers: int | None = None) -> SearchResult:
    """``planner.search.plan`` with a transient progress bar on stderr: candidates decided
    out of the valid ones. Off when stderr is not a terminal or ``show_progress`` is False
    (machine-readable output)."""
    if top_k < 1:
        raise SpecError("--top-k", top_k, "must be >= 1")
    with progress_bar("searching plans", "candidates", show_progress) as update:
        return plan(model_spec, cluster_spec, workload, constraints, top_k=top_k, exhaustive=exhaustive,
                    progress=update, workers=workers)
