"""A schematic drawing of a cluster's topology graph (``planner topology --out topo.png``).

Drawing every element of a 2,048-GPU graph gives a hairball, so :func:`draw_topology`
draws a reduced graph: the first ``max_nodes`` server nodes with their internals (GPUs,
the NVSwitch bar or NVLink-bridge arcs, PCIe root ports and the host/CPU where the preset
describes them, NICs labelled with their plane and rail), the leaf switches those NICs
hang off, and the spine of every plane (and zone) they reach. On a fabric with several
populated zones the shown nodes are split across the zones, so that the cross-zone link
and a zone boundary appear.

Layers go bottom to top: (NVSwitch) GPUs, root ports, host, NICs, leaves, spines. Edge
colour is the link kind (``nvlink``, ``pcie``, ``ib``, ``uplink``, ``zone``); the legend
gives each kind's achievable bandwidth per direction in GB/s, the value the collective
cost model uses. The spine of one plane in one zone is one aggregated node in the graph
(ECMP over a fat tree), whatever the number of tiers, and is drawn as such.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from planner.errors import SpecError
from planner.hwmodels.topology import Topology

SUFFIXES = (".png", ".svg", ".pdf")

KIND_STYLE = {  # colour, line width, line style, legend name
    "nvlink": ("#2e9d3a", 2.2, "-", "NVLink"),
    "pcie": ("#e07b00", 1.6, "-", "PCIe / host link"),
    "ib": ("#1f5fbf", 1.0, "-", "scale-out NIC-leaf"),
    "uplink": ("#7b3fa8", 2.0, "-", "leaf-spine uplink"),
    "zone": ("#d62728", 2.6, "--", "cross-zone"),
}
FACE = {
    "gpu": "#cfeccf",
    "nvswitch": "#b9c9b9",
    "rootport": "#fde3c0",
    "host": "#f2d7a6",
    "nic": "#cfe0fa",
    "leaf": "#e3d5f0",
    "spine": "#cdb4e3",
}
BOX_H = 0.5


def check_suffix(path: str | Path, option: str = "--out") -> Path:
    """``path`` as a Path if it ends in a format the drawing can be written in."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise SpecError(option, str(path), f"must end in {', '.join(SUFFIXES[:-1])} or {SUFFIXES[-1]}")
    return path


def shown_nodes(topo: Topology, max_nodes: int) -> list[int]:
    """The server nodes to draw: the first ``max_nodes``; split evenly over the populated
    zones (first nodes of each) when the fabric has several, so a cross-zone link shows."""
    cluster = topo.cluster
    num = cluster.num_nodes
    per_zone = cluster.fabric.nodes_per_zone if cluster.fabric.zones > 1 else None
    if not per_zone or num <= per_zone or max_nodes < 2:
        return list(range(min(max_nodes, num)))
    zones = [list(range(start, min(start + per_zone, num))) for start in range(0, num, per_zone)]
    zones = zones[:max_nodes]
    share, extra = divmod(max_nodes, len(zones))
    picked: list[int] = []
    for z, members in enumerate(zones):
        picked += members[: share + (1 if z < extra else 0)]
    return picked


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _fmt_gbs(values: set[float]) -> str:
    shown = sorted({round(v / 1e9, 1) for v in values})
    return " / ".join(f"{v:g}" for v in shown) + " GB/s"


def _legend_value(by_ends: dict[str, set[float]]) -> str:
    """One figure when a kind has one bandwidth, else the figure of each element pair."""
    every = set().union(*by_ends.values())
    if len({round(v / 1e9, 1) for v in every}) == 1:
        return _fmt_gbs(every)
    return ", ".join(f"{ends} {_fmt_gbs(values)}" for ends, values in sorted(by_ends.items()))


class _Canvas:
    """Boxes in data coordinates, remembered by graph key for drawing edges."""

    def __init__(self, ax, fontsize: float):
        self.ax, self.fontsize = ax, fontsize
        self.pos: dict[tuple, tuple[float, float, float]] = {}  # key -> (x, y, half width)

    def box(self, key: tuple, x: float, y: float, width: float, label: str, face: str, fontsize=None) -> None:
        self.pos[key] = (x, y, width / 2)
        self.ax.add_patch(FancyBboxPatch(
            (x - width / 2, y - BOX_H / 2), width, BOX_H, boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor=face, edgecolor="#444444", linewidth=0.8, zorder=3))
        self.ax.text(x, y, label, ha="center", va="center", fontsize=fontsize or self.fontsize, zorder=4)

    def line(self, a: tuple, b: tuple, kind: str) -> None:
        colour, width, style, _ = KIND_STYLE.get(kind, ("#777777", 1.0, "-", kind))
        (xa, ya, _), (xb, yb, _) = self.pos[a], self.pos[b]
        self.ax.plot([xa, xb], [ya, yb], color=colour, linewidth=width, linestyle=style,
                     alpha=0.75, zorder=1, solid_capstyle="round")


