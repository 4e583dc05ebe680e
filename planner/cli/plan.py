"""``planner plan``: search the parallel plans of a model on a cluster and rank those that fit.

Knob options take comma-separated lists that pin or bound the search (``--tp 1``,
``--pp 8,16``, ``--schedule dualpipe,1f1b``); a knob not given ranges over its default.
"""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from planner.cli.main import OutputFormat, app, reports_errors
from planner.errors import SpecError
from planner.cli.inputs import build_workload
from planner.presets import load_cluster, load_model
from planner.search import Constraints, SearchResult, plan
from planner.specs.plan import PipelineSchedule, Recompute, ZeroStage


def _ints(option: str, text: str | None, minimum: int = 1) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SpecError(option, text, "must be a comma-separated list of integers") from None
    if not values or min(values) < minimum:
        raise SpecError(option, text, f"must list integers >= {minimum}")
    return values


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


def print_result(result: SearchResult, console: Console) -> None:
    """The top-k table and the counts line."""
    table = Table(title="Recommended plans (fastest first)", title_justify="left")
    for col in ("#", "tp", "pp", "vpp", "cp", "ep", "dp", "mb", "zero", "sp", "recompute", "schedule",
                "step s", "tokens/s/GPU", "MFU", "memory GiB"):
        table.add_column(col, justify="left" if col in ("recompute", "schedule") else "right")
    for row in result.to_records():
        table.add_row(
            str(row["rank"]), str(row["tp"]), str(row["pp"]), str(row["vpp"]), str(row["cp"]), str(row["ep"]),
            str(row["dp"]), str(row["micro_batch_size"]), str(row["zero_stage"]),
            "on" if row["sequence_parallel"] else "off", row["recompute"], row["pipeline_schedule"],
            f"{row['step_time_s']:.4g}", f"{row['tokens_per_s_per_gpu']:,.0f}", f"{row['mfu_causal']:.1%}",
            f"{row['memory_peak_bytes'] / 2**30:,.1f} / {row['memory_capacity_bytes'] / 2**30:,.1f}",
        )
    console.print(table)
    if len(result.ranked) > 1:
        gap = result.ranked[1].report.step_time_s / result.best.report.step_time_s - 1
        console.print(f"runner-up is {gap:.1%} slower")
    mode = "exhaustive" if result.exhaustive else "pruned"
    console.print(f"search ({mode}): {result.counts.line()}; {result.elapsed_s:.2f} s, "
                  f"{result.candidates_per_s:,.0f} candidates/s")


@app.command("plan")
@reports_errors
def plan_command(
    model: str = typer.Option(..., "--model", "-m", help="Model preset name or YAML file."),
    cluster: str = typer.Option(..., "--cluster", "-c", help="Cluster preset name or YAML file."),
    gpus: int = typer.Option(None, "--gpus", help="Resize the cluster to this many GPUs (whole nodes)."),
    global_batch: int = typer.Option(..., "--global-batch", help="Sequences per optimizer step."),
    seq_len: int = typer.Option(None, "--seq-len", help="Tokens per sequence [default: the model's]."),
    precision: str = typer.Option("bf16", "--precision", help="GEMM precision: bf16, fp16 or fp8."),
    tp: str = typer.Option(None, "--tp", help="Allowed tensor-parallel degrees, e.g. 1,2,4."),
    pp: str = typer.Option(None, "--pp", help="Allowed pipeline stages, e.g. 8,16."),
    vpp: str = typer.Option(None, "--vpp", help="Allowed chunks per rank (interleaved) [2,4]."),
    cp: str = typer.Option(None, "--cp", help="Allowed context-parallel degrees [1,2,4,8]."),
    ep: str = typer.Option(None, "--ep", help="Allowed expert-parallel degrees."),
    micro_batch: str = typer.Option(None, "--micro-batch", help="Allowed micro-batch sizes [1,2,4,8]."),
    zero: str = typer.Option(None, "--zero", help="Allowed ZeRO stages, e.g. 1 or 0,1,2,3."),
    sp: str = typer.Option(None, "--sequence-parallel", help="on, off or on,off."),
    recompute: str = typer.Option(None, "--recompute", help="Allowed: none, selective, full."),
    schedule: str = typer.Option(None, "--schedule", help="Allowed: 1f1b, interleaved, zero-bubble, dualpipe, dualpipev."),
    max_memory_frac: float = typer.Option(1.0, "--max-memory-frac", help="Largest fraction of HBM a plan may use."),
    top_k: int = typer.Option(5, "--top-k", help="How many plans to list."),
    exhaustive: bool = typer.Option(False, "--exhaustive", help="Simulate every valid candidate (no pruning)."),
    fmt: OutputFormat = typer.Option(OutputFormat.TABLE, "--format", help="Output format."),
) -> None:
    """Recommend the fastest parallel plans that fit.

    Example: planner plan -m deepseek-v3 -c deepseek-v3-h800 --global-batch 15360
    --precision fp8 --tp 1 --pp 8,16 --schedule 1f1b,dualpipe
    """
    model_spec = load_model(model)
    cluster_spec = load_cluster(cluster, num_gpus=gpus)
    workload = build_workload(model_spec, global_batch, seq_len, precision)
    if top_k < 1:
        raise SpecError("--top-k", top_k, "must be >= 1")
    zeros = _ints("--zero", zero, minimum=0)
    if zeros is not None and max(zeros) > 3:
        raise SpecError("--zero", zero, "ZeRO stages are 0-3")
    constraints = Constraints(
        tp=_ints("--tp", tp), pp=_ints("--pp", pp), vpp=_ints("--vpp", vpp), cp=_ints("--cp", cp),
        ep=_ints("--ep", ep), micro_batch_size=_ints("--micro-batch", micro_batch),
        zero_stage=tuple(ZeroStage(z) for z in zeros) if zeros is not None else None,
        sequence_parallel=_bools("--sequence-parallel", sp), recompute=_enums("--recompute", recompute, Recompute),
        pipeline_schedule=_enums("--schedule", schedule, PipelineSchedule), max_memory_fraction=max_memory_frac,
    )
    # A transient progress bar on stderr (rich draws nothing when stderr is not a terminal).
    with Progress(
        TextColumn("simulating candidates"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:
        task = bar.add_task("search", total=None)
        result = plan(
            model_spec, cluster_spec, workload, constraints, top_k=top_k, exhaustive=exhaustive,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if fmt is OutputFormat.JSON:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print_result(result, Console(width=max(Console().width, 160)))
