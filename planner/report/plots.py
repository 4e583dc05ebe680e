"""Figures of a simulated step for design reviews (matplotlib Figure API, no pyplot state).

- :func:`plot_pipeline`: the pipeline timeline, one row per pipeline rank, one box per
  F / B / W / BW / FB block; idle time (bubbles) is the grey band left uncovered; under
  DualPipe the reverse direction (micro-batches entering at the last rank) is hatched.
- :func:`plot_breakdown`: step-time phases as stacked horizontal bars, one per plan.
- :func:`plot_memory`: memory per GPU of each pipeline rank, stacked, against capacity.
- :func:`plot_validation`: predicted vs measured step time, log-log, with the y = x line
  and a ±10% band, points coloured by source.
- :func:`plot_scaling`: GPU count vs tokens/s per GPU and scaling efficiency.
- :func:`plot_heatmap`: one metric over a two-knob sweep grid (e.g. step time over pp x ep).

Top-k plans side by side: :func:`plot_breakdown` with one label per plan.

Every function writes ``path`` (format from its suffix: .png, .svg or .pdf; parent
folders created) and returns it as a :class:`~pathlib.Path`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from planner.costmodel.report import PHASE_LABELS
from planner.costmodel.schedules import EventKind, PipelineTimeline
from planner.report.trace import _timeline

GIB = 2**30
BAND = 0.10
"""Half-width of the shaded band of the validation scatter (±10%)."""

KIND_COLOR = {
    EventKind.F: "#4c8bd6",
    EventKind.B: "#3aa35b",
    EventKind.W: "#9467bd",
    EventKind.BW: "#f28e2b",
    EventKind.FB: "#d6404e",
}
KIND_NAME = {
    EventKind.F: "F: forward",
    EventKind.B: "B: backward (inputs)",
    EventKind.W: "W: backward (weights)",
    EventKind.BW: "BW: full backward",
    EventKind.FB: "FB: overlapped F&B pair",
}
IDLE_COLOR = "#e6e6e6"

PHASE_COLORS = {
    "forward_s": "#4c8bd6", "backward_input_s": "#3aa35b", "backward_weight_s": "#9467bd",
    "overlapped_fb_s": "#d6404e", "bubble_s": "#bdbdbd", "dp_exposed_s": "#f2c12e", "optimizer_s": "#6b4f3a",
}
PHASES = tuple((field, label, PHASE_COLORS[field]) for field, label in PHASE_LABELS.items())
"""(TimeBreakdown field, legend name, colour) per phase."""
MEMORY = (  # MemoryBreakdown field, legend name, colour
    ("weights_bytes", "weights", "#4c8bd6"),
    ("gradients_bytes", "gradients", "#3aa35b"),
    ("optimizer_bytes", "optimizer states", "#9467bd"),
    ("activations_bytes", "activations", "#f28e2b"),
    ("workspace_bytes", "workspace / buffers", "#bdbdbd"),
)


def _time_unit(seconds: float) -> tuple[float, str]:
    """Scale and unit name so that ``seconds`` reads as a number of convenient size."""
    if seconds >= 1.0:
        return 1.0, "s"
    if seconds >= 1e-3:
        return 1e3, "ms"
    return 1e6, "µs"


def _fmt_s(seconds: float) -> str:
    scale, unit = _time_unit(abs(seconds) if seconds else 1.0)
    return f"{seconds * scale:.3g} {unit}"


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()[1:] or "png"
    fig.savefig(path, format=suffix, bbox_inches="tight")
    return path


# --- pipeline timeline ------------------------------------------------------------------


def plot_pipeline(report_or_timeline: Any, path: str | Path, *, label: str = "") -> Path:
    """The simulated pipeline as a Gantt chart: rank 0 on top, time in seconds (or ms/µs
    for short steps) from the first forward. Blocks of one kind share a colour; DualPipe's
    reverse-direction micro-batches (entering at the last rank) are hatched and lighter;
    an FB pair is hatched by the direction of its forward half. Small plans also print the
    micro-batch id in each block."""
    tl: PipelineTimeline = _timeline(report_or_timeline)
    events = tl.events
    num_ranks = len(tl.phases)
    two_dirs = any(e.direction for e in events)
    scale, unit = _time_unit(tl.makespan_s)

    fig = Figure(figsize=(14, max(3.0, 0.8 + 0.42 * num_ranks)), dpi=120)
    ax = fig.add_subplot()
    bars: dict[tuple[int, EventKind, int], list[tuple[float, float]]] = defaultdict(list)
    for e in events:
        bars[e.rank, e.kind, e.direction].append((e.start_s * scale, (e.end_s - e.start_s) * scale))
    height = 0.8
    for r in range(num_ranks):
        ax.broken_barh([(0.0, tl.makespan_s * scale)], (r - height / 2, height), facecolors=IDLE_COLOR,
                       edgecolors="none", zorder=1)
    # Thin edges only while blocks are wide enough to show them.
    edge = 0.4 if len(events) <= 400 else 0.0
    for (rank, kind, direction), spans in bars.items():
        ax.broken_barh(
            spans, (rank - height / 2, height),
            facecolors=KIND_COLOR[kind], alpha=0.55 if direction else 1.0,
            edgecolors="black" if edge else "none", linewidth=edge,
            hatch="////" if direction else None, zorder=2,
        )
    if len(events) <= 200:
        for e in events:
            width = (e.end_s - e.start_s) * scale
            if width >= tl.makespan_s * scale / 60:
                text = str(e.microbatch) if e.kind is not EventKind.FB else f"{e.microbatch}|{e.backward_microbatch}"
                ax.text((e.start_s * scale) + width / 2, e.rank, text, ha="center", va="center",
                        fontsize=7, zorder=3)

    ax.set_ylim(num_ranks - 0.5, -0.5)
    ax.set_yticks(range(num_ranks))
    ax.set_yticklabels([f"rank {r}" + (" (critical)" if r == tl.critical_rank else "") for r in range(num_ranks)])
    ax.set_xlim(0, tl.makespan_s * scale * 1.005)
    ax.set_xlabel(f"time from the first forward ({unit})")
    ax.set_ylabel("pipeline rank")
    ax.grid(axis="x", color="#cccccc", linewidth=0.5, zorder=0)
    ax.set_axisbelow(True)

    bubble = tl.phases[tl.critical_rank].bubble_s
    title = "Pipeline timeline" + (f": {label}" if label else "")
    ax.set_title(
        f"{title}\nmakespan {_fmt_s(tl.makespan_s)}, {len(events):,} blocks on {num_ranks} ranks; "
        f"idle (bubble) on critical rank {tl.critical_rank}: {_fmt_s(bubble)} "
        f"({bubble / tl.makespan_s:.1%})"
        + ("; numbers: micro-batch id (FB: forward|backward)" if len(events) <= 200 else "")
        if tl.makespan_s else title,
        loc="left", fontsize=10,
    )
    kinds = [k for k in EventKind if any(key[1] is k for key in bars)]
    handles = [Patch(facecolor=KIND_COLOR[k], label=KIND_NAME[k]) for k in kinds]
    if two_dirs:
        handles.append(Patch(facecolor="white", edgecolor="black", label="→ direction 0 (enters at rank 0)"))
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="////",
                             label="← direction 1 (enters at last rank)"))
    handles.append(Patch(facecolor=IDLE_COLOR, label="idle (bubble)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12 if num_ranks > 4 else -0.25),
              ncol=min(len(handles), 4), fontsize=8, frameon=False)
    return _save(fig, path)


# --- step-time breakdown ----------------------------------------------------------------


def plot_breakdown(reports: Mapping[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Stacked horizontal bars of the step-time phases, one bar per plan label (first on
    top), total step time and tokens/s/GPU printed after each bar."""
    labels = list(reports)
    if not labels:
        raise ValueError("plot_breakdown needs at least one report")
    longest = max(r.step_time_s for r in reports.values())
    scale, unit = _time_unit(longest)
    fig = Figure(figsize=(11, max(2.6, 1.2 + 0.55 * len(labels))), dpi=120)
    ax = fig.add_subplot()
    ys = list(range(len(labels)))
    left = [0.0] * len(labels)
    for field, name, color in PHASES:
        widths = [getattr(reports[lab].breakdown, field) * scale for lab in labels]
        ax.barh(ys, widths, left=left, color=color, label=name, height=0.6, edgecolor="white", linewidth=0.5)
        left = [a + b for a, b in zip(left, widths)]
    for y, lab in zip(ys, labels):
        rep = reports[lab]
        ax.text(left[y] + longest * scale * 0.01, y,
                f"{rep.step_time_s * scale:.3g} {unit}  ({rep.tokens_per_s_per_gpu:,.0f} tok/s/GPU)"
                + ("  OOM" if not rep.fits else ""),
                va="center", fontsize=8)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlim(0, longest * scale * 1.3)
    ax.set_xlabel(f"step time ({unit})")
    ax.set_title(title or "Step time by phase (critical pipeline rank)", loc="left", fontsize=10)
    ax.grid(axis="x", color="#cccccc", linewidth=0.5)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, title="phase (left to right)",
              title_fontsize=8)
    return _save(fig, path)


