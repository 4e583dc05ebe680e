"""``planner explain``: why one plan is faster than another, term by term.

Both plans come from YAML files (Megatron names or short forms, as ``planner simulate
--plan``); ``dp`` defaults to GPUs / (tp * cp * pp).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from planner.cli import options
from planner.cli.main import app, reports_errors
from planner.cli.output import Format, write_result
from planner.cli.inputs import build_plan, build_workload
from planner.costmodel.simulate import simulate
from planner.presets import load_cluster, load_model
from planner.search.explain import GIB, Explanation, Sensitivity, explain, sensitivity

def _share(delta: float, total: float) -> str:
    return f"{delta / total:+.1%}" if total else "-"


def print_explanation(e: Explanation, console: Console, files: tuple[str, str] | None = None) -> None:
    a, b = e.labels
    if files:
        console.print(f"{a} = {files[0]}   {b} = {files[1]}")
    console.print(f"[bold]step time {a} {e.a_step_s:.3f} s, {b} {e.b_step_s:.3f} s, "
                  f"\u0394 {e.delta_s:+.3f} s ({e.relative_delta:+.1%})[/bold]")
    for title, terms, with_notes in (("Step time by term (critical rank), sorted by |\u0394|", e.dominant, True),
                                     ("Pipeline phases", e.phases, False)):
        table = Table(title=title, title_justify="left")
        table.add_column("term")
        for col in (f"{a} s", f"{b} s", "\u0394 s", "share of \u0394"):
            table.add_column(col, justify="right")
        if with_notes:
            table.add_column("driven by")
        for t in terms:
            row = [t.label, f"{t.a_s:.3f}", f"{t.b_s:.3f}", f"{t.delta_s:+.3f}", _share(t.delta_s, e.delta_s)]
            table.add_row(*row, *([t.note] if with_notes else []))
        table.add_row("step", f"{e.a_step_s:.3f}", f"{e.b_step_s:.3f}", f"{e.delta_s:+.3f}",
                      "100.0%" if e.delta_s else "-", *([""] if with_notes else []), style="bold")
        console.print(table)
    m = e.memory
    mem = Table(title="Memory per GPU (GiB)", title_justify="left")
    for col in ("", a, b, "\u0394"):
        mem.add_column(col, justify="right" if col else "left")
    mem.add_row("peak", f"{m.a_peak_bytes / GIB:,.1f}", f"{m.b_peak_bytes / GIB:,.1f}",
                f"{(m.b_peak_bytes - m.a_peak_bytes) / GIB:+,.1f}")
    mem.add_row("headroom", f"{m.a_headroom_bytes / GIB:,.1f}", f"{m.b_headroom_bytes / GIB:,.1f}",
                f"{(m.b_headroom_bytes - m.a_headroom_bytes) / GIB:+,.1f}")
    console.print(mem)
    console.print(e.verdict)


def print_sensitivity(s: Sensitivity, labels: tuple[str, str], console: Console) -> None:
    table = Table(title="Sensitivity: step time / unperturbed step time", title_justify="left")
    table.add_column("scenario")
    for lab in labels[: len(s.plans)]:
        table.add_column(lab, justify="right")
    table.add_column("faster", justify="left")
    table.add_column("ranking changes", justify="left")

    def cell(o) -> str:
        if o.step_time_s is None:
            return "invalid"
        text = f"{o.ratio:.3f} ({o.step_time_s:.3f} s)" if o.ratio else f"{o.step_time_s:.3f} s"
        return text if o.fits else text + " OOM"

    for sc in (s.baseline, *s.scenarios):
        changed = "-" if sc.ranking_changed is None else ("yes" if sc.ranking_changed else "no")
        table.add_row(sc.description, *(cell(o) for o in sc.outcomes), labels[sc.ranking[0]], changed)
    console.print(table)
    for sc in s.scenarios:
        for lab, o in zip(labels, sc.outcomes):
            if o.error:
                console.print(f"note: {sc.description}, {lab}: {o.error}")


@app.command("explain", epilog="Example: planner explain -m llama3-8b -c dgx-h100 --gpus 16 --global-batch 128 "
                                "--plan-a tp8.yaml --plan-b tp1.yaml --sensitivity")
@reports_errors
def explain_command(
    model: str = options.model(),
    cluster: str = options.cluster(),
    gpus: int = options.gpus(),
    global_batch: int = options.global_batch(),
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
    plan_a: Path = typer.Option(..., "--plan-a", help="Plan A YAML (Megatron names or tp/pp/...)."),
    plan_b: Path = typer.Option(..., "--plan-b", help="Plan B YAML (Megatron names or tp/pp/...)."),
    with_sensitivity: bool = typer.Option(
        False, "--sensitivity", help="Also re-simulate both plans at inter-node bandwidth x0.5 and x1.5, "
                                     "GPUs x2 (dp x2, same global batch) and micro-batch x2."),
    fmt: Format = options.fmt("the explanation (csv: one row per term)"),
    out: Path = options.out("the explanation"),
) -> None:
    """Explain the step-time difference (s) of two plans term by term (B minus A), with
    memory per GPU (GiB) and, optionally, the sensitivity of the ranking."""
    model_spec = load_model(model)
    cluster_spec = load_cluster(cluster, num_gpus=gpus)
    workload = build_workload(model_spec, global_batch, seq_len, precision, adam_moments, moe_dispatch,
                              grad_reduce, overlap_param_gather,
                              moe_dispatcher=moe_dispatcher, moe_routing=moe_routing,
                              pipeline_p2p=pipeline_p2p, cross_entropy=cross_entropy,
                              fp8_implementation=fp8_implementation,
                              tp_comm_overlap=tp_comm_overlap, ep_comm_overlap=ep_comm_overlap)
    pa = build_plan(plan_a, cluster_spec.num_gpus, {})
    pb = build_plan(plan_b, cluster_spec.num_gpus, {})
    ra = simulate(model_spec, cluster_spec, pa, workload)
    rb = simulate(model_spec, cluster_spec, pb, workload)
    labels = ("A", "B")
    result = explain(ra, rb, labels, plans=(pa, pb), cluster=cluster_spec)
    sens = sensitivity(model_spec, cluster_spec, pa, workload, plans=[pb]) if with_sensitivity else None
    data = result.to_json()
    data["plan_files"] = {"A": str(plan_a), "B": str(plan_b)}
    if sens is not None:
        data["sensitivity"] = sens.to_json()

    def table(console: Console) -> None:
        print_explanation(result, console, files=(str(plan_a), str(plan_b)))
        if sens is not None:
            print_sensitivity(sens, labels, console)

    write_result(data, fmt, out, table=table, rows=[t.to_json(result.delta_s) for t in result.terms])
