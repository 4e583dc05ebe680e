"""``planner report``: search (or re-simulate a saved ``planner plan --format json``
result) and write the design-review folder of :mod:`planner.report.document`:
index.html (self-contained), report.md, trace.json and the PNG figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from planner.budget import check_budget
from planner.cli import options
from planner.cli.inputs import cost_of, resolve_workload
from planner.cli.main import app, reports_errors
from planner.cli.output import Format, write_result
from planner.cli.search_inputs import constraints_from_options, etp_option, rank_order_option, run_search
from planner.costmodel.simulate import simulate
from planner.errors import SpecError
from planner.presets import load_cluster, load_model, validate_spec
from planner.report.document import ReportInput, plan_label, write_report
from planner.specs import Plan, Workload

EXAMPLE = (
    "Example (DeepSeek-V3 on its cluster, a narrow space, a few seconds):\n\n"
    "planner report -m deepseek-v3 -c deepseek-v3-h800 --global-batch 15360 --precision fp8 --tp 1 --pp 16 "
    "--ep 64 --zero 1 --schedule dualpipe --recompute selective --micro-batch 1 --out report/\n\n"
    "From a saved search: planner plan ... --format json --out plan.json; "
    "planner report -m deepseek-v3 -c deepseek-v3-h800 --from plan.json --out report/"
)
_PLAN_FIELDS = ("tp", "pp", "vpp", "cp", "ep", "etp", "dp", "micro_batch_size", "zero_stage", "sequence_parallel",
                "recompute", "pipeline_schedule", "rank_order")


def _load_saved(path: Path) -> tuple[list[dict], dict | None]:
    """The plan records and the workload of a saved ``planner plan --format json`` result."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError("--from", str(path), f"cannot be read ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise SpecError("--from", str(path), f"is not JSON ({exc.msg}, line {exc.lineno})") from None
    plans = data.get("plans") if isinstance(data, dict) else None
    if not isinstance(plans, list) or not plans or not all(isinstance(p, dict) for p in plans):
        raise SpecError("--from", str(path), "must be the JSON of planner plan --format json (a non-empty 'plans' list)")
    return plans, data.get("workload")


