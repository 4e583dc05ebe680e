"""``planner report``: a plan recommendation as a design-review document.

:func:`write_report` takes the ranked plans of a search (or of a saved ``planner plan
--format json`` result, re-simulated) and writes into one folder:

- ``index.html``: self-contained (CSS inline, every figure a base64 ``data:`` URI, no
  external resource), readable offline and pasteable;
- ``report.md``: the same content in Markdown, linking the PNGs beside it;
- ``trace.json``: the recommended plan's pipeline timeline as a Chrome/Perfetto trace
  (:mod:`planner.report.trace`: one event per F/B/W/BW/FB block);
- the figures (:mod:`planner.report.plots`): ``breakdown.png`` (step-time phases of the
  top-k plans), ``pipeline.png`` (timeline of #1; DualPipe's reverse direction hatched),
  ``memory.png`` (memory per pipeline rank of #1 vs capacity), ``scaling.png`` (#1's plan
  shape re-simulated at 1/4 .. 4x the GPUs, dp scaled, global batch fixed) and
  ``heatmap.png`` (step time over pp x ep around #1 for MoE models, pp x tp for dense).

Content: the recommendation, the top-k table, the term-by-term explanation of #1 vs #2
(:func:`planner.search.explain.explain`), the cost of the token budget
(:mod:`planner.budget`), and the assumptions (hardware sources and efficiencies from the
GPU and cluster presets, the calibrated constant, what is not modelled). The document is
built once as a list of blocks and rendered to both HTML and Markdown (:mod:`planner.report.render`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from planner.budget import BudgetWorkload, TrainingCost, training_cost
from planner.costmodel.report import StepReport
from planner.report.render import Block, write_html, write_markdown
from planner.search.explain import explain, runner_up_words
from planner.specs import ClusterSpec, ModelSpec, Plan, Workload
from planner.validation.accuracy import accuracy_for

GIB = 2**30
SCALING_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
"""GPU counts of the scaling curve, as multiples of the cluster's (whole nodes only)."""

NOT_MODELLED = (
    "The cost is steady state: every step takes the predicted step time at 100% goodput. Not counted: "
    "a batch-size ramp (DeepSeek-V3 ramps 3072 to 15360 sequences over its first 469B tokens), "
    "learning-rate warm-up effects, failures and restarts, checkpointing, evaluation and data-loading stalls.",
    "The cluster is dedicated: no other job shares the fabric; no stragglers or clock variation beyond the "
    "one fitted constant above.",
    "The price is a rental price per GPU-hour: no power, staff, storage, or research and ablation runs "
    "(DeepSeek-V3's $5.576M excludes those too).",
    "Accuracy: see `planner validate` for the current error against the published runs; known gaps "
    "(DeepSpeed ZeRO-3 runs predicted too fast, pre-FlashAttention runs) are listed in the README.",
)


@dataclass
class ReportInput:
    """What the report is about, and the plans it ranks (best first)."""

    model: ModelSpec
    cluster: ClusterSpec
    workload: Workload
    ranked: Sequence[tuple[Plan, StepReport]]
    tokens: float | None = None
    price_per_gpu_hour: float | None = None
    budget: BudgetWorkload | None = None
    search_line: str = ""
    """How the ranking was obtained (the search's counts line, or 'from FILE')."""
    memory_limit_bytes: float | None = None


@dataclass
class ReportFiles:
    """The paths written, figures by name."""

    html: Path
    markdown: Path
    trace: Path
    figures: dict[str, Path] = field(default_factory=dict)


def plan_label(plan: Plan) -> str:
    """``tp1 pp16 cp2 ep64 dp64 mb1 ZeRO-1 selective dualpipe`` (knobs that are not 1 or off
    are shown; tp, pp, ep and dp always)."""
    parts = [f"tp{plan.tp}", f"pp{plan.pp}"]
    if plan.vpp > 1:
        parts.append(f"vpp{plan.vpp}")
    if plan.cp > 1:
        parts.append(f"cp{plan.cp}")
    parts += [f"ep{plan.ep}", f"dp{plan.dp}", f"mb{plan.micro_batch_size}", f"ZeRO-{int(plan.zero_stage)}"]
    if plan.sequence_parallel:
        parts.append("SP")
    parts += [plan.recompute.value, plan.pipeline_schedule.value]
    return " ".join(parts)


