"""Cluster topology as a directed graph, and the route a byte takes between two GPUs.

:func:`build_topology` turns a :class:`~planner.specs.ClusterSpec` into a networkx
``DiGraph`` whose edges are link directions with an achievable bandwidth (bytes/s,
spec x achievable fraction from the preset) and a ``kind``:

- ``nvlink``: GPU <-> NVSwitch of its scale-up domain (HGX, NVL72), or GPU <-> GPU for
  NVLink-bridged pairs (Fire-Flyer 2);
- ``pcie``: GPU <-> its CPU root port, root port <-> host (capped per root port when GPUs
  share one, Fire-Flyer's GPU5/GPU6), NIC <-> host; on nodes without a PCIe description
  GPU i reaches NIC i * nics / gpus directly (GPUDirect through a PCIe switch);
- ``ib``: NIC <-> leaf switch of its plane and rail;
- ``uplink``: leaf <-> spine. The spine layer of one plane in one zone is a single node:
  with ECMP on a fat tree it behaves as one switch of that aggregate capacity; each leaf's
  uplink is its downlink capacity divided by the oversubscription;
- ``zone``: spine <-> spine between zones (Fire-Flyer 2's "limited number of links").

Routing (:meth:`Topology.route`) is deterministic and constructive, not a graph search:
inside an NVLink domain over NVLink; otherwise out of the sender's NIC. With several
planes (DeepSeek-V3's multi-plane fat tree) or rails, a flow to GPU j of another node uses
the plane/rail of j's NIC, first hopping over NVLink to the local GPU on that rail (the
forwarding DeepSeek-V3 §3.2.2 and NCCL's PXN do). Latency is end to end by class: the
scale-up latency inside a domain, the fabric's same-leaf or cross-leaf latency between
nodes (ISCA'25 Table 5); PCIe-only paths need ``pcie.latency_s`` in the preset.
"""

from __future__ import annotations

import itertools
from functools import cached_property
from dataclasses import dataclass, field

import networkx as nx

from planner.errors import SpecError, UnsupportedError
from planner.specs.hardware import ClusterSpec, FabricKind, NodeSpec, ScaleUpKind

Edge = tuple[tuple, tuple]


@dataclass(frozen=True)
class FabricLayout:
    """How nodes hang off leaves: derived once from the fabric spec."""

    nics_per_plane: int
    """NICs of one node in one plane (rails inside the plane)."""
    rails: int
    """Leaf groups per plane: one per NIC index for rail-optimized fabrics, else 1."""
    down_ports: int
    """Leaf ports toward NICs: radix * o / (1 + o) for oversubscription o."""
    nodes_per_leaf: int


def fabric_layout(cluster: ClusterSpec) -> FabricLayout:
    fabric, node = cluster.fabric, cluster.node
    nics_per_plane = node.nics_per_node // fabric.planes
    rail_optimized = fabric.kind is FabricKind.RAIL_OPTIMIZED
    rails = nics_per_plane if rail_optimized else 1
    o = fabric.oversubscription
    down = int(fabric.switch_radix * o / (1 + o))
    nics_per_leaf_per_node = 1 if rail_optimized else nics_per_plane
    nodes_per_leaf = down // nics_per_leaf_per_node
    if nodes_per_leaf < 1:
        raise SpecError(
            "fabric.switch_radix",
            fabric.switch_radix,
            f"a leaf has {down} down ports, fewer than one node's {nics_per_leaf_per_node} NICs",
        )
    return FabricLayout(nics_per_plane, rails, down, nodes_per_leaf)


