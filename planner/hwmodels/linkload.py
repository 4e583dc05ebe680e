"""Per-link-class load accounting for collectives, vectorised over GPUs.

A collective's traffic is a set of flows (bytes from GPU a to GPU b, or aggregated per
node and rail). Each flow loads the link instances on its path; the busiest instance of each
link class, divided by that class's achievable bandwidth, bounds the time. This module owns
the path rules (the same ones :class:`~planner.hwmodels.topology.Topology` routes by) as
numpy arrays indexed by physical GPU, so a collective on 16,384 GPUs is a few ``bincount``
calls and never walks the networkx graph.

Link classes and their instances (capacities are per direction unless said):

- ``nvlink``: a GPU's NVSwitch port (send and receive separately), or one direction of an
  NVLink bridge (Fire-Flyer pairs);
- ``pcie``: a GPU's PCIe link to its root port or PCIe switch;
- ``root-port``: a CPU root port shared by several GPUs (Fire-Flyer GPU5/GPU6), with an
  optional cap on both directions together (``pcie.root_port_duplex_bandwidth``);
- ``host-memory``: a node's DRAM, reads plus writes (HFReduce only);
- ``gpu-nic-p2p``: GPUDirect traffic through a NIC on CPUs without chained writes (EPYC
  Rome, ``pcie.gpu_nic_p2p_bandwidth``);
- ``nic``: a NIC, send and receive separately;
- ``uplink``: a leaf's links toward the spines, capacity ``down_ports * nic / oversubscription``;
- ``cross-zone``: the links between zones, in total and per node-pair flow.

A flow between two nodes leaves through the NIC on the *destination* GPU's rail/plane,
after an NVLink hop to the local GPU on that rail when the sender is elsewhere (NCCL's PXN,
DeepSeek-V3 §3.2.2), exactly as :meth:`Topology.route`.

Loads are kept as coefficients (bytes on the busiest instance per byte of the collective's
``nbytes``), so one profile prices every message size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from planner.errors import SpecError, UnsupportedError
from planner.hwmodels.topology import fabric_layout, nic_index
from planner.specs.hardware import ClusterSpec, FabricKind, ScaleUpKind


class LinkClass(StrEnum):
    """The link class that bounds a collective (a ``str``: compares equal to its value)."""

    NVLINK = "nvlink"
    PCIE = "pcie"
    ROOT_PORT = "root-port"
    HOST_MEMORY = "host-memory"
    GPU_NIC_P2P = "gpu-nic-p2p"
    NIC = "nic"
    UPLINK = "uplink"
    CROSS_ZONE = "cross-zone"
    LATENCY = "latency"
    """No bytes to move: the time is latency only."""
    NONE = "none"
    """Nothing to do (groups of one GPU)."""


@dataclass(frozen=True)
class LinkLoad:
    """Load on the busiest instance of one link class."""

    link: LinkClass
    bytes: float
    """Bytes through that instance (per direction, or both for a duplex cap)."""
    bandwidth_bytes_per_s: float
    """Its achievable bandwidth."""

    @property
    def time_s(self) -> float:
        return self.bytes / self.bandwidth_bytes_per_s

    def scaled(self, nbytes: float) -> LinkLoad:
        return LinkLoad(self.link, self.bytes * nbytes, self.bandwidth_bytes_per_s)


@dataclass(frozen=True)
class Phase:
    """One step of a collective: a latency plus bytes over the busiest link.

    ``loads`` are per byte of the collective's ``nbytes``; phases of one collective run one
    after another (hierarchical all-reduce) and their times add."""

    latency_s: float
    loads: tuple[LinkLoad, ...]

    @property
    def seconds_per_byte(self) -> float:
        return max((load.time_s for load in self.loads), default=0.0)

    def time_s(self, nbytes: float) -> float:
        return self.latency_s + nbytes * self.seconds_per_byte

    @property
    def bottleneck(self) -> LinkClass:
        if not self.loads:
            return LinkClass.LATENCY
        return max(self.loads, key=lambda load: load.time_s).link

    def scaled(self, factor: float) -> Phase:
        loads = tuple(LinkLoad(load.link, load.bytes * factor, load.bandwidth_bytes_per_s) for load in self.loads)
        return Phase(self.latency_s, loads)


class ClusterMaps:
    """Per-GPU and per-node lookup arrays and link capacities of one cluster."""

    def __init__(self, cluster: ClusterSpec):
        node, fabric, up = cluster.node, cluster.fabric, cluster.node.scale_up
        self.cluster = cluster
        self.gpn = node.gpus_per_node
        self.num_nodes = cluster.num_nodes
        self.num_gpus = cluster.num_gpus
        self.nics = node.nics_per_node
        self.domain_gpus = cluster.job_domain_gpus
        self.scale_up_kind = up.kind
        # An island is what NVLink joins without a NIC: the node, or the job's segment of an
        # NVL72 rack.
        self.island_gpus = max(self.gpn, self.domain_gpus)
        self.local_rail = np.array([nic_index(node, i) for i in range(self.gpn)], dtype=np.int64)
        # The GPU a NIC's traffic enters through (the first on its rail; GPU 0 for a NIC no
        # GPU is next to).
        on_rail = [np.flatnonzero(self.local_rail == r) for r in range(self.nics)]
        self.rail_first_gpu = np.array([int(g[0]) if g.size else 0 for g in on_rail], dtype=np.int64)
        pcie = node.pcie
        self.pcie_bw = pcie.gpu_link_bandwidth_bytes_per_s if pcie else None
        self.p2p_bw = pcie.gpu_nic_p2p_bandwidth_bytes_per_s if pcie else None
        self.has_root_ports = pcie is not None and pcie.root_ports is not None
        self.local_port = np.arange(self.gpn, dtype=np.int64)
        self.port_bw = np.full(self.gpn, np.inf)
        self.port_duplex_bw = None
        if self.has_root_ports:
            self.local_port = np.empty(self.gpn, dtype=np.int64)
            self.port_bw = np.empty(len(pcie.root_ports))
            for p, members in enumerate(pcie.root_ports):
                self.local_port[members] = p
                shared = pcie.gpu_link_bandwidth_bytes_per_s * len(members)
                self.port_bw[p] = pcie.root_port_bandwidth_bytes_per_s or shared
            self.port_duplex_bw = pcie.root_port_duplex_bandwidth_bytes_per_s
        self.ports_per_node = int(self.port_bw.size)
        self.nvlink_bw = up.bandwidth_bytes_per_s * up.achievable_fraction
        self.nic_bw = node.nic_bandwidth_bytes_per_s * node.nic_achievable_fraction
        self.memory_bw = node.host.memory_bandwidth_bytes_per_s if node.host else None
        self.cpu_sockets = node.host.cpu_sockets if node.host else 1
        self.cpu_allreduce = bool(node.host and node.host.cpu_allreduce)
        # Fabric: leaves per (zone, plane, rail, block), as Topology.leaf_of.
        layout = fabric_layout(cluster)
        self.nics_per_plane, self.rails = layout.nics_per_plane, layout.rails
        self.nodes_per_leaf = layout.nodes_per_leaf
        self.uplink_bw = layout.down_ports * self.nic_bw / fabric.oversubscription
        self.zones = fabric.zones
        self.nodes_per_zone = fabric.nodes_per_zone if fabric.zones > 1 else self.num_nodes
        if fabric.zones > 1 and fabric.zones * fabric.nodes_per_zone < self.num_nodes:
            raise SpecError(
                "fabric.nodes_per_zone", fabric.nodes_per_zone,
                f"{fabric.zones} zones x {fabric.nodes_per_zone} nodes leave nodes of the {self.num_nodes}-node"
                " cluster in no zone",
            )
        self.leaf_blocks = -(-self.nodes_per_zone // self.nodes_per_leaf)
        # leaf id = ((zone * planes + plane) * rails + rail_in_plane) * blocks + block, split
        # into a node part and a rail part so a lookup is two gathers and an add.
        planes = self.nics // self.nics_per_plane
        nodes = np.arange(self.num_nodes)
        zone = nodes // self.nodes_per_zone
        block = (nodes - zone * self.nodes_per_zone) // self.nodes_per_leaf
        self._leaf_node = zone * planes * self.rails * self.leaf_blocks + block
        plane, within = np.divmod(np.arange(self.nics), self.nics_per_plane)
        self._leaf_rail = (plane * self.rails + within % self.rails) * self.leaf_blocks
        self.cross_zone_bw = fabric.cross_zone_bandwidth_bytes_per_s
        self.cross_zone_flow_bw = fabric.cross_zone_flow_bandwidth_bytes_per_s
        self.scale_up_latency_s = up.latency_s
        self.pcie_latency_s = pcie.latency_s if pcie else None
        self.same_leaf_latency_s = fabric.latency_same_leaf_s
        self.cross_leaf_latency_s = fabric.latency_cross_leaf_s
        self.rail_optimized = fabric.kind is FabricKind.RAIL_OPTIMIZED

    # --- where things are (vectorised) -------------------------------------------------

    def node(self, gpu: np.ndarray) -> np.ndarray:
        return gpu // self.gpn

    def island(self, gpu: np.ndarray) -> np.ndarray:
        return gpu // self.island_gpus

    def domain(self, gpu: np.ndarray) -> np.ndarray:
        return gpu // self.domain_gpus

    def rail(self, gpu: np.ndarray) -> np.ndarray:
        return self.local_rail[gpu % self.gpn]

    def zone(self, node: np.ndarray) -> np.ndarray:
        return node // self.nodes_per_zone

    def leaf(self, node: np.ndarray, rail: np.ndarray) -> np.ndarray:
        """Global leaf id of NIC ``rail`` of ``node`` (as Topology.leaf_of, flattened)."""
        return self._leaf_node[node] + self._leaf_rail[rail]

    def nvlinked(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """True where GPUs ``a`` and ``b`` share an NVLink domain."""
        same = self.domain(a) == self.domain(b)
        return same & (self.scale_up_kind is not ScaleUpKind.PCIE)

    # --- latencies ---------------------------------------------------------------------

    def pcie_latency(self) -> float:
        if self.pcie_latency_s is None:
            raise UnsupportedError(
                f"{self.cluster.name} gives no PCIe latency (node.pcie.latency_us); a path through the host needs it"
            )
        return self.pcie_latency_s

    def island_latency(self, nvlink_only: bool) -> float:
        """Small-message latency of a hop inside an island."""
        return self.scale_up_latency_s if nvlink_only else max(self.scale_up_latency_s, self.pcie_latency())

    def fabric_latency(self, nodes: np.ndarray) -> float:
        """Same-leaf latency if ``nodes`` share one leaf (per rail) and zone, else cross-leaf
        (ISCA'25 Table 5)."""
        nodes = np.unique(nodes)
        if nodes.size <= 1:
            return 0.0
        leaves = self.leaf(nodes, np.zeros_like(nodes))
        return self.same_leaf_latency_s if np.unique(leaves).size == 1 else self.cross_leaf_latency_s


@dataclass
class LoadBook:
    """Accumulates (instance id, coefficient) pairs per (link class, capacity)."""

    maps: ClusterMaps
    _parts: dict = field(default_factory=dict)

    def add(self, link: LinkClass, capacity: float | None, ids, amount, instances: str = "") -> None:
        """Add ``amount`` to instances ``ids`` of ``link``; ``instances`` names the id space
        when one link class has several (a root port's directions vs its duplex cap)."""
        if capacity is None or not np.isfinite(capacity):
            return
        ids = np.asarray(ids, dtype=np.int64).ravel()
        amount = np.asarray(amount, dtype=float)
        amount = np.broadcast_to(amount, ids.shape) if amount.ndim == 0 else amount.ravel()
        if ids.size == 0 or amount.max() <= 0:
            return
        if amount.min() <= 0:
            keep = amount > 0
            ids, amount = ids[keep], amount[keep]
        self._parts.setdefault((link, float(capacity), instances), []).append((ids, amount))

    def loads(self) -> tuple[LinkLoad, ...]:
        """The busiest instance of each link class (by time, over its capacities)."""
        best: dict[LinkClass, LinkLoad] = {}
        for (link, capacity, _), parts in self._parts.items():
            ids = np.concatenate([p[0] for p in parts])
            amounts = np.concatenate([p[1] for p in parts])
            if ids.max() < 4 * ids.size + 1_000_000:
                peak = float(np.bincount(ids, weights=amounts).max())
            else:
                _, inverse = np.unique(ids, return_inverse=True)
                peak = float(np.bincount(inverse, weights=amounts).max())
            load = LinkLoad(link, peak, capacity)
            if link not in best or load.time_s > best[link].time_s:
                best[link] = load
        return tuple(best[k] for k in LinkClass if k in best)

    # --- path rules ----------------------------------------------------------------------

    def gpu_to_gpu(self, src: np.ndarray, dst: np.ndarray, amount) -> None:
        """Flows between GPUs of one island: NVLink when they share a domain, else through
        the host (GPU link, root port up; root port, GPU link down)."""
        m = self.maps
        src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
        amount = np.broadcast_to(np.asarray(amount, dtype=float), src.shape)
        nvl = m.nvlinked(src, dst)
        if m.scale_up_kind is ScaleUpKind.NVSWITCH:
            self.add(LinkClass.NVLINK, m.nvlink_bw, 2 * src[nvl], amount[nvl])
            self.add(LinkClass.NVLINK, m.nvlink_bw, 2 * dst[nvl] + 1, amount[nvl])
        else:  # bridge pairs: one link per direction, named by its sender
            self.add(LinkClass.NVLINK, m.nvlink_bw, src[nvl], amount[nvl])
        host = ~nvl & (src != dst)
        if host.any():
            self.host_path(src[host], amount[host], up=True)
            self.host_path(dst[host], amount[host], up=False)

    def host_path(self, gpu: np.ndarray, amount: np.ndarray, up: bool) -> None:
        """GPU <-> host: its PCIe link and, with a root-port map, its root port."""
        m = self.maps
        direction = 0 if up else 1
        self.add(LinkClass.PCIE, m.pcie_bw, 2 * gpu + direction, amount)
        if not m.has_root_ports:
            return
        port = m.node(gpu) * m.ports_per_node + m.local_port[gpu % m.gpn]
        caps = m.port_bw[port % m.ports_per_node]
        for cap in np.unique(caps):
            sel = caps == cap
            self.add(LinkClass.ROOT_PORT, cap, 2 * port[sel] + direction, amount[sel])
        self.add(LinkClass.ROOT_PORT, m.port_duplex_bw, port, amount, instances="duplex")

    def gpu_nic(self, gpu: np.ndarray, rail: np.ndarray, amount, outbound: bool, gpudirect: bool = True) -> None:
        """A GPU's share of inter-node traffic through NIC ``rail`` of its node: an NVLink hop
        to the GPU on that rail when needed (PXN), its PCIe path, the P2P cap, the NIC."""
        m = self.maps
        gpu, rail = np.asarray(gpu, dtype=np.int64), np.asarray(rail, dtype=np.int64)
        amount = np.broadcast_to(np.asarray(amount, dtype=float), gpu.shape)
        node = m.node(gpu)
        nic = node * m.nics + rail
        direction = 0 if outbound else 1
        self.add(LinkClass.NIC, m.nic_bw, 2 * nic + direction, amount)
        if gpudirect:
            self.add(LinkClass.GPU_NIC_P2P, m.p2p_bw, 2 * nic + direction, amount)
        forwarder = node * m.gpn + m.rail_first_gpu[rail]
        hop = (m.rail(gpu) != rail) & m.nvlinked(gpu, forwarder)
        if hop.any():
            a, b = (gpu[hop], forwarder[hop]) if outbound else (forwarder[hop], gpu[hop])
            self.gpu_to_gpu(a, b, amount[hop])
        via = np.where(hop, forwarder, gpu)
        if m.has_root_ports:
            self.host_path(via, amount, up=outbound)
        else:  # GPUDirect through a PCIe switch: the GPU's link toward its NIC
            self.add(LinkClass.PCIE, m.pcie_bw, 2 * via + direction, amount)

    def gpu_nic_fanout(self, gpu: np.ndarray, per_rail: np.ndarray) -> None:
        """Outbound GPUDirect traffic of each GPU to every rail (``per_rail``: gpus x nics);
        the same loads as :meth:`gpu_nic` per (GPU, rail), summed before booking."""
        m = self.maps
        node_domain = m.scale_up_kind is ScaleUpKind.NVSWITCH and m.domain_gpus >= m.gpn
        if not node_domain or m.has_root_ports:
            rails = np.arange(m.nics)
            self.gpu_nic(np.repeat(gpu, m.nics), np.tile(rails, gpu.size), per_rail.ravel(), outbound=True)
            return
        node = m.node(gpu)
        nic = (node[:, None] * m.nics + np.arange(m.nics)[None, :]).ravel()
        load = np.bincount(nic, weights=per_rail.ravel())
        used = np.flatnonzero(load)
        self.add(LinkClass.NIC, m.nic_bw, 2 * used, load[used])
        self.add(LinkClass.GPU_NIC_P2P, m.p2p_bw, 2 * used, load[used])
        # PXN: the share for another rail hops over NVLink to that rail's GPU, whose PCIe link
        # then carries the NIC's whole load.
        own = m.rail(gpu)
        forwarded = per_rail.sum(axis=1) - per_rail[np.arange(gpu.size), own]
        self.add(LinkClass.NVLINK, m.nvlink_bw, 2 * gpu, forwarded)
        into = per_rail.copy()
        into[np.arange(gpu.size), own] = 0.0
        forwarder = (node[:, None] * m.gpn + m.rail_first_gpu[None, :]).ravel()
        self.add(LinkClass.NVLINK, m.nvlink_bw, 2 * forwarder + 1, into.ravel())
        rail_gpu = (used // m.nics) * m.gpn + m.rail_first_gpu[used % m.nics]
        self.add(LinkClass.PCIE, m.pcie_bw, 2 * rail_gpu, load[used])

    def fabric(self, src_node: np.ndarray, dst_node: np.ndarray, rail: np.ndarray, amount) -> None:
        """Node-to-node flows on one rail: leaf uplinks when the leaves differ, the zone
        links (in total and per node pair) when the zones differ."""
        m = self.maps
        src_node, dst_node = np.asarray(src_node, dtype=np.int64), np.asarray(dst_node, dtype=np.int64)
        rail = np.broadcast_to(np.asarray(rail, dtype=np.int64), src_node.shape)
        amount = np.broadcast_to(np.asarray(amount, dtype=float), src_node.shape)
        leaf_s, leaf_d = m.leaf(src_node, rail), m.leaf(dst_node, rail)
        cross = leaf_s != leaf_d
        self.add(LinkClass.UPLINK, m.uplink_bw, 2 * leaf_s[cross], amount[cross])
        self.add(LinkClass.UPLINK, m.uplink_bw, 2 * leaf_d[cross] + 1, amount[cross])
        zone_s, zone_d = m.zone(src_node), m.zone(dst_node)
        cz = zone_s != zone_d
        if cz.any():
            self.add(LinkClass.CROSS_ZONE, m.cross_zone_bw, zone_s[cz] * m.zones + zone_d[cz], amount[cz])
            pair = (src_node[cz] * m.num_nodes + dst_node[cz]) * m.nics + rail[cz]
            self.add(LinkClass.CROSS_ZONE, m.cross_zone_flow_bw, pair, amount[cz], instances="flow")

    def inter_node(self, src: np.ndarray, dst: np.ndarray, amount, gpudirect: bool = True) -> None:
        """GPU-to-GPU flows between nodes, on the destination's rail (PXN)."""
        m = self.maps
        src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
        rail = m.rail(dst)
        self.gpu_nic(src, rail, amount, outbound=True, gpudirect=gpudirect)
        self.fabric(m.node(src), m.node(dst), rail, amount)
        self.gpu_nic(dst, rail, amount, outbound=False, gpudirect=gpudirect)

    def flows(self, src: np.ndarray, dst: np.ndarray, amount, gpudirect: bool = True) -> None:
        """Any GPU-to-GPU flows: inside an island or between nodes."""
        m = self.maps
        src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
        amount = np.broadcast_to(np.asarray(amount, dtype=float), src.shape)
        inside = m.island(src) == m.island(dst)
        # Two nodes of one NVLink rack talk over NVLink: still "inside".
        self.gpu_to_gpu(src[inside], dst[inside], amount[inside])
        self.inter_node(src[~inside], dst[~inside], amount[~inside], gpudirect)