def write_report(data: ReportInput, out_dir: str | Path, *, scaling: bool = True, heatmap: bool = True,
                 progress: Callable[[str], None] | None = None) -> ReportFiles:
    """Write the report folder (module docstring) and return its paths."""
    from planner.report import plots
    from planner.report.trace import write_chrome_trace

    say = progress or (lambda _: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    best_plan, best = data.ranked[0]
    what = f"{data.model.name} on {data.cluster.num_gpus:,} x {data.cluster.gpu.name}"
    labels = [f"#{i + 1} {plan_label(p)}" for i, (p, _) in enumerate(data.ranked)]
    costs = [training_cost(r.step_time_s, data.workload.tokens_per_step, data.cluster.num_gpus, data.tokens,
                           data.price_per_gpu_hour) for _, r in data.ranked]
    files = ReportFiles(html=out / "index.html", markdown=out / "report.md", trace=out / "trace.json")

    say("trace and figures of the recommended plan")
    write_chrome_trace(best, files.trace, label=f"{what}: {plan_label(best_plan)}")
    figs = files.figures
    figs["breakdown"] = plots.plot_breakdown(dict(zip(labels, (r for _, r in data.ranked))), out / "breakdown.png",
                                             title=f"Step time by phase (critical pipeline rank), top {len(labels)}: "
                                                   f"{what}")
    if best.timeline is not None:
        figs["pipeline"] = plots.plot_pipeline(best, out / "pipeline.png", label=f"#1 {plan_label(best_plan)}")
    figs["memory"] = plots.plot_memory(best, out / "memory.png", label=f"#1 {plan_label(best_plan)}")
    scaling_df = heat_df = heat_axes = None
    if scaling:
        say("scaling curve (re-simulating #1 at other GPU counts)")
        scaling_df = scaling_points(data.model, data.cluster, best_plan, data.workload)
        figs["scaling"] = plots.plot_scaling(scaling_df, out / "scaling.png",
                                             label=f"{data.model.name}, #1 shape {plan_label(best_plan)}, global "
                                                   f"batch {data.workload.global_batch_size:,}")
    if heatmap:
        say("sweep heatmap around #1")
        heat_axes, heat_df = heatmap_points(data.model, data.cluster, best_plan, data.workload)
        if heat_df is not None:
            x, y = heat_axes
            figs["heatmap"] = plots.plot_heatmap(heat_df, x, y, out / "heatmap.png",
                                                 title=f"Step time (s) around #1 over {y} x {x}, dp = GPUs/(tp cp pp)")
    blocks = _blocks(data, labels, costs, files, scaling_df)
    write_markdown(blocks, files.markdown)
    write_html(blocks, files.html, title=f"planner report: {what}")
    return files


# --- the extra simulations ---------------------------------------------------------------


def scaling_points(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload):
    """#1's plan at :data:`SCALING_FACTORS` x the GPUs (whole nodes), dp scaled, batch fixed."""
    from planner.sweep import SweepBase, derive_dp, sweep

    per_node = cluster.node.gpus_per_node
    counts = sorted({int(cluster.num_gpus * f) for f in SCALING_FACTORS
                     if int(cluster.num_gpus * f) >= per_node and int(cluster.num_gpus * f) % per_node == 0})
    base = SweepBase(model=model, cluster=cluster, plan=plan, workload=workload)
    return sweep(base, {"cluster.num_gpus": counts}, derive=derive_dp)


def _around(value: int) -> list[int]:
    """Half (when whole), the value itself, and twice."""
    return sorted({value, value * 2, *([value // 2] if value % 2 == 0 else [])})


def heatmap_points(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload):
    """Step time over pp x ep (MoE) or pp x tp (dense) at half, same and twice #1's values;
    ((x, y), DataFrame), or (None, None) when the grid has a single point."""
    from planner.sweep import SweepBase, derive_dp, sweep

    x = "plan.ep" if model.moe is not None else "plan.tp"
    grid = {x: _around(getattr(plan, x.split(".")[1])), "plan.pp": _around(plan.pp)}
    if math.prod(len(v) for v in grid.values()) < 2:
        return None, None
    base = SweepBase(model=model, cluster=cluster, plan=plan, workload=workload)
    return (x, "plan.pp"), sweep(base, grid, derive=derive_dp)


# --- the document --------------------------------------------------------------------------


def _gib(x: float) -> str:
    return f"{x / GIB:,.1f}"


def _blocks(data: ReportInput, labels: list[str], costs: list[TrainingCost], files: ReportFiles,
            scaling_df) -> list[Block]:
    best_plan, best = data.ranked[0]
    c, w, g = data.cluster, data.workload, data.cluster.gpu
    b: list[Block] = [Block("h1", f"{data.model.name} on {c.name}: {c.num_gpus:,} x {g.name}")]
    b.append(Block("p", f"Workload: global batch {w.global_batch_size:,} sequences x {w.seq_length:,} tokens "
                        f"({w.tokens_per_step:,} tokens per step), {w.precision.value} GEMMs. "
                        + (f"Ranking: {data.search_line}." if data.search_line else "")))
    if data.budget is not None:
        b.append(Block("p", "Workload from the token budget: " + data.budget.line() + "."))

    b.append(Block("h2", "Recommendation"))
    cost = costs[0]
    b.append(Block("p", f"**#1 {plan_label(best_plan)}**: step {best.step_time_s:.3f} s, "
                        f"{best.tokens_per_s_per_gpu:,.0f} tokens/s/GPU, MFU {best.mfu_causal:.1%} causal / "
                        f"{best.mfu_noncausal:.1%} non-causal, peak memory {_gib(best.memory_peak_bytes)} of "
                        f"{_gib(best.memory_capacity_bytes)} GiB per GPU."))
    if len(data.ranked) > 1:
        words = runner_up_words(best.step_time_s, data.ranked[1][1].step_time_s)
        b.append(Block("p", f"The runner-up ({labels[1]}) {words}."))

    b.append(Block("h2", "Top plans"))
    headers = ["#", "plan", "step s", "tokens/s/GPU", "MFU (causal)", "memory GiB", "headroom GiB",
               "GPU-hours per 1e12 tokens"]
    limit = data.memory_limit_bytes
    rows = []
    for i, ((p, r), cst) in enumerate(zip(data.ranked, costs)):
        head = (limit if limit is not None else r.memory_capacity_bytes) - r.memory_peak_bytes
        rows.append([str(i + 1), plan_label(p), f"{r.step_time_s:.3f}", f"{r.tokens_per_s_per_gpu:,.0f}",
                     f"{r.mfu_causal:.1%}", f"{_gib(r.memory_peak_bytes)} / {_gib(r.memory_capacity_bytes)}",
                     _gib(head), f"{cst.gpu_hours_per_1e12_tokens:,.0f}"])
    b.append(Block("table", headers=headers, rows=rows))
    b.append(Block("img", files.figures["breakdown"].name,
                   caption="Step time by phase of each plan (critical pipeline rank), fastest on top."))

    b.append(Block("h2", "Why #1 and not #2"))
    if len(data.ranked) > 1:
        (pa, ra), (pb, rb) = data.ranked[0], data.ranked[1]
        e = explain(ra, rb, ("#1", "#2"), plans=(pa, pb), cluster=c)
        b.append(Block("p", e.verdict))
        b.append(Block("table", headers=["term", "#1 s", "#2 s", "Δ s (#2 − #1)", "driven by"],
                       rows=[[t.label, f"{t.a_s:.3f}", f"{t.b_s:.3f}", f"{t.delta_s:+.3f}", t.note]
                             for t in e.dominant] + [["step", f"{e.a_step_s:.3f}", f"{e.b_step_s:.3f}",
                                                      f"{e.delta_s:+.3f}", ""]]))
    else:
        b.append(Block("p", "Only one plan fits within the constraints; nothing to compare."))

    b.append(Block("h2", "Cost"))
    b.append(Block("p", cost.line() + ". Price: US$ per GPU-hour"
                   + (" (default: $2, the rental price DeepSeek-V3 assumes, arXiv 2412.19437 §1 and Table 1)."
                      if data.price_per_gpu_hour is None else " (given).")
                   + " For scale: DeepSeek-V3 reports 180K H800 GPU-hours per trillion tokens."))
    b.append(Block("table", headers=["plan", "days", "GPU-hours", "GPU-hours per 1e12 tokens", "US$"],
                   rows=[[lab, f"{k.wall_time_days:,.2f}", f"{k.gpu_hours:,.0f}",
                          f"{k.gpu_hours_per_1e12_tokens:,.0f}", f"{k.cost_usd:,.0f}"]
                         for lab, k in zip(labels, costs)]))

    b.append(Block("h2", "Pipeline and memory of #1"))
    if "pipeline" in files.figures:
        b.append(Block("img", files.figures["pipeline"].name,
                       caption="Pipeline timeline: one row per pipeline rank, F/B/W blocks per micro-batch; grey = "
                               "idle (bubble); under DualPipe the reverse direction is hatched. The same timeline "
                               "is in trace.json (open at ui.perfetto.dev)."))
    b.append(Block("img", files.figures["memory"].name,
                   caption="Memory per GPU on each pipeline rank, stacked by kind, against the HBM capacity."))

    if "scaling" in files.figures or "heatmap" in files.figures:
        b.append(Block("h2", "What if"))
    if "scaling" in files.figures:
        ok = scaling_df[scaling_df["status"] == "ok"] if scaling_df is not None else None
        note = ""
        if ok is not None and len(ok) > 1:
            first, last = ok.iloc[0], ok.iloc[-1]
            note = (f" From {int(first['num_gpus']):,} to {int(last['num_gpus']):,} GPUs tokens/s per GPU goes "
                    f"from {first['tokens_per_s_per_gpu']:,.0f} to {last['tokens_per_s_per_gpu']:,.0f} "
                    f"({last['tokens_per_s_per_gpu'] / first['tokens_per_s_per_gpu']:.0%} scaling efficiency).")
        b.append(Block("img", files.figures["scaling"].name,
                       caption="#1's plan shape at other GPU counts (dp scaled, global batch fixed)." + note))
    if "heatmap" in files.figures:
        b.append(Block("img", files.figures["heatmap"].name,
                       caption="Step time over two knobs around #1, other knobs fixed; grey cells do not fit "
                               "(OOM, with their step time) or are invalid."))

    b.append(Block("h2", "Assumptions"))
    eff = g.efficiency
    items = [
        f"GPU {g.name}: dense peaks " + ", ".join(f"{k.value} {v / 1e12:,.1f} TFLOPS" for k, v in
                                                  g.peak_flops_per_s.items())
        + f"; HBM {_gib(g.hbm_capacity_bytes)} GiB at {g.hbm_bandwidth_bytes_per_s / 1e12:,.2f} TB/s. Source: {g.source}",
        f"Cluster {c.name}: {c.num_nodes:,} nodes x {c.node.gpus_per_node} GPUs; scale-up "
        f"{c.node.scale_up.kind.value} {c.node.scale_up.bandwidth_bytes_per_s / 1e9:,.0f} GB/s per GPU per direction "
        f"({c.node.scale_up.achievable_fraction:.0%} achievable); {c.node.nics_per_node} x "
        f"{c.node.nic_bandwidth_bytes_per_s * 8 / 1e9:,.0f} Gbit/s NICs per node "
        f"({c.node.nic_achievable_fraction:.0%} achievable); fabric {c.fabric.kind.value}. Source: {c.source}",
    ]
    if eff is not None:
        items.append(
            "Kernel efficiencies (share of peak): GEMM plateau " + ", ".join(
                f"{k.value} {v:.2f}" for k, v in eff.gemm_max_fraction.items())
            + f" (half-size dimension {eff.gemm_half_dim:g}"
            + "".join(f", {k.value} {v:g}" for k, v in eff.gemm_half_dim_by_dtype.items())
            + f"); attention forward {eff.attention_forward_fraction:.2f}, "
              f"backward {eff.attention_backward_fraction:.2f}; HBM {eff.hbm_fraction:.2f}"
            + (f"; FP8 dgrad/wgrad (split accumulation) at {eff.fp8_split_accumulation_fraction:.2f} "
               "of the FP8 rate" if eff.fp8_split_accumulation_fraction is not None else "")
            + f". Source: {eff.source}")
    items.append(_calibrated_constant())
    accuracy = accuracy_for(c, data.model, w)
    items.append(f"Validated against {accuracy.line()}." if accuracy is not None
                 else f"No published run on {g.name} is in the validation set: this GPU's predictions are not validated.")
    items += [f"Simulator note for #1: {m}" for m in best.messages]
    b.append(Block("ul", items=items))
    b.append(Block("h3", "Not modelled"))
    b.append(Block("ul", items=list(NOT_MODELLED)))
    b.append(Block("p", f"Files: {files.trace.name} (Chrome/Perfetto trace of #1's pipeline), "
                        + ", ".join(p.name for p in files.figures.values()) + "."))
    return b


def _calibrated_constant() -> str:
    import yaml

    from planner.presets import data_root

    try:
        value = yaml.safe_load((data_root() / "costmodel" / "compute.yaml").read_text())["sustained_kernel_fraction"]
    except (OSError, KeyError, TypeError):
        return "One constant is fitted to the public validation cases: sustained_kernel_fraction."
    return (f"One constant is fitted to the public validation cases: sustained_kernel_fraction = {value} "
            "(share of microbenchmark kernel throughput sustained in a training step; "
            "data/costmodel/compute.yaml).")
