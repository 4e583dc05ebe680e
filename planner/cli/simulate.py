"""``planner simulate``: predict one training step of a plan and explain where the time goes.

The plan comes from ``--plan PLAN.yaml`` (Megatron names or short forms) and/or the knob
options, which override the file; ``--dp`` defaults to GPUs / (tp * cp * pp).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from planner.budget import check_budget
from planner.cli import options
from planner.cli.inputs import accuracy_json, accuracy_line, build_plan, cost_of, parse_ints, resolve_workload
from planner.cli.main import app, reports_errors
from planner.cli.output import Format, write_result
from planner.costmodel.partition_solver import fit_pipeline_layers
from planner.costmodel.report import PHASE_LABELS, StepReport
from planner.costmodel.simulate import simulate
from planner.errors import SpecError
from planner.presets import load_cluster, load_model
from planner.report.trace import write_chrome_trace
from planner.search.fixes import MemoryFix, MemoryFixes, memory_fixes
from planner.specs import ClusterSpec, ModelSpec, Plan, Workload
from planner.sweep import report_row
from planner.validation.accuracy import accuracy_for

EXAMPLE = (
    "Example (DeepSeek-V3's published plan, cost of its 14.8T tokens at $2/GPU-hour):\n\n"
    "planner simulate -m deepseek-v3 -c deepseek-v3-h800 --global-batch 15360 --precision fp8 "
    "--pp 16 --ep 64 --zero 1 --schedule dualpipe --recompute selective --tokens 14.8e12"
)


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
    for field, name in PHASE_LABELS.items():
        value = getattr(b, field)
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


@app.command("simulate", epilog=EXAMPLE)
@reports_errors
def simulate_command(
    model: str = options.model(),
    cluster: str = options.cluster(),
    gpus: int = options.gpus(),
    plan_file: Path = typer.Option(None, "--plan", help="Plan YAML (Megatron names or tp/pp/...)."),
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
    tp: int = options.knob("tp"),
    pp: int = options.knob("pp"),
    vpp: int = options.knob("vpp"),
    cp: int = options.knob("cp"),
    ep: int = options.knob("ep"),
    etp: int = options.knob("etp"),
    dp: int = typer.Option(None, "--dp", "--data-parallel-size", help="Data-parallel degree \\[default: GPUs / (tp · cp · pp)]."),
    zero: int = options.zero(),
    sp: bool = options.sequence_parallel(),
    recompute: str = options.recompute(),
    recompute_modules: str = options.recompute_modules(),
    offload_layers: int = options.cpu_offloading_num_layers(),
    micro_batch: int = options.micro_batch(),
    schedule: str = options.schedule(),
    pipeline_layers: str = options.pipeline_layers(),
    tokens: float = options.tokens(budget=True),
    price: float = options.price(),
    fmt: Format = options.fmt(),
    out: Path = options.out(),
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
    """Predict step time (s), its breakdown, memory per GPU (GiB) and the cost of a token
    budget (GPU-hours, US$) for one plan."""
    model_spec = load_model(model)
    cluster_spec = load_cluster(cluster, num_gpus=gpus)
    check_budget(tokens, price)
    workload, budget = resolve_workload(model_spec, cluster_spec.num_gpus, global_batch, tokens, seq_len, precision,
                                        adam_moments, moe_dispatch,
                                        grad_reduce, overlap_param_gather,
                                        moe_dispatcher=moe_dispatcher, moe_routing=moe_routing,
                                        pipeline_p2p=pipeline_p2p, cross_entropy=cross_entropy,
                                        fp8_implementation=fp8_implementation,
                                        tp_comm_overlap=tp_comm_overlap, ep_comm_overlap=ep_comm_overlap)
    knobs = {
        "tp": tp, "pp": pp, "vpp": vpp, "cp": cp, "ep": ep, "etp": etp, "dp": dp, "zero_stage": zero,
        "sequence_parallel": sp, "recompute": recompute, "micro_batch_size": micro_batch,
        "pipeline_schedule": schedule, "pipeline_layers": parse_ints("--pipeline-layers", pipeline_layers),
        "recompute_modules": recompute_modules and [m.strip() for m in recompute_modules.split(",") if m.strip()],
        "cpu_offloading_num_layers": offload_layers,
    }
    plan = build_plan(plan_file, cluster_spec.num_gpus, knobs)
    report = simulate(model_spec, cluster_spec, plan, workload)
    fitted = _fitted_split(model_spec, cluster_spec, plan, workload) if not report.fits else None
    fixes = memory_fixes(model_spec, cluster_spec, plan, workload, report) if not report.fits else None
    accuracy = accuracy_for(cluster_spec, model_spec, workload)
    cost = cost_of(report, workload, cluster_spec.num_gpus, tokens, price)
    trace_path = None
    if trace is not None:
        label = f"{model} on {cluster}, {plan.pipeline_schedule.value}, pp={plan.pp}"
        try:
            trace_path = write_chrome_trace(report, trace, label=label)
        except OSError as exc:
            raise SpecError("--trace", str(trace), f"cannot write the trace: {exc.strerror or exc}") from None
    plot_paths = _write_plots(report, plot_dir, f"{model} on {cluster}", plan) if plot_dir is not None else []
    data = report_json(report)
    data["plan"] = plan.model_dump(mode="json")
    data["workload"] = workload.model_dump(mode="json")
    data["cost"] = cost.to_json()
    if budget is not None:
        data["budget"] = budget.to_json()
    if fitted is not None:
        data["fitted_pipeline_layers"] = {"pipeline_layers": list(fitted.pipeline_layers),
                                          "step_time_s": fitted.step_time_s}
    data["accuracy"] = accuracy_json(accuracy)
    if fixes is not None:
        data["memory_fixes"] = {"fits": [_fix_json(f) for f in fixes.fits],
                                "leanest": _fix_json(fixes.leanest) if fixes.leanest is not None else None}
    if trace_path is not None:
        data["trace_file"] = str(trace_path)
    if plot_paths:
        data["plot_files"] = [str(p) for p in plot_paths]
    row = {"num_gpus": cluster_spec.num_gpus, "tokens_per_step": workload.tokens_per_step, **report_row(report),
           "gpu_hours_per_1e12_tokens": cost.gpu_hours_per_1e12_tokens}

    def table(console: Console) -> None:
        print_report(report, console)
        if fitted is not None:
            layers = ",".join(str(n) for n in fitted.pipeline_layers)
            console.print(f"fits with an uneven layer split: --pipeline-layers {layers} "
                          f"(step time {fitted.step_time_s:.3f} s, CP-SAT)", markup=False)
        if fixes is not None:
            console.print(_fixes_line(fixes), markup=False)
        console.print(accuracy_line(accuracy, cluster_spec), markup=False)
        if budget is not None:
            console.print(f"workload: {budget.line()}", markup=False)
        console.print(f"cost: {cost.line()}", markup=False)
        if trace_path is not None:
            console.print(f"trace: {trace_path} (Chrome/Perfetto trace; open at ui.perfetto.dev)", markup=False)
        for plot_path in plot_paths:
            console.print(f"plot: {plot_path}", markup=False)

    write_result(data, fmt, out, table=table, rows=[row])


def _fitted_split(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload) -> StepReport | None:
    """The simulation of the memory-fitted layer split (CP-SAT) of an OOM plan, if one fits."""
    if plan.pipeline_layers is not None:
        return None
    fit = fit_pipeline_layers(model, cluster, plan, workload)
    if fit is None:
        return None
    layers = tuple(chunk.num_blocks for chunk in fit.partition.chunks)
    report = simulate(model, cluster, plan.model_copy(update={"pipeline_layers": layers}), workload)
    return report if report.fits else None


def _fix_json(fix: MemoryFix) -> dict:
    return {"flags": fix.flags, "status": fix.report.status.value, "step_time_s": fix.report.step_time_s,
            "memory_peak_bytes": fix.report.memory_peak_bytes}


def _fixes_line(fixes: MemoryFixes) -> str:
    """What would make an OOM plan fit, in one line (:func:`planner.search.fixes.memory_fixes`)."""
    def each(fix: MemoryFix) -> str:
        return f"{fix.flags} ({fix.report.step_time_s:.3f} s, {_gib(fix.report.memory_peak_bytes)} GiB)"

    if fixes.fits:
        return "fits with one change (fastest first): " + "; ".join(each(f) for f in fixes.fits)
    elsewhere = "more pipeline stages (--pp), more GPUs or GPUs with more HBM (planner plan searches them)"
    lean = fixes.leanest
    if lean is None:
        return f"no knob of this layout lowers memory further: {elsewhere}"
    if lean.report.fits:
        return f"no single change fits; all of {each(lean)} does"
    worst = max(lean.report.stages, key=lambda st: st.memory.total_bytes)
    return (f"no change of this layout fits: with all of {lean.flags} pipeline rank {worst.rank} still needs "
            f"{_gib(worst.memory.total_bytes)} of {_gib(worst.memory.capacity_bytes)} GiB; {elsewhere}")


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
