"""``planner sweep``: a what-if grid over one base case (:func:`planner.sweep.sweep`).

The base is given as for ``planner simulate`` (model, cluster, workload, plan knobs or a
plan file); each ``--grid KEY=V1,V2,...`` adds an axis. KEY is a plan knob by its short or
Megatron name (``pp``, ``tensor-model-parallel-size``, ``zero``, ``micro-batch``,
``schedule``, ...), ``gpus``, ``global-batch``, ``seq-len``, ``precision``, or any dotted
path of :func:`planner.sweep.sweep` (``cluster.node.nic_bandwidth_bytes_per_s``). Unless
``--dp`` is given (or swept), dp follows each point: GPUs / (tp * cp * pp).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from planner.cli import options
from planner.cli.inputs import build_plan, resolve_workload
from planner.cli.main import app, reports_errors
from planner.cli.output import Format, plain, write_result
from planner.errors import SpecError
from planner.presets import load_cluster, load_model
from planner.specs import Plan
from planner.sweep import SweepBase, derive_dp, sweep

EXAMPLE = (
    "Example (DeepSeek-V3: step time over pp x ep, heatmap):\n\n"
    "planner sweep -m deepseek-v3 -c deepseek-v3-h800 --global-batch 15360 --precision fp8 --zero 1 "
    "--schedule dualpipe --recompute selective --grid pp=8,16 --grid ep=32,64 --plot pp_ep.png"
)

_ALIASES = {
    "gpus": "cluster.num_gpus", "num-gpus": "cluster.num_gpus",
    "global-batch": "workload.global_batch_size", "global-batch-size": "workload.global_batch_size",
    "seq-len": "workload.seq_length", "seq-length": "workload.seq_length",
    "precision": "workload.precision",
    "zero": "plan.zero_stage", "micro-batch": "plan.micro_batch_size", "mb": "plan.micro_batch_size",
    "schedule": "plan.pipeline_schedule", "sp": "plan.sequence_parallel",
    "sequence-parallel": "plan.sequence_parallel", "recompute": "plan.recompute",
    "tensor-model-parallel-size": "plan.tp", "pipeline-model-parallel-size": "plan.pp",
    "virtual-pipeline-model-parallel-size": "plan.vpp", "context-parallel-size": "plan.cp",
    "expert-model-parallel-size": "plan.ep", "expert-tensor-parallel-size": "plan.etp",
    "data-parallel-size": "plan.dp", "micro-batch-size": "plan.micro_batch_size",
}
_BOOLS = {"on": True, "true": True, "off": False, "false": False}
SHOWN = ("status", "step_time_s", "tokens_per_s_per_gpu", "mfu_causal", "bubble_s", "memory_peak_gib", "message")


def grid_key(key: str) -> str:
    """A ``--grid`` key as a dotted path of :func:`planner.sweep.sweep`."""
    key = key.strip()
    dashed = key.replace("_", "-")
    if dashed in _ALIASES:
        return _ALIASES[dashed]
    if "." in key:
        return key
    if key in Plan.model_fields:
        return f"plan.{key}"
    raise SpecError("--grid", key, "must be a plan knob (tp, pp, vpp, cp, ep, etp, dp, zero, micro-batch, schedule, "
                    "recompute, sp), gpus, global-batch, seq-len, precision, or a dotted path such as "
                    "cluster.node.nic_bandwidth_bytes_per_s")


def _value(text: str):
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return _BOOLS.get(text.lower(), text)


def parse_grid(items: list[str]) -> dict[str, list]:
    """``['pp=8,16', 'ep=32,64']`` -> ``{'plan.pp': [8, 16], 'plan.ep': [32, 64]}``."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        parsed = [_value(v) for v in values.split(",") if v.strip()]
        if not sep or not parsed:
            raise SpecError("--grid", item, "must read KEY=V1,V2,... (e.g. pp=8,16)")
        path = grid_key(key)
        if path in grid:
            raise SpecError("--grid", item, f"{path} is swept twice")
        grid[path] = parsed
    return grid


def _cell(value) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def print_sweep(df, keys: list[str], console: Console) -> None:
    table = Table(title=f"Sweep: {len(df)} points", title_justify="left")
    columns = [*keys, *(c for c in df.columns if c not in keys and c not in SHOWN and c.startswith("plan.")),
               *SHOWN]
    columns = list(dict.fromkeys(c for c in columns if c in df.columns))
    for col in columns:
        table.add_column(col, justify="left" if col in ("status", "message") else "right",
                         overflow="fold" if col == "message" else "ellipsis")
    for _, row in df[columns].iterrows():
        table.add_row(*(_cell(v) for v in row))
    console.print(table)