def draw_topology(topology: Topology, path: str | Path, max_nodes: int = 4) -> Path:
    """Write a schematic of ``topology`` to ``path`` (PNG, SVG or PDF by suffix); returns it.

    Shows ``max_nodes`` server nodes (see :func:`shown_nodes`) with their internals, the
    leaves and spines they reach, link kinds by colour with achievable GB/s per direction.
    """
    path = check_suffix(path, "path")
    if max_nodes < 1:
        raise SpecError("max_nodes", max_nodes, "must be at least 1")
    topo, g = topology, topology.graph
    cluster = topo.cluster
    node, fabric = cluster.node, cluster.fabric
    nodes = shown_nodes(topo, max_nodes)
    per_node = node.gpus_per_node
    has_host = any(("host", n) in g for n in nodes)

    # --- horizontal extent: one block per server node, a gap between zones -----------
    slots = max(per_node, node.nics_per_node)
    block = slots + 1.2
    zone_gap = 2.5
    x0: dict[int, float] = {}
    x, prev_zone = 0.0, None
    for n in nodes:
        z = topo.zone_of(n)
        if prev_zone is not None and z != prev_zone:
            x += zone_gap
        x0[n], prev_zone = x, z
        x += block
    width = x - 1.2

    y_gpu = 0.0
    y_rp, y_host = 1.3, 2.5
    y_nic = 3.8 if has_host else 1.8
    y_leaf = y_nic + 2.6
    y_spine = y_leaf + 2.2

    fig_w = min(26.0, max(11.0, width * 0.52 + 4.5))
    fig = Figure(figsize=(fig_w, 7.2 if has_host else 6.4), dpi=110)
    ax = fig.add_axes((0.02, 0.1, 0.76, 0.78))
    ax.set_axis_off()
    cv = _Canvas(ax, fontsize=7)
    gpu_w = 0.8

    def gx(gpu: int) -> float:
        n = gpu // per_node
        return x0[n] + (slots - per_node) / 2 + gpu % per_node + 0.5

    # --- node internals ------------------------------------------------------------------
    up = node.scale_up
    domains: dict[int, list[int]] = {}
    for n in nodes:
        z = topo.zone_of(n)
        top = y_nic + BOX_H / 2 + 0.35
        bottom = y_gpu - BOX_H / 2 - (0.95 if up.kind.value != "pcie" else 0.3)
        ax.add_patch(FancyBboxPatch(
            (x0[n] - 0.1, bottom), slots + 0.2, top - bottom, boxstyle="round,pad=0.05,rounding_size=0.2",
            facecolor="#f7f7f7", edgecolor="#bbbbbb", linewidth=0.8, linestyle=":", zorder=0))
        zone_note = f", zone {z}" if fabric.zones > 1 else ""
        ax.text(x0[n], top + 0.08, f"node {n}{zone_note}", fontsize=7.5, color="#555555", ha="left",
                va="bottom", zorder=5, bbox=dict(facecolor="white", edgecolor="none", pad=0.8, alpha=0.9))
        for local in range(per_node):
            gpu = n * per_node + local
            cv.box(("gpu", gpu), gx(gpu), y_gpu, gpu_w, f"G{gpu}", FACE["gpu"])
            domains.setdefault(topo.domain_of(gpu), []).append(gpu)
        for k in range(node.nics_per_node):
            nic = ("nic", n, k)
            plane, rail = topo.plane_rail(nic)
            attached = [n * per_node + i for i in range(per_node) if topo.nic_of(n * per_node + i) == nic]
            nx_ = sum(map(gx, attached)) / len(attached) if attached else x0[n] + k + 0.5
            tag = []
            if fabric.planes > 1:
                tag.append(f"P{plane}")
            if topo.layout.rails > 1:
                tag.append(f"R{rail}")
            label = f"NIC{k}" + ("\n" + " ".join(tag) if tag else "")
            cv.box(nic, nx_, y_nic, min(gpu_w, 0.9), label, FACE["nic"], fontsize=6.5)
        if ("host", n) in g:
            host_bw = g.nodes[("host", n)].get("memory_bandwidth_bytes_per_s", float("inf"))
            sockets = node.host.cpu_sockets if node.host else None
            label = "host / CPU" + (f" ({sockets} sockets)" if sockets else "")
            if host_bw != float("inf"):
                label += f"\nmemory {host_bw / 1e9:g} GB/s"
            cv.box(("host", n), x0[n] + slots / 2, y_host, min(slots * 0.8, 5.0), label, FACE["host"])
            ports = sorted(key for key in g.successors(("host", n)) if key[0] == "rootport")
            for port in ports:
                members = [gpu for gpu in range(n * per_node, (n + 1) * per_node)
                           if g.nodes[("gpu", gpu)].get("root_port") == port]
                px = sum(map(gx, members)) / len(members)
                wide = gpu_w + (len(members) - 1)
                cv.box(port, px, y_rp, wide * 0.9, f"RP{port[2]}", FACE["rootport"], fontsize=6.5)

    # NVSwitch: one bar under the GPUs of each scale-up domain shown.
    y_sw = y_gpu - BOX_H / 2 - 0.45
    if up.kind.value == "nvswitch":
        for d, gpus in domains.items():
            by_node: dict[int, list[int]] = {}
            for gpu in gpus:
                by_node.setdefault(gpu // per_node, []).append(gpu)
            label = "NVSwitch" if up.domain_gpus <= per_node else (
                f"NVSwitch domain {d} ({up.domain_gpus} GPUs, {len(gpus)} shown)")
            left = min(map(gx, gpus)) - gpu_w / 2
            right = max(map(gx, gpus)) + gpu_w / 2
            key = ("nvswitch", d)
            cv.pos[key] = ((left + right) / 2, y_sw, (right - left) / 2)
            ax.add_patch(FancyBboxPatch(
                (left, y_sw - 0.14), right - left, 0.28, boxstyle="round,pad=0.01,rounding_size=0.05",
                facecolor=FACE["nvswitch"], edgecolor="#444444", linewidth=0.8, zorder=3))
            ax.text((left + right) / 2, y_sw, label, ha="center", va="center", fontsize=6.5, zorder=4)

    # --- fabric: leaves and spines the shown NICs reach -----------------------------------
    leaves = sorted({b for n in nodes for k in range(node.nics_per_node)
                     for b in g.successors(("nic", n, k)) if b[0] == "leaf"})
    spines = sorted({b for leaf in leaves for b in g.successors(leaf) if b[0] == "spine"})
    spines += sorted({b for s in spines for b in g.successors(s) if b[0] == "spine" and b not in spines})
    zones = sorted({leaf[1] for leaf in leaves} | {s[1] for s in spines})
    span: dict[int, tuple[float, float]] = {}
    for z in zones:
        xs = [x0[n] for n in nodes if topo.zone_of(n) == z]
        if xs:
            span[z] = (min(xs), max(xs) + slots)
        else:  # a zone reached only over the cross-zone link: room on the right
            right = max((s[1] for s in span.values()), default=0.0) + zone_gap
            span[z] = (right, right + 4.0)
            width = max(width, right + 4.0)
    for z in zones:
        lo, hi = span[z]
        mine = [leaf for leaf in leaves if leaf[1] == z]
        step = (hi - lo) / max(len(mine), 1)
        leaf_w = min(2.6, 0.85 * step)
        for i, leaf in enumerate(mine):
            _, _, plane, rail, idx = leaf
            parts = ([f"Z{z}"] if fabric.zones > 1 else []) + ([f"P{plane}"] if fabric.planes > 1 else [])
            parts += [f"R{rail}"] if topo.layout.rails > 1 else []
            label = "leaf" + (" " + " ".join(parts) if parts else "") + (f" #{idx}" if idx else "")
            cv.box(leaf, lo + step * (i + 0.5), y_leaf, leaf_w, label, FACE["leaf"], fontsize=6.5)
        for spine in (s for s in spines if s[1] == z):
            below = [cv.pos[leaf][0] for leaf in leaves if leaf[1] == z and leaf[2] == spine[2]]
            sx = sum(below) / len(below) if below else (lo + hi) / 2
            parts = ([f"Z{z}"] if fabric.zones > 1 else []) + ([f"P{spine[2]}"] if fabric.planes > 1 else [])
            label = "spine" + (" " + " ".join(parts) if parts else "")
            if fabric.planes == 1:
                upper = f"tiers 2-{fabric.tiers}" if fabric.tiers > 2 else "tier 2"
                label += f"\n({upper} aggregated, ECMP)"
            sw = min(2.6, 0.85 * step) if fabric.planes > 1 else min(5.0, hi - lo)
            cv.box(spine, sx, y_spine, sw, label, FACE["spine"], fontsize=6.5)

    # Zone boundaries: a dashed vertical line between zones.
    for a, b in zip(zones, zones[1:]):
        bx = (span[a][1] + span[b][0]) / 2
        ax.plot([bx, bx], [y_gpu - 1.2, y_spine + 0.7], color="#d62728", linestyle=(0, (6, 4)),
                linewidth=1.2, zorder=0)
        ax.text(bx - 0.15, y_spine + 0.75, f"zone {a}", ha="right", va="bottom", fontsize=8, color="#d62728")
        ax.text(bx + 0.15, y_spine + 0.75, f"zone {b}", ha="left", va="bottom", fontsize=8, color="#d62728")

    if fabric.zones > 1 and len(zones) == 1:
        lo, hi = span[zones[0]]
        note = (f"zone {zones[0]} of {fabric.zones}\n({fabric.nodes_per_zone:,} nodes per zone;\n"
                f"only this zone is populated\nat {_count(cluster.num_nodes, 'node')})")
        ax.text(hi + 0.3, y_spine, note, ha="left", va="center", fontsize=7.5, color="#d62728", zorder=4)
        width = max(width, hi + 4.5)

    # --- edges between drawn elements, one per full-duplex link ----------------------------
    bandwidths: dict[str, dict[str, set[float]]] = {}
    drawn: set[frozenset] = set()
    for a, b, data in g.edges(data=True):
        if a not in cv.pos or b not in cv.pos or frozenset((a, b)) in drawn:
            continue
        drawn.add(frozenset((a, b)))
        kind = data["kind"]
        ends = "-".join(sorted((a[0], b[0]), key=list(FACE).index))
        bandwidths.setdefault(kind, {}).setdefault(ends, set()).add(data["bandwidth_bytes_per_s"])
        colour, lw, style, _ = KIND_STYLE.get(kind, ("#777777", 1.0, "-", kind))
        if "nvswitch" in (a[0], b[0]):
            gpu = a if a[0] == "gpu" else b
            xg = cv.pos[gpu][0]
            ax.plot([xg, xg], [y_gpu - BOX_H / 2, y_sw + 0.14], color=colour, linewidth=lw, zorder=1)
        elif a[0] == "gpu" and b[0] == "gpu":  # NVLink bridge: an arc under the pair
            (xa, ya, _), (xb, yb, _) = cv.pos[a], cv.pos[b]
            ax.add_patch(FancyArrowPatch(
                (xa, ya - BOX_H / 2), (xb, yb - BOX_H / 2), connectionstyle="arc3,rad=0.6",
                arrowstyle="-", color=colour, linewidth=lw + 0.8, zorder=2))
        else:
            cv.line(a, b, kind)

    # --- legend, title, footnote --------------------------------------------------------------
    handles = []
    for kind, (colour, lw, style, name) in KIND_STYLE.items():
        if kind in bandwidths:
            handles.append(Line2D([], [], color=colour, linewidth=lw + 0.5, linestyle=style,
                                  label=f"{name} ({kind}): {_legend_value(bandwidths[kind])}"))
    ax.legend(handles=handles, title="link kind: achievable bandwidth per direction",
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title_fontsize=8, frameon=True)

    zones_note = f", {fabric.zones} zones" if fabric.zones > 1 else ""
    if up.kind.value == "nvswitch":
        scale_up = f"NVSwitch domain of {up.domain_gpus} GPUs"
    elif up.kind.value == "nvlink-bridge-pairs":
        scale_up = "NVLink bridges on GPU pairs, PCIe root ports to the CPU"
    else:
        scale_up = "PCIe only"
    fig.suptitle(
        f"{cluster.name}: {cluster.num_gpus:,} x {cluster.gpu.name} "
        f"({_count(cluster.num_nodes, 'node')} x {per_node})\n"
        f"{scale_up}; {node.nics_per_node} NIC{'s' if node.nics_per_node > 1 else ''} per node; fabric "
        f"{fabric.kind.value}, {fabric.planes} plane{'s' if fabric.planes > 1 else ''}, "
        f"{fabric.tiers} tiers{zones_note}",
        fontsize=11, y=0.985)
    shown_gpus = len(nodes) * per_node
    picked = ", ".join(str(n) for n in nodes)
    fig.text(0.02, 0.02,
             f"showing {len(nodes)} of {_count(cluster.num_nodes, 'node')} "
             f"(node{'s' if len(nodes) > 1 else ''} {picked}; {shown_gpus:,} of {cluster.num_gpus:,} GPUs), "
             f"the {len(leaves)} leaf and {len(spines)} spine switch(es) they reach. "
             "A spine box is one plane's (zone's) spine layer aggregated (ECMP).",
             fontsize=8, color="#333333", ha="left", va="bottom")

    ax.set_xlim(-0.6, width + 0.6)
    ax.set_ylim(y_gpu - 1.3, y_spine + 1.1)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=path.suffix.lower()[1:], bbox_inches="tight")
    return path
