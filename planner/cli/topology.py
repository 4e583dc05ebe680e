"""``planner topology``: what the topology graph of a cluster holds, and a route."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from planner.cli import options
from planner.cli.main import app, reports_errors
from planner.cli.output import Format, write_result
from planner.errors import SpecError
from planner.hwmodels.topology import build_topology
from planner.presets import load_cluster


@app.command(epilog="Example: planner topology --cluster deepseek-v3-h800 --route 0,9 --out topo.png")
@reports_errors
def topology(
    cluster: str = options.cluster(),
    gpus: int = options.gpus(),
    route: str = typer.Option(None, "--route", help="Show the path between two GPUs, e.g. '0,9'."),
    fmt: Format = options.fmt(),
    out: str = typer.Option(None, "--out", "-o", help="Also draw the topology (first nodes, their switches) "
                            "to this .png, .svg or .pdf file."),
) -> None:
    """Summarise a cluster's topology graph: elements, link classes and their achievable
    bandwidth per direction (GB/s); optionally the route between two GPUs (latency in µs).
    Here --out names the drawing; the summary goes to stdout."""
    if out:  # matplotlib is imported only when a drawing is asked for
        from planner.report.topology_plot import check_suffix, draw_topology

        check_suffix(out)
    topo = build_topology(load_cluster(cluster, gpus))
    summary = topo.summary()
    if route:
        try:
            src, dst = (int(x) for x in route.split(","))
        except ValueError:
            raise SpecError("route", route, "must be two GPU indices 'SRC,DST'") from None
        summary["route"] = {
            "src": src,
            "dst": dst,
            "hops": [[str(a), str(b), topo.graph.edges[a, b]["kind"], topo.bandwidth((a, b))] for a, b in topo.route(src, dst)],
            "latency_s": topo.latency_s(src, dst),
        }
    if out:
        summary["drawing"] = str(draw_topology(topo, out))

    def table(console: Console) -> None:
        console.print(f"[bold]{summary['cluster']}[/bold]: {summary['gpus']:,} GPUs; elements: "
                      + ", ".join(f"{v:,} {k}" for k, v in summary["elements"].items()))
        links = Table("link class", "directed links", "achievable GB/s per direction")
        for kind, entry in summary["links"].items():
            links.add_row(kind, f"{entry['directed_links']:,}",
                          ", ".join(f"{b / 1e9:,.1f}" for b in entry["bandwidth_bytes_per_s"]))
        console.print(links)
        if route:
            r = summary["route"]
            console.print(f"route {r['src']} -> {r['dst']} (latency {r['latency_s'] * 1e6:.2f} us):")
            for a, b, kind, bw in r["hops"]:
                console.print(f"  {a} -> {b}  ({kind}, {bw / 1e9:,.1f} GB/s)", markup=False)
        if out:
            console.print(f"wrote {summary['drawing']}", markup=False, highlight=False, soft_wrap=True)

    write_result(summary, fmt, None, table=table)