@app.command("sweep", epilog=EXAMPLE)
@reports_errors
def sweep_command(
    model: str = options.model(),
    cluster: str = options.cluster(),
    gpus: int = options.gpus(),
    plan_file: Path = typer.Option(None, "--plan", help="Base plan YAML (Megatron names or tp/pp/...)."),
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
    dp: int = typer.Option(None, "--dp", "--data-parallel-size",
                           help="Data-parallel degree \\[default: each point's GPUs / (tp · cp · pp)]."),
    zero: int = options.zero(),
    sp: bool = options.sequence_parallel(),
    recompute: str = options.recompute(),
    micro_batch: int = options.micro_batch(),
    schedule: str = options.schedule(),
    tokens: float = options.tokens(budget=True),
    grid: list[str] = typer.Option(..., "--grid", "-g", metavar="KEY=V1,V2",
                                   help="A sweep axis, e.g. pp=8,16 or gpus=256,512 (repeat for more axes)."),
    fmt: Format = options.fmt("the sweep (one row per point)"),
    out: Path = options.out("the sweep"),
    plot: Path = typer.Option(None, "--plot", metavar="FILE",
                              help="Also draw a heatmap of step time (s) over the two axes to FILE (.png/.svg/.pdf; "
                                   "needs exactly two numeric axes)."),
) -> None:
    """Simulate every point of a grid of changes to one base case: step time (s),
    tokens/s/GPU, MFU, bubble (s), peak memory (GiB) per point; invalid and OOM points stay
    as rows with the reason."""
    axes = parse_grid(grid)
    if plot is not None:
        from planner.report.topology_plot import check_suffix

        plot = check_suffix(plot, "--plot")
        if len(axes) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                     for values in axes.values() for v in values):
            raise SpecError("--plot", str(plot), "a heatmap needs exactly two --grid axes with numeric values")
    model_spec = load_model(model)
    cluster_spec = load_cluster(cluster, num_gpus=gpus)
    workload, _ = resolve_workload(model_spec, cluster_spec.num_gpus, global_batch, tokens, seq_len, precision,
                                   adam_moments, moe_dispatch,
                                   grad_reduce, overlap_param_gather,
                                   moe_dispatcher=moe_dispatcher, moe_routing=moe_routing,
                                   pipeline_p2p=pipeline_p2p, cross_entropy=cross_entropy,
                                   fp8_implementation=fp8_implementation,
                                   tp_comm_overlap=tp_comm_overlap, ep_comm_overlap=ep_comm_overlap)
    knobs = {"tp": tp, "pp": pp, "vpp": vpp, "cp": cp, "ep": ep, "etp": etp, "dp": dp, "zero_stage": zero,
             "sequence_parallel": sp, "recompute": recompute, "micro_batch_size": micro_batch,
             "pipeline_schedule": schedule}
    for path, values in axes.items():  # the base takes each swept knob's first value
        root, _, name = path.partition(".")
        if root == "plan" and "." not in name and knobs.get(name) is None:
            knobs[name] = values[0]
    base_plan = build_plan(plan_file, cluster_spec.num_gpus, knobs)
    base = SweepBase(model=model_spec, cluster=cluster_spec, plan=base_plan, workload=workload)
    fixed_dp = dp is not None or "plan.dp" in axes or (plan_file is not None and "dp" in _plan_keys(plan_file))
    derive = None if fixed_dp else derive_dp
    df = sweep(base, axes, derive=derive)
    plot_path = None
    if plot is not None:
        from planner.report.plots import plot_heatmap

        x, y = list(axes)
        plot_path = plot_heatmap(df, x, y, plot, title=f"Step time (s) of {model_spec.name} on "
                                 f"{cluster_spec.name} over {y} x {x}")
    records = [{k: plain(v) for k, v in row.items()} for row in df.to_dict("records")]
    payload = {"grid": axes, "base": {"model": model_spec.name, "cluster": cluster_spec.name,
                                      "num_gpus": cluster_spec.num_gpus, "plan": base_plan.model_dump(mode="json"),
                                      "workload": workload.model_dump(mode="json")},
               "points": records}
    if plot_path is not None:
        payload["plot_file"] = str(plot_path)

    def table(console: Console) -> None:
        print_sweep(df, list(axes), console)
        if plot_path is not None:
            console.print(f"plot: {plot_path}", markup=False)

    write_result(payload, fmt, out, table=table, rows=records)


def _plan_keys(path: Path) -> set[str]:
    from planner.cli.inputs import _short_names
    from planner.presets import read_plan_fields

    return set(_short_names(read_plan_fields(str(path))))