@app.command("report", epilog=EXAMPLE)
@reports_errors
def report_command(
    model: str = options.model(),
    cluster: str = options.cluster(),
    gpus: int = options.gpus(),
    global_batch: int = options.global_batch(required=False, budget=True),
    seq_len: int = options.seq_len(),
    precision: str = options.precision(),
    adam_moments: str = options.adam_moments(),
    moe_dispatch: str = options.moe_dispatch(),
    grad_reduce: str = options.grad_reduce(),
    overlap_param_gather: bool = options.overlap_param_gather(),
    moe_dispatcher: str = options.moe_dispatcher(),
    moe_routing: str = options.moe_routing(),
    pipeline_p2p: str = options.pipeline_p2p(),
    cross_entropy: str = options.cross_entropy(),
    fp8_implementation: str = options.fp8_implementation(),
    tp_comm_overlap: bool = options.tp_comm_overlap(),
    ep_comm_overlap: bool = options.ep_comm_overlap(),
    tp: str = options.knob("tp", many=True),
    pp: str = options.knob("pp", many=True),
    vpp: str = options.knob("vpp", many=True),
    cp: str = options.knob("cp", many=True),
    ep: str = options.knob("ep", many=True),
    etp: str = etp_option(),
    rank_order: str = rank_order_option(),
    micro_batch: str = options.allowed_micro_batch(),
    zero: str = options.allowed_zero(),
    sp: str = options.allowed_sequence_parallel(),
    recompute: str = options.allowed_recompute(),
    schedule: str = options.allowed_schedule(),
    max_memory_frac: float = options.max_memory_fraction(),
    top_k: int = typer.Option(5, "--top-k", help="How many plans to rank and draw."),
    exhaustive: bool = options.exhaustive(),
    workers: int = options.workers(),
    saved: Path = typer.Option(None, "--from", metavar="RESULT.json",
                               help="Rank the plans of a saved 'planner plan --format json' result (re-simulated) "
                                    "instead of searching; its workload is used unless --global-batch is given."),
    tokens: float = options.tokens(budget=True),
    price: float = options.price(),
    what_if: bool = typer.Option(True, "--what-if/--no-what-if",
                                 help="Draw the scaling curve and the sweep heatmap (about 15 more simulations)."),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR", help="Folder for index.html, report.md, "
                             "trace.json and the PNGs (created)."),
    fmt: Format = options.fmt("the summary printed (files written, #1 and its cost)"),
) -> None:
    """Write a design-review report of the recommended plan: index.html (self-contained,
    figures embedded), report.md, trace.json (Chrome/Perfetto) and PNGs: step-time breakdown
    of the top-k (s), pipeline timeline, memory per stage (GiB), scaling curve (tokens/s/GPU),
    sweep heatmap; with the explanation of #1 vs #2, the cost (GPU-hours, US$) and the
    assumptions."""
    model_spec = load_model(model)
    cluster_spec = load_cluster(cluster, num_gpus=gpus)
    check_budget(tokens, price)
    console = Console(stderr=True)
    budget = None
    if saved is not None:
        records, saved_workload = _load_saved(saved)
        if global_batch is None and tokens is None and saved_workload is not None:
            workload = validate_spec(Workload, saved_workload, f"{saved}: workload")
        else:
            workload, budget = resolve_workload(model_spec, cluster_spec.num_gpus, global_batch, tokens, seq_len,
                                                precision, adam_moments, moe_dispatch, grad_reduce,
                                                overlap_param_gather,
                                                moe_dispatcher=moe_dispatcher, moe_routing=moe_routing,
                                                pipeline_p2p=pipeline_p2p, cross_entropy=cross_entropy,
                                                fp8_implementation=fp8_implementation,
                                                tp_comm_overlap=tp_comm_overlap, ep_comm_overlap=ep_comm_overlap)
        plans = [validate_spec(Plan, {k: r[k] for k in _PLAN_FIELDS if r.get(k) is not None}, f"{saved}: plan {i + 1}")
                 for i, r in enumerate(records[:top_k])]
        ranked = [(p, simulate(model_spec, cluster_spec, p, workload)) for p in plans]
        ranked.sort(key=lambda pr: (not pr[1].fits, pr[1].step_time_s))
        line, limit = f"the plans of {saved}, re-simulated", None
    else:
        workload, budget = resolve_workload(model_spec, cluster_spec.num_gpus, global_batch, tokens, seq_len,
                                            precision, adam_moments, moe_dispatch, grad_reduce,
                                            overlap_param_gather,
                                            moe_dispatcher=moe_dispatcher, moe_routing=moe_routing,
                                            pipeline_p2p=pipeline_p2p, cross_entropy=cross_entropy,
                                            fp8_implementation=fp8_implementation,
                                            tp_comm_overlap=tp_comm_overlap, ep_comm_overlap=ep_comm_overlap)
        constraints = constraints_from_options(tp, pp, vpp, cp, ep, micro_batch, zero, sp, recompute, schedule,
                                               max_memory_frac, etp, rank_order)
        result = run_search(model_spec, cluster_spec, workload, constraints, top_k, exhaustive, workers=workers)
        ranked = [(r.plan, r.report) for r in result.ranked]
        mode = "exhaustive" if result.exhaustive else "pruned"
        line, limit = f"search ({mode}): {result.counts.line()}", result.memory_limit_bytes
    data = ReportInput(model=model_spec, cluster=cluster_spec, workload=workload, ranked=ranked, tokens=tokens,
                       price_per_gpu_hour=price, budget=budget, search_line=line, memory_limit_bytes=limit)
    try:
        with console.status("writing the report") as status:
            files = write_report(data, out, scaling=what_if, heatmap=what_if,
                                 progress=lambda step: status.update(f"report: {step}"))
    except OSError as exc:
        raise SpecError("--out", str(out), f"cannot write the report there ({exc.strerror or exc})") from None
    best_plan, best = ranked[0]
    cost = cost_of(best, workload, cluster_spec.num_gpus, tokens, price)
    payload = {"html": str(files.html), "markdown": str(files.markdown), "trace": str(files.trace),
               "figures": {k: str(v) for k, v in files.figures.items()},
               "best": {"plan": best_plan.model_dump(mode="json"), "label": plan_label(best_plan),
                        "step_time_s": best.step_time_s, "tokens_per_s_per_gpu": best.tokens_per_s_per_gpu},
               "workload": workload.model_dump(mode="json"), "cost": cost.to_json()}
    if budget is not None:
        payload["budget"] = budget.to_json()

    def table(con: Console) -> None:
        con.print(f"#1 {plan_label(best_plan)}: step {best.step_time_s:.3f} s, "
                  f"{best.tokens_per_s_per_gpu:,.0f} tokens/s/GPU", markup=False)
        con.print(f"cost: {cost.line()}", markup=False)
        for path in (files.html, files.markdown, files.trace, *files.figures.values()):
            con.print(f"wrote {path}", markup=False)

    write_result(payload, fmt, None, table=table)
