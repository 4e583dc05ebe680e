"""``planner plan``: search the parallel plans of a model on a cluster and rank those that fit.

Knob options take comma-separated lists that pin or bound the search (``--tp 1``,
``--pp 8,16``, ``--schedule dualpipe,1f1b``); a knob not given ranges over its default.
"""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from planner.budget import check_budget
from planner.cli import options
from planner.cli.inputs import accuracy_json, accuracy_line, cost_of, resolve_workload
from planner.cli.main import app, reports_errors
from planner.cli.output import Format, write_result
from planner.cli.search_inputs import constraints_from_options, etp_option, rank_order_option, run_search
from planner.costmodel.report import StepReport
from planner.errors import SpecError
from planner.presets import load_cluster, load_model
from planner.search import SearchResult
from planner.search.explain import runner_up_words
from planner.specs import Plan
from planner.validation.accuracy import accuracy_for


def _with_split(plan: Plan, report: StepReport) -> Plan:
    """``plan`` with the uneven layer split it was simulated with, so that the emitted run
    builds the same stages (an even split is Megatron's default and stays implicit)."""
    if plan.pp == 1 or len(set(report.pipeline_layers)) <= 1:
        return plan
    return plan.model_copy(update={"pipeline_layers": report.pipeline_layers})


def print_result(result: SearchResult, console: Console) -> None:
    """The top-k table and the counts line."""
    table = Table(title="Recommended plans (fastest first)", title_justify="left")
    for col in ("#", "tp", "pp", "vpp", "cp", "ep", "etp", "dp", "mb", "zero", "sp", "recompute", "schedule", "order",
                "step s", "tokens/s/GPU", "MFU", "memory GiB"):
        table.add_column(col, justify="left" if col in ("recompute", "schedule", "order") else "right")
    for row in result.to_records():
        table.add_row(
            str(row["rank"]), str(row["tp"]), str(row["pp"]), str(row["vpp"]), str(row["cp"]), str(row["ep"]),
            str(row["etp"]), str(row["dp"]), str(row["micro_batch_size"]), str(row["zero_stage"]),
            "on" if row["sequence_parallel"] else "off", row["recompute"], row["pipeline_schedule"], row["rank_order"],
            f"{row['step_time_s']:.4g}", f"{row['tokens_per_s_per_gpu']:,.0f}", f"{row['mfu_causal']:.1%}",
            f"{row['memory_peak_bytes'] / 2**30:,.1f} / {row['memory_capacity_bytes'] / 2**30:,.1f}",
        )
    console.print(table)
    if len(result.ranked) > 1:
        words = runner_up_words(result.best.report.step_time_s, result.ranked[1].report.step_time_s)
        console.print(f"runner-up {words}")
    for r in result.ranked:
        if r.simulator_split_step_s is not None:
            layers = ",".join(str(n) for n in r.report.pipeline_layers)
            console.print(f"#{r.rank}: layers per chunk {layers} fitted by CP-SAT "
                          f"({r.simulator_split_step_s:.4g} s on the simulator's split)", markup=False)
    mode = "exhaustive" if result.exhaustive else "pruned"
    console.print(f"search ({mode}): {result.counts.line()}; {result.elapsed_s:.2f} s, "
                  f"{result.candidates_per_s:,.0f} candidates/s")


EXAMPLE = (
    "Example (DeepSeek-V3 on its 2048-H800 cluster, a bounded space, cost of 14.8T tokens):\n\n"
    "planner plan -m deepseek-v3 -c deepseek-v3-h800 --global-batch 15360 --precision fp8 "
    "--tp 1 --pp 8,16 --schedule 1f1b,dualpipe --tokens 14.8e12\n\n"
    "From a token budget instead of a batch (DeepSeek LLM's B_opt and peak-LR laws): "
    "planner plan -m deepseek-v3 -c deepseek-v3-h800 --tokens 2e12 --precision fp8 --tp 1 --pp 16 --ep 64"
)


@app.command("plan", epilog=EXAMPLE)
@reports_errors
def plan_command(
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
    top_k: int = typer.Option(5, "--top-k", help="How many plans to list."),
    exhaustive: bool = options.exhaustive(),
    workers: int = options.workers(),
    tokens: float = options.tokens(budget=True),
    price: float = options.price(),
    emit: Path = typer.Option(
        None, "--emit", metavar="DIR",
        help="Also write the recommended plan's launch files to DIR (torchrun.sh, run_config.yaml, "
             "megatron_args.txt, as planner launch --emit), --train-iters = steps of the token budget."),
    fmt: Format = options.fmt("the ranked plans"),
    out: Path = options.out("the ranked plans"),
) -> None:
    """Recommend the fastest parallel plans that fit: step time (s), tokens/s/GPU, MFU,
    memory (GiB), and the cost of a token budget (GPU-hours, US$) of the best."""
    model_spec = load_model(model)
    cluster_spec = load_cluster(cluster, num_gpus=gpus)
    check_budget(tokens, price)
    workload, budget = resolve_workload(model_spec, cluster_spec.num_gpus, global_batch, tokens, seq_len, precision,
                                        adam_moments, moe_dispatch, grad_reduce,
                                        overlap_param_gather,
                                        moe_dispatcher=moe_dispatcher, moe_routing=moe_routing,
                                        pipeline_p2p=pipeline_p2p, cross_entropy=cross_entropy,
                                        fp8_implementation=fp8_implementation,
                                        tp_comm_overlap=tp_comm_overlap, ep_comm_overlap=ep_comm_overlap)
    constraints = constraints_from_options(tp, pp, vpp, cp, ep, micro_batch, zero, sp, recompute, schedule,
                                           max_memory_frac, etp, rank_order)
    result = run_search(model_spec, cluster_spec, workload, constraints, top_k, exhaustive,
                        show_progress=fmt is Format.TABLE, workers=workers)
    costs = [cost_of(r.report, workload, cluster_spec.num_gpus, tokens, price) for r in result.ranked]
    emitted = []
    if emit is not None:
        from planner.launch.emit import write_emit

        try:
            emitted = write_emit(emit, model, model_spec, _with_split(result.best.plan, result.best.report), workload,
                                 steps=math.ceil(costs[0].steps), backend="nccl", nnodes=cluster_spec.num_nodes)
        except OSError as exc:
            raise SpecError("--emit", str(emit), f"cannot write there: {exc.strerror or exc}") from None
    data = result.to_json()
    data["workload"] = workload.model_dump(mode="json")
    data["cost"] = costs[0].to_json()
    accuracy = accuracy_for(cluster_spec, model_spec, workload)
    data["accuracy"] = accuracy_json(accuracy)
    if budget is not None:
        data["budget"] = budget.to_json()
    if emitted:
        data["emitted_files"] = [str(p) for p in emitted]
    rows = [{**rec, "gpu_hours": c.gpu_hours, "cost_usd": c.cost_usd, "wall_time_days": c.wall_time_days}
            for rec, c in zip(result.to_records(), costs)]

    def table(console: Console) -> None:
        if budget is not None:
            console.print(f"workload: {budget.line()}", markup=False)
        print_result(result, console)
        console.print(f"cost of #1: {costs[0].line()}", markup=False)
        console.print(accuracy_line(accuracy, cluster_spec), markup=False)
        for path in emitted:
            console.print(f"wrote {path}", markup=False)

    write_result(data, fmt, out, table=table, rows=rows)
