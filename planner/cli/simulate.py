"""``planner simulate``: predict one training step of a plan and explain where the time goes.

The plan comes from ``--plan PLAN.yaml`` (Megatron names or short forms) and/or the knob
options, which override the file; ``--dp`` defaults to GPUs / (tp * cp * pp).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from planner.cli.main import OutputFormat, app, reports_errors
from planner.costmodel.report import StepReport
from planner.costmodel.simulate import simulate
from planner.errors import SpecError
from planner.cli.inputs import build_plan, build_workload
from planner.presets import load_cluster, load_model
from planner.report.trace import write_chrome_trace


def _gib(x: float) -> str:
    return f"{x / 2**30:,.1f}"


def print_report(report: StepReport, console: Console) -> None:
    b = report.breakdown
    console.print(
        f"[bold]step time {report.step_time_s:.3f} s[/bold]  status {report.status.value}  "
        f"{report.tokens_per_s_per_gpu:,.0f} tokens/s/GPU  MFU {report.mfu_causal:.1%} causal / "
        f"{report.mfu_noncausal:.1%} non-causal (of {report.mfu_peak_flops_per_s / 1e12:,.0f} TFLOP/s)"
    )
    table = Table(title="Step time by phase (critical pipeline rank)", title_justify="left")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    rows = [
        ("forward only", b.forward_s), ("backward (inputs) only", b.backward_input_s),
        ("backward (weights) only", b.backward_weight_s), ("steady F&B", b.overlapped_fb_s),
        ("pipeline bubble", b.bubble_s), ("exposed DP/ZeRO comm", b.dp_exposed_s),
        ("optimizer", b.optimizer_s),
    ]
    for name, value in rows:
        table.add_row(name, f"{value:.3f}", f"{value / report.step_time_s:.1%}")
    console.print(table)
    comm = Table(title="Communication per step (critical rank)", title_justify="left")
    comm.add_column("dim")
    comm.add_column("exposed s", justify="right")
    comm.add_column("hidden s", justify="right")
    for dim, value in report.comm_exposed_s.items():
        comm.add_row(dim.value, f"{value:.3f}", f"{report.comm_hidden_s[dim]:.3f}")
    console.print(comm)
    mem = Table(title="Memory per GPU by pipeline rank (GiB)", title_justify="left")
    for col in ("rank", "pieces", "weights", "grads", "optimizer", "activations", "workspace", "total", "capacity"):
        mem.add_column(col, justify="right" if col != "pieces" else "left")
    for st in report.stages:
        m = st.memory
        pieces = " ".join(f"{k}:{v}" for k, v in st.pieces.items())
        mem.add_row(
            str(st.rank), pieces, _gib(m.weights_bytes), _gib(m.gradients_bytes), _gib(m.optimizer_bytes),
            _gib(m.activations_bytes), _gib(m.workspace_bytes), _gib(m.total_bytes), _gib(m.capacity_bytes),
        )
    console.print(mem)
    for message in report.messages:
        console.print(f"note: {message}")


def report_json(report: StepReport) -> dict:
    data = report.model_dump(mode="json")
    for st, src in zip(data["stages"], report.stages):
        st["memory"]["total_bytes"] = src.memory.total_bytes
    return data


@app.command("simulate")
@reports_errors
def simulate_command(
    model: str = typer.Option(..., "--model", "-m", help="Model preset name or YAML file."),
    cluster: str = typer.Option(..., "--cluster", "-c", help="Cluster preset name or YAML file."),
    gpus: int = typer.Option(None, "--gpus", help="Resize the cluster to this many GPUs (whole nodes)."),
    plan_file: Path = typer.Option(None, "--plan", help="Plan YAML (Megatron names or tp/pp/...)."),
    global_batch: int = typer.Option(..., "--global-batch", help="Sequences per optimizer step."),
    seq_len: int = typer.Option(None, "--seq-len", help="Tokens per sequence [default: the model's]."),
    precision: str = typer.Option("bf16", "--precision", help="GEMM precision: bf16, fp16 or fp8."),
    tp: int = typer.Option(None, "--tp", "--tensor-model-parallel-size", help="Tensor-parallel degree."),
    pp: int = typer.Option(None, "--pp", "--pipeline-model-parallel-size", help="Pipeline stages."),
    vpp: int = typer.Option(None, "--vpp", "--virtual-pipeline-model-parallel-size", help="Chunks per rank."),
    cp: int = typer.Option(None, "--cp", "--context-parallel-size", help="Context-parallel degree."),
    ep: int = typer.Option(None, "--ep", "--expert-model-parallel-size", help="Expert-parallel degree."),
    etp: int = typer.Option(None, "--etp", "--expert-tensor-parallel-size", help="Expert TP degree."),
    dp: int = typer.Option(None, "--dp", help="Data-parallel degree [default: GPUs / (tp*cp*pp)]."),
    zero: int = typer.Option(None, "--zero", help="ZeRO stage 0-3 (1 = distributed optimizer)."),
    sp: bool = typer.Option(None, "--sequence-parallel/--no-sequence-parallel", help="Megatron SP."),
    recompute: str = typer.Option(None, "--recompute", help="none, selective or full."),
    micro_batch: int = typer.Option(None, "--micro-batch", "--micro-batch-size", help="Sequences per micro-batch."),
    schedule: str = typer.Option(None, "--schedule", help="1f1b, interleaved, zero-bubble, dualpipe, dualpipev."),
    fmt: OutputFormat = typer.Option(OutputFormat.TABLE, "--format", help="Output format."),
    trace: Path = typer.Option(
        None, "--trace", metavar="FILE",
        help="Also write the simulated pipeline timeline (F/B/W blocks per rank, times in µs) as a "
             "Chrome/Perfetto trace JSON to FILE; open it at ui.perfetto.dev or chrome://tracing.",
    ),
    plot_dir: Path = typer.Option(
        None, "--plot-dir", metavar="DIR",
        help="Also write pipeline.png (timeline per rank), breakdown.png (step time by phase) and "
             "memory.png (GiB per pipeline rank vs capacity) to DIR.",
    ),
) -> None:
    """Predict step time, its breakdown and memory per GPU for one plan.

    Example: planner simulate -m deepseek-v3 -c deepseek-v3-h800 --global-batch 15360
    --precision fp8 --pp 16 --ep 64 --zero 1 --schedule dualpipe --recompute selective
    """
    model_spec = load_model(model)
    cluster_spec = load_cluster(cluster, num_gpus=gpus)
    workload = build_workload(model_spec, global_batch, seq_len, precision)
    knobs = {
        "tp": tp, "pp": pp, "vpp": vpp, "cp": cp, "ep": ep, "etp": etp, "dp": dp, "zero_stage": zero,
        "sequence_parallel": sp, "recompute": recompute, "micro_batch_size": micro_batch,
        "pipeline_schedule": schedule,
    }
    plan = build_plan(plan_file, cluster_spec.num_gpus, knobs)
    report = simulate(model_spec, cluster_spec, plan, workload)
    trace_path = None
    if trace is not None:
        label = f"{model} on {cluster}, {plan.pipeline_schedule.value}, pp={plan.pp}"
        try:
            trace_path = write_chrome_trace(report, trace, label=label)
        except OSError as exc:
            raise SpecError("--trace", str(trace), f"cannot write the trace: {exc.strerror or exc}") from None
    plot_paths = _write_plots(report, plot_dir, f"{model} on {cluster}", plan) if plot_dir is not None else []
    if fmt is OutputFormat.JSON:
        data = report_json(report)
        if trace_path is not None:
            data["trace_file"] = str(trace_path)
        if plot_paths:
            data["plot_files"] = [str(p) for p in plot_paths]
        print(json.dumps(data, indent=2))
    else:
        print_report(report, Console())
        if trace_path is not None:
            print(f"trace: {trace_path} (Chrome/Perfetto trace; open at ui.perfetto.dev)")
        for plot_path in plot_paths:
            print(f"plot: {plot_path}")


def _write_plots(report: StepReport, folder: Path, what: str, plan: Plan) -> list[Path]:
    """pipeline.png, breakdown.png and memory.png of one simulated plan in ``folder``."""
    from planner.report.plots import plot_breakdown, plot_memory, plot_pipeline

    knobs = f"tp={plan.tp} pp={plan.pp} ep={plan.ep} dp={plan.dp}, {plan.pipeline_schedule.value}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        paths = [plot_breakdown({knobs: report}, folder / "breakdown.png",
                                title=f"Step time by phase (critical pipeline rank): {what}"),
                 plot_memory(report, folder / "memory.png", label=f"{what}, {knobs}")]
        if report.timeline is not None:
            paths.insert(0, plot_pipeline(report, folder / "pipeline.png", label=f"{what}, {knobs}"))
    except OSError as exc:
        raise SpecError("--plot-dir", str(folder), f"cannot write the plots: {exc.strerror or exc}") from None
    return paths