def gpus_per_nic(node: NodeSpec) -> int:
    """GPUs sharing one scale-out NIC (1 on HGX nodes, 8 on Fire-Flyer 2)."""
    return max(1, node.gpus_per_node // node.nics_per_node)


def nic_index(node: NodeSpec, local_gpu: int) -> int:
    """The NIC (rail) a GPU's inter-node traffic leaves through: GPU i next to NIC
    i * nics / gpus, as on HGX boards where each PCIe switch pairs GPUs with NICs."""
    return min(local_gpu // gpus_per_nic(node), node.nics_per_node - 1)


@dataclass
class Topology:
    """The graph plus the routing rules over it."""

    cluster: ClusterSpec
    graph: nx.DiGraph
    layout: FabricLayout
    _routes: dict = field(default_factory=dict, repr=False)

    # --- where things are --------------------------------------------------------------

    def node_of(self, gpu: int) -> int:
        return gpu // self.cluster.node.gpus_per_node

    @cached_property
    def _domain_gpus(self) -> int:
        return self.cluster.job_domain_gpus

    def domain_of(self, gpu: int) -> int:
        return gpu // self._domain_gpus

    def zone_of(self, node: int) -> int:
        per_zone = self.cluster.fabric.nodes_per_zone
        return node // per_zone if per_zone else 0

    def nic_of(self, gpu: int) -> tuple:
        """The NIC a GPU's inter-node traffic leaves through (its rail)."""
        local = gpu % self.cluster.node.gpus_per_node
        return ("nic", self.node_of(gpu), nic_index(self.cluster.node, local))

    def plane_rail(self, nic: tuple) -> tuple[int, int]:
        index = nic[2]
        plane, within = divmod(index, self.layout.nics_per_plane)
        return plane, within % self.layout.rails

    def leaf_of(self, nic: tuple) -> tuple:
        node = nic[1]
        plane, rail = self.plane_rail(nic)
        zone = self.zone_of(node)
        first_node = zone * (self.cluster.fabric.nodes_per_zone or 0)
        return ("leaf", zone, plane, rail, (node - first_node) // self.layout.nodes_per_leaf)

    def gpu_on_rail(self, node: int, rail: int) -> int:
        """A GPU of ``node`` attached to NIC ``rail`` (the first one)."""
        return node * self.cluster.node.gpus_per_node + rail * gpus_per_nic(self.cluster.node)

    # --- routes ------------------------------------------------------------------------

    def _intra_node(self, src: int, dst: int) -> list[Edge]:
        if src == dst:
            return []
        up = self.cluster.node.scale_up
        if self.domain_of(src) == self.domain_of(dst) and up.kind is not ScaleUpKind.PCIE:
            if up.kind is ScaleUpKind.NVSWITCH:
                sw = ("nvswitch", self.domain_of(src))
                return [(("gpu", src), sw), (sw, ("gpu", dst))]
            return [(("gpu", src), ("gpu", dst))]
        if self.node_of(src) != self.node_of(dst):
            raise UnsupportedError(f"GPUs {src} and {dst} share no scale-up domain or node")
        return self._to_host(src) + self._from_host(dst)

    def _to_host(self, gpu: int) -> list[Edge]:
        port = self.graph.nodes[("gpu", gpu)]["root_port"]
        return [(("gpu", gpu), port), (port, ("host", self.node_of(gpu)))]

    def _from_host(self, gpu: int) -> list[Edge]:
        return [(b, a) for a, b in reversed(self._to_host(gpu))]

    def _gpu_to_nic(self, gpu: int, nic: tuple) -> list[Edge]:
        if self.cluster.node.pcie is None or self.cluster.node.pcie.root_ports is None:
            return [(("gpu", gpu), nic)]
        return self._to_host(gpu) + [(("host", nic[1]), nic)]

    def _fabric(self, nic_a: tuple, nic_b: tuple) -> list[Edge]:
        leaf_a, leaf_b = self.leaf_of(nic_a), self.leaf_of(nic_b)
        path = [(nic_a, leaf_a)]
        if leaf_a != leaf_b:
            spine_a = ("spine", leaf_a[1], leaf_a[2])
            spine_b = ("spine", leaf_b[1], leaf_b[2])
            path.append((leaf_a, spine_a))
            if spine_a != spine_b:
                path.append((spine_a, spine_b))
            path.append((spine_b, leaf_b))
        return path + [(leaf_b, nic_b)]

    def route(self, src: int, dst: int) -> tuple[Edge, ...]:
        """Directed edges a flow from GPU ``src`` to GPU ``dst`` crosses, in order."""
        key = (src, dst)
        if key in self._routes:
            return self._routes[key]
        for gpu in (src, dst):
            if not 0 <= gpu < self.cluster.num_gpus:
                raise SpecError("gpu", gpu, f"must be in [0, {self.cluster.num_gpus}) for {self.cluster.name}")
        if self.node_of(src) == self.node_of(dst) or self.domain_of(src) == self.domain_of(dst):
            path = self._intra_node(src, dst)
        else:
            # Leave through the NIC on the destination's plane/rail; forward inside the
            # source's NVLink domain to the GPU on that rail when it is not the sender.
            dst_nic = self.nic_of(dst)
            src_nic, sender, path = self.nic_of(src), src, []
            if (self.cluster.fabric.planes > 1 or self.layout.rails > 1) and src_nic[2] != dst_nic[2]:
                src_nic = ("nic", self.node_of(src), dst_nic[2])
                sender = self.gpu_on_rail(self.node_of(src), src_nic[2])
                path = self._intra_node(src, sender)
            path += self._gpu_to_nic(sender, src_nic) + self._fabric(src_nic, dst_nic)
            path += [(b, a) for a, b in reversed(self._gpu_to_nic(dst, dst_nic))]
        self._routes[key] = tuple(path)
        return self._routes[key]

    def latency_s(self, src: int, dst: int) -> float:
        """End-to-end small-message latency between two GPUs (ISCA'25 Table 5 classes)."""
        if src == dst:
            return 0.0
        kinds = {self.graph.edges[e]["kind"] for e in self.route(src, dst)}
        fabric = self.cluster.fabric
        if "uplink" in kinds or "zone" in kinds:
            return fabric.latency_cross_leaf_s
        if "ib" in kinds:
            return fabric.latency_same_leaf_s
        if "pcie" in kinds:
            pcie = self.cluster.node.pcie
            if pcie is None or pcie.latency_s is None:
                raise UnsupportedError(f"{self.cluster.name} gives no PCIe latency (node.pcie.latency_us)")
            return pcie.latency_s
        return self.cluster.node.scale_up.latency_s

    def bandwidth(self, edge: Edge) -> float:
        return self.graph.edges[edge]["bandwidth_bytes_per_s"]

    def summary(self) -> dict:
        """Counts of each element and link class, for ``planner topology``."""
        kinds: dict[str, int] = {}
        for key in self.graph.nodes:
            kinds[key[0]] = kinds.get(key[0], 0) + 1
        links: dict[str, dict] = {}
        for _, _, data in self.graph.edges(data=True):
            entry = links.setdefault(data["kind"], {"directed_links": 0, "bandwidth_bytes_per_s": set()})
            entry["directed_links"] += 1
            entry["bandwidth_bytes_per_s"].add(round(data["bandwidth_bytes_per_s"]))
        for entry in links.values():
            entry["bandwidth_bytes_per_s"] = sorted(entry["bandwidth_bytes_per_s"])
        return {"cluster": self.cluster.name, "gpus": self.cluster.num_gpus, "elements": kinds, "links": links}


def _link(g: nx.DiGraph, a: tuple, b: tuple, bandwidth: float, kind: str) -> None:
    """A full-duplex link: one directed edge each way, ``bandwidth`` per direction."""
    g.add_edge(a, b, bandwidth_bytes_per_s=bandwidth, kind=kind)
    g.add_edge(b, a, bandwidth_bytes_per_s=bandwidth, kind=kind)


def _add_node_internals(g: nx.DiGraph, cluster: ClusterSpec, n: int) -> None:
    node = cluster.node
    up, pcie = node.scale_up, node.pcie
    nvlink_bw = up.bandwidth_bytes_per_s * up.achievable_fraction
    nic_bw = node.nic_bandwidth_bytes_per_s * node.nic_achievable_fraction
    per_node, domain = node.gpus_per_node, cluster.job_domain_gpus
    gpus = range(n * per_node, (n + 1) * per_node)
    for gpu in gpus:
        g.add_node(("gpu", gpu), node=n)
        if up.kind is ScaleUpKind.NVSWITCH:
            _link(g, ("gpu", gpu), ("nvswitch", gpu // domain), nvlink_bw, "nvlink")
        elif up.kind is ScaleUpKind.NVLINK_BRIDGE_PAIRS and gpu % 2 == 0:
            _link(g, ("gpu", gpu), ("gpu", gpu + 1), nvlink_bw, "nvlink")
    for k in range(node.nics_per_node):
        g.add_node(("nic", n, k), node=n)
    if pcie is None or pcie.root_ports is None:
        # GPUDirect through a PCIe switch: GPU i next to NIC i * nics / gpus.
        link_bw = pcie.gpu_link_bandwidth_bytes_per_s if pcie else nic_bw
        for local in range(per_node):
            nic = ("nic", n, nic_index(node, local))
            _link(g, ("gpu", n * per_node + local), nic, min(link_bw, nic_bw), "pcie")
        return
    host = ("host", n)
    memory_bw = node.host.memory_bandwidth_bytes_per_s if node.host else float("inf")
    g.add_node(host, node=n, memory_bandwidth_bytes_per_s=memory_bw)
    for p, members in enumerate(pcie.root_ports):
        port = ("rootport", n, p)
        cap = pcie.root_port_bandwidth_bytes_per_s or pcie.gpu_link_bandwidth_bytes_per_s * len(members)
        _link(g, port, host, cap, "pcie")
        for local in members:
            gpu = ("gpu", n * per_node + local)
            _link(g, gpu, port, pcie.gpu_link_bandwidth_bytes_per_s, "pcie")
            g.nodes[gpu]["root_port"] = port
    for k in range(node.nics_per_node):
        _link(g, ("nic", n, k), host, nic_bw, "pcie")


def build_topology(cluster: ClusterSpec) -> Topology:
    """The topology graph of ``cluster`` (every node, NIC, leaf and aggregated spine)."""
    node, fabric = cluster.node, cluster.fabric
    pcie = node.pcie
    if pcie is not None and pcie.root_ports is not None:
        placed = sorted(i for port in pcie.root_ports for i in port)
        if placed != list(range(node.gpus_per_node)):
            raise SpecError(
                "node.pcie.root_ports", pcie.root_ports, f"must place each of the {node.gpus_per_node} GPUs once"
            )
    if fabric.zones > 1 and fabric.nodes_per_zone * fabric.zones < cluster.num_nodes:
        raise SpecError(
            "num_nodes", cluster.num_nodes, f"exceeds zones * nodes_per_zone ({fabric.zones * fabric.nodes_per_zone})"
        )
    layout = fabric_layout(cluster)
    g = nx.DiGraph(name=cluster.name)
    for n in range(cluster.num_nodes):
        _add_node_internals(g, cluster, n)
    topo = Topology(cluster, g, layout)
    nic_bw = node.nic_bandwidth_bytes_per_s * node.nic_achievable_fraction
    leaf_members: dict[tuple, int] = {}
    for n in range(cluster.num_nodes):
        for k in range(node.nics_per_node):
            nic = ("nic", n, k)
            leaf = topo.leaf_of(nic)
            leaf_members[leaf] = leaf_members.get(leaf, 0) + 1
            _link(g, nic, leaf, nic_bw, "ib")
    uplink_bw = layout.down_ports * nic_bw / fabric.oversubscription
    for leaf in leaf_members:
        _link(g, leaf, ("spine", leaf[1], leaf[2]), uplink_bw, "uplink")
    if fabric.zones > 1:
        cross = fabric.cross_zone_bandwidth_bytes_per_s / fabric.planes
        zones = sorted({leaf[1] for leaf in leaf_members})
        for plane in range(fabric.planes):
            for a, b in itertools.combinations(zones, 2):
                _link(g, ("spine", a, plane), ("spine", b, plane), cross, "zone")
    return topo