# --- memory per rank --------------------------------------------------------------------


def plot_memory(report: Any, path: str | Path, *, label: str = "") -> Path:
    """Stacked bars of one GPU's memory on each pipeline rank (GiB), with the usable
    capacity as a dashed line; ranks over capacity are marked OOM."""
    stages = report.stages
    ranks = [st.rank for st in stages]
    fig = Figure(figsize=(max(6.0, 1.2 + 0.55 * len(stages)), 4.8), dpi=120)
    ax = fig.add_subplot()
    bottom = [0.0] * len(stages)
    for field, name, color in MEMORY:
        heights = [getattr(st.memory, field) / GIB for st in stages]
        ax.bar(ranks, heights, bottom=bottom, color=color, label=name, width=0.7, edgecolor="white", linewidth=0.5)
        bottom = [a + b for a, b in zip(bottom, heights)]
    capacity = max((st.memory.capacity_bytes for st in stages), default=report.memory_capacity_bytes) / GIB
    ax.axhline(capacity, color="#d62728", linestyle="--", linewidth=1.5, label=f"capacity {capacity:,.1f} GiB")
    for rank, st, top in zip(ranks, stages, bottom):
        if not st.memory.fits:
            ax.text(rank, top, "OOM", ha="center", va="bottom", color="#d62728", fontsize=8, fontweight="bold")
    ax.set_xticks(ranks)
    ax.set_xlim(min(ranks) - 0.6, max(ranks) + 0.6)
    ax.set_ylim(0, max(max(bottom), capacity) * 1.15)
    ax.set_xlabel("pipeline rank")
    ax.set_ylabel("memory per GPU (GiB)")
    peak = report.memory_peak_bytes / GIB
    ax.set_title(
        ("Memory per GPU by pipeline rank" + (f": {label}" if label else ""))
        + f"\npeak {peak:,.1f} GiB of {capacity:,.1f} GiB ({peak / capacity:.0%})",
        loc="left", fontsize=10,
    )
    ax.grid(axis="y", color="#cccccc", linewidth=0.5)
    ax.set_axisbelow(True)
    handles, names = ax.get_legend_handles_labels()  # top of the stack first, capacity on top
    ax.legend(handles[::-1], names[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


# --- validation scatter -----------------------------------------------------------------


def plot_validation(rows: Sequence[Mapping[str, str]], results: Sequence[Any], path: str | Path) -> Path:
    """Predicted vs measured step time of the validation cases (log-log), the y = x line
    and a ±10% band; one colour per source; OOM predictions drawn as crosses. Cases
    without a measured or predicted time are counted in the title, not drawn."""
    from planner.validation.run import CaseStatus, score

    summary = score(list(rows), list(results))
    drawn = [c for c in summary.cases if c.measured and c.predicted]
    fig = Figure(figsize=(11.5, 6.5), dpi=120)
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    values = [v for c in drawn for v in (c.measured, c.predicted)] or [0.1, 10.0]
    lo, hi = min(values) / 1.6, max(values) * 1.6
    line = [lo, hi]
    ax.fill_between(line, [v * (1 - BAND) for v in line], [v * (1 + BAND) for v in line],
                    color="#2ca02c", alpha=0.15, label=f"±{BAND:.0%}", zorder=1)
    ax.plot(line, line, color="black", linewidth=1, label="predicted = measured", zorder=2)
    sources = sorted({c.source for c in drawn})
    palette = [f"C{i}" for i in range(10)]
    for i, source in enumerate(sources):
        color = palette[i % len(palette)]
        ok = [c for c in drawn if c.source == source and c.status is CaseStatus.OK]
        other = [c for c in drawn if c.source == source and c.status is not CaseStatus.OK]
        if ok:
            ax.scatter([c.measured for c in ok], [c.predicted for c in ok], color=color, s=36, zorder=3,
                       edgecolors="black", linewidths=0.4, label=f"{source} ({len(ok)})")
        if other:
            ax.scatter([c.measured for c in other], [c.predicted for c in other], color=color, marker="x",
                       s=40, zorder=3, label=f"{source}: OOM ({len(other)})")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("measured step time (s)")
    ax.set_ylabel("predicted step time (s)")
    apes = [c.ape for c in drawn if c.ape is not None]
    within = sum(a <= BAND for a in apes)
    med = sorted(apes)[len(apes) // 2] if apes else None
    missing = len(summary.cases) - len(drawn)
    ax.set_title(
        "Validation: predicted vs measured step time\n"
        + (f"{len(apes)} ok cases, median APE {_median(apes):.1%}, {within} within ±{BAND:.0%}" if med is not None
           else "no ok case with a measured time")
        + (f"; {missing} not drawn (no measurement or no prediction)" if missing else ""),
        loc="left", fontsize=10,
    )
    ax.grid(which="both", color="#dddddd", linewidth=0.5)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title="source (cases drawn)",
              title_fontsize=8, frameon=False)
    return _save(fig, path)


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


# --- scaling curve ----------------------------------------------------------------------


def plot_scaling(points: Sequence[Mapping[str, Any]] | Any, path: str | Path, *, label: str = "") -> Path:
    """Two panels over the GPU count (log2 axis): left, total throughput (tokens/s) with the
    ideal linear scaling from the smallest run that fits; right, tokens/s per GPU labelled
    with the scaling efficiency (tokens/s per GPU relative to that smallest run). ``points``
    are rows (dicts or a DataFrame) with ``num_gpus`` (or ``cluster.num_gpus``),
    ``tokens_per_s_per_gpu`` and ``status``; points that do not run (``oom``,
    ``invalid``) are marked with their status on the axis."""
    rows = points.to_dict("records") if hasattr(points, "to_dict") else list(points)
    for r in rows:
        n = _finite(r.get("num_gpus"))
        r["num_gpus"] = int(n) if n == n else int(r["cluster.num_gpus"])
    ok = sorted((r for r in rows if r.get("status") == "ok"), key=lambda r: r["num_gpus"])
    bad = [r for r in rows if r.get("status") != "ok"]
    fig = Figure(figsize=(12, 4.6), dpi=120)
    total_ax, per_ax = fig.subplots(1, 2)
    ticks = sorted({r["num_gpus"] for r in rows})
    for ax in (total_ax, per_ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{x:,}" for x in ticks])
        ax.minorticks_off()
        ax.set_xlim(ticks[0] / 1.35, ticks[-1] * 1.35)
        ax.set_xlabel("GPUs")
        ax.grid(color="#dddddd", linewidth=0.5)
    if ok:
        xs = [r["num_gpus"] for r in ok]
        tps = [r["tokens_per_s_per_gpu"] for r in ok]
        total = [t * x / 1e6 for t, x in zip(tps, xs)]
        total_ax.plot(xs, total, "o-", color="#4c8bd6", label="simulated")
        total_ax.plot(xs, [total[0] * x / xs[0] for x in xs], "--", color="#7f7f7f", label="ideal (linear)")
        total_ax.set_ylim(0, max(max(total), total[0] * xs[-1] / xs[0]) * 1.15)
        for x, t in zip(xs, total):
            total_ax.annotate(f"{t:,.2f}M", (x, t), textcoords="offset points", xytext=(0, 7), ha="center",
                              fontsize=7)
        per_ax.plot(xs, tps, "s-", color="#d6404e", label="tokens/s per GPU")
        for x, t in zip(xs, tps):
            per_ax.annotate(f"{t:,.0f}\n{t / tps[0]:.0%}", (x, t), textcoords="offset points", xytext=(0, 7),
                            ha="center", fontsize=7)
        per_ax.set_ylim(0, max(tps) * 1.3)
    for r in bad:
        per_ax.plot([r["num_gpus"]], [0], marker="x", color="#7f7f7f", markersize=9, clip_on=False)
        per_ax.annotate(str(r.get("status")), (r["num_gpus"], 0), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=7, color="#7f7f7f")
    total_ax.set_ylabel("throughput (million tokens/s, all GPUs)")
    total_ax.set_title("Throughput vs GPUs", loc="left", fontsize=9)
    if label:
        fig.suptitle(f"Scaling: {label}", x=0.01, ha="left", fontsize=10)
    total_ax.legend(loc="upper left", fontsize=8, frameon=False)
    per_ax.set_ylabel("tokens/s per GPU")
    per_ax.set_title("Tokens/s per GPU; label: value and scaling efficiency\n(vs the smallest run that fits; "
                     "dp scaled with the GPUs, global batch fixed)", loc="left", fontsize=9)
    if bad:
        per_ax.plot([], [], "x", color="#7f7f7f", label="does not run (status)")
    per_ax.legend(loc="lower right", fontsize=8, frameon=False)
    return _save(fig, path)


# --- sweep heatmap ----------------------------------------------------------------------


def plot_heatmap(points: Sequence[Mapping[str, Any]] | Any, x: str, y: str, path: str | Path, *,
                 value: str = "step_time_s", value_label: str = "step time (s)", lower_is_better: bool = True,
                 title: str = "") -> Path:
    """``value`` over a grid of two knobs: ``x`` across, ``y`` down (rows of a sweep, dicts
    or a DataFrame, one per grid point). Cells that do not run show their status (OOM,
    invalid) in grey; the best cell is outlined."""
    rows = points.to_dict("records") if hasattr(points, "to_dict") else list(points)
    xs = sorted({r[x] for r in rows})
    ys = sorted({r[y] for r in rows})
    cell = {(r[x], r[y]): r for r in rows}
    values = [[_finite(cell.get((cx, cy), {}).get(value)) if cell.get((cx, cy), {}).get("status") == "ok"
               else float("nan") for cx in xs] for cy in ys]
    good = [v for row in values for v in row if v == v]
    fig = Figure(figsize=(max(5.5, 1.3 + 1.1 * len(xs)), max(3.5, 1.4 + 0.7 * len(ys))), dpi=120)
    ax = fig.add_subplot()
    import numpy as np
    from matplotlib import colormaps

    cmap = colormaps["viridis_r" if lower_is_better else "viridis"].with_extremes(bad=IDLE_COLOR)
    grid = np.ma.masked_invalid(np.array(values, dtype=float))
    image = ax.imshow(grid, cmap=cmap, aspect="auto")
    fig.colorbar(image, ax=ax, label=value_label)
    best = (min if lower_is_better else max)(good) if good else None
    for j, cy in enumerate(ys):
        for i, cx in enumerate(xs):
            v = values[j][i]
            r = cell.get((cx, cy))
            if v == v:
                text = _short(v)
            elif r:  # a point that does not run: its status, and its figure when it has one
                raw = _finite(r.get(value))
                text = str(r.get("status", "-")).upper() + (f"\n({_short(raw)})" if raw == raw else "")
            else:
                text = "-"
            dark = False
            if v == v and len(good) > 1 and max(good) > min(good):
                norm = (v - min(good)) / (max(good) - min(good))
                dark = norm > 0.5 if lower_is_better else norm < 0.5
            ax.text(i, j, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
            if best is not None and v == best:
                ax.add_patch(_outline(i, j))
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels([str(v) for v in xs])
    ax.set_yticks(range(len(ys)))
    ax.set_yticklabels([str(v) for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title((title or f"{value_label} over {y} x {x}") + ("; best outlined" if best is not None else ""),
                 loc="left", fontsize=10)
    return _save(fig, path)


def _finite(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f if f == f and abs(f) != float("inf") else float("nan")


def _short(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _outline(i: int, j: int):
    from matplotlib.patches import Rectangle

    return Rectangle((i - 0.5, j - 0.5), 1, 1, fill=False, edgecolor="#d62728", linewidth=2.5)


__all__ = ["plot_breakdown", "plot_heatmap", "plot_memory", "plot_pipeline", "plot_scaling", "plot_validation"]
