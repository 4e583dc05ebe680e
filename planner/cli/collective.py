"""``planner collective``: time, algorithm and bandwidths of one collective on placed groups."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from planner.cli import options
from planner.cli.main import app, reports_errors
from planner.cli.output import Format, write_result
from planner.errors import SpecError
from planner.hwmodels.allocation import GroupLayout, job_gpus, layout_groups
from planner.hwmodels.collectives import Algorithm, CollectiveOp, collective_cost
from planner.presets import load_cluster

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> float:
    """``186MiB``, ``1GB``, ``4096`` -> bytes (KB/MB/GB/TB are powers of 10, KiB... of 2)."""
    match = _SIZE.match(text)
    if not match:
        raise SpecError("bytes", text, "must be a size such as 4096, 186MiB or 1GB (B, KB/MB/GB/TB, KiB/MiB/GiB/TiB)")
    return float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


@app.command(epilog="Example: planner collective --cluster fire-flyer-2 --job-gpus 1024 --zone-spread 2 "
                     "--op all_reduce --group-size 1024 --bytes 186MiB")
@reports_errors
def collective(
    cluster: str = options.cluster(),
    gpus: int = options.gpus(),
    op: CollectiveOp = typer.Option(..., "--op", help="Collective (nccl-tests names)."),
    group_size: int = typer.Option(..., "--group-size", "-n", help="GPUs per group (2 for p2p: [src, dst])."),
    nbytes: str = typer.Option(..., "--bytes", "-b", help="nccl-tests size: 186MiB, 1GB, 4096, ..."),
    layout: str = typer.Option("consecutive", "--layout", help="'consecutive' or 'strided:K' over the job's GPUs."),
    job: int = typer.Option(None, "--job-gpus", help="GPUs of the job (default: the whole cluster)."),
    first_node: int = typer.Option(0, "--first-node", help="First node of the job (a range may straddle zones)."),
    zone_spread: int = typer.Option(1, "--zone-spread", help="Split the job's nodes over this many zones."),
    algorithm: Algorithm = typer.Option(Algorithm.AUTO, "--algorithm", "-a", help="Algorithm (auto = fastest)."),
    fmt: Format = options.fmt("the result (csv: one row per link class)"),
    out: Path = options.out(),
) -> None:
    """Price one collective run by every group of a layout at once (sibling groups share
    links): time, algorithm, algbw and busbw (nccl-tests definitions), the bottleneck link
    class and the load on the busiest link of each class. Sizes in bytes (nccl-tests units),
    bandwidths in GB/s, times in s / ms / µs."""
    spec = load_cluster(cluster, gpus)
    size = parse_bytes(nbytes)
    parsed = GroupLayout.parse(layout)
    if group_size < 1:
        raise SpecError("group-size", group_size, "must be at least 1")
    if op is CollectiveOp.P2P and group_size != 2:
        raise SpecError("group-size", group_size, "p2p takes pairs [src, dst]: use --group-size 2")
    if group_size > spec.num_gpus:
        raise SpecError("group-size", group_size, f"larger than the {spec.num_gpus} GPUs of {spec.name}")
    placed = job_gpus(spec, job, first_node, zone_spread)
    groups = layout_groups(placed, group_size, parsed)
    cost = collective_cost(spec, op, groups, size, algorithm)
    result = {
        "cluster": spec.name,
        "op": str(op),
        "groups": int(groups.shape[0]),
        "group_size": group_size,
        "layout": str(parsed),
        "first_group": groups[0].tolist() if group_size <= 16 else f"{groups[0][:4].tolist()} ... ({group_size})",
        "nodes_per_group": int(np.unique(groups[0] // spec.node.gpus_per_node).size),
        "bytes": size,
        "algorithm": str(cost.algorithm),
        "time_s": cost.time_s,
        "latency_s": cost.latency_s,
        "algbw_bytes_per_s": cost.algbw_bytes_per_s,
        "busbw_bytes_per_s": cost.busbw_bytes_per_s,
        "bottleneck": str(cost.bottleneck),
        "link_loads": [
            {"link": str(load.link), "bytes": load.bytes, "bandwidth_bytes_per_s": load.bandwidth_bytes_per_s,
             "time_s": load.time_s}
            for load in cost.link_loads
        ],
    }
    def table(console: Console) -> None:
        console.print(
            f"[bold]{op}[/bold] of {size:,.0f} B on {result['groups']:,} x {group_size} GPUs ({result['layout']}, "
            f"{result['nodes_per_group']} node(s) per group) on {spec.name}"
        )
        summary = Table("algorithm", "time", "algbw GB/s", "busbw GB/s", "latency us", "bottleneck")
        summary.add_row(result["algorithm"], _seconds(cost.time_s), f"{cost.algbw_bytes_per_s / 1e9:,.2f}",
                      f"{cost.busbw_bytes_per_s / 1e9:,.2f}", f"{cost.latency_s * 1e6:,.2f}", result["bottleneck"])
        console.print(summary)
        if cost.link_loads:
            loads = Table("link class", "busiest link GB", "achievable GB/s", "time")
            for load in cost.link_loads:
                loads.add_row(str(load.link), f"{load.bytes / 1e9:,.3f}", f"{load.bandwidth_bytes_per_s / 1e9:,.1f}",
                              _seconds(load.time_s))
            console.print(loads)

    rows = [{"cluster": spec.name, "op": str(op), "groups": result["groups"], "group_size": group_size,
             "layout": result["layout"], "bytes": size, "algorithm": result["algorithm"], "time_s": cost.time_s,
             "busbw_bytes_per_s": cost.busbw_bytes_per_s, "bottleneck": result["bottleneck"],
             **{f"busiest_{k}" if k != "link" else k: v for k, v in load.items()}}
            for load in result["link_loads"]] or [{k: v for k, v in result.items() if k != "link_loads"}]
    write_result(result, fmt, out, table=table, rows=rows)


def _seconds(value: float) -> str:
    if value >= 1:
        return f"{value:,.3f} s"
    if value >= 1e-3:
        return f"{value * 1e3:,.3f} ms"
    return f"{value * 1e6:,.2f} us"
