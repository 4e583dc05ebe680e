"""Traffic of each collective algorithm on placed groups, as per-link loads (coefficients).

Each function takes the cluster's :class:`~planner.hwmodels.linkload.ClusterMaps` and all
concurrent groups (physical GPU ids, one row per group) and returns the phases of the
algorithm with loads per byte of the collective's ``nbytes`` (nccl-tests "size": all-reduce
= buffer per rank, reduce-scatter/all-gather = the whole buffer, all-to-all = bytes each rank
sends, p2p = bytes per pair). Groups are taken in sorted GPU order, so their members form
runs per *island* (a node, or an NVL72 rack: what NVLink joins).

- **ring** (NCCL): every rank sends ``2(k-1)/k`` (all-reduce) or ``(k-1)/k`` (RS/AG) of
  the buffer to its successor. NCCL runs one ring per rail, entering and leaving an island
  on a different GPU each, so per member a share ``(m-1)/m`` goes to the next member of its
  island and ``1/m`` to the next island through the member's own NIC (``m`` members on the
  island). Steps: ``2(k-1)`` or ``k-1``, each the slowest hop's latency.
- **tree** (NCCL double binary tree over islands, chain inside each): two trees built as
  NCCL's ``ncclGetBtree``/``ncclGetDtree`` (tree two mirrors tree one for an even count,
  shifts it by one for an odd count), each carrying half the buffer; per tree edge half the
  buffer goes up (reduce) and half down (broadcast). Latency ``2 (depth * fabric + (m-1) *
  island)``. Needs at least two islands.
- **hierarchical**: reduce-scatter inside each island, the inter-island all-reduce of
  ``1/m`` of the buffer as rings over members with the same position, all-gather inside;
  three phases whose times add. Needs every island of every group to hold the same ``m > 1``.
- **hfreduce** (Fire-Flyer §IV): each GPU copies its gradient to host memory (D2H), the CPU
  sums the node's copies, the nodes run the double binary tree from host memory over the
  NICs (no GPUDirect), and each GPU copies the result back (H2D). GPUs that share an NVLink
  domain first reduce-scatter over it (the bridge-pair variant of §IV-C), so each copies
  ``1/c`` of the buffer. Host-memory traffic per node, as the paper's §IV-D count (24x for
  8 GPUs without NVLink): D2H writes ``sum d``; reduce reads ``sum d`` and writes 1; IB send
  reads and receive writes what the tree moves (2 + 2 for an interior node); the reduction
  of received data reads what the children sent (1); H2D with GDRCopy reads host memory once
  per CPU socket (2). Everything is pipelined in chunks, so the phase is one: the busiest of
  PCIe links, root ports, host memory, NICs and the fabric. Fire-Flyer's Fig. 7 plots
  algorithm bandwidth (buffer / time): read as bus bandwidth, NCCL's 4.8 GB/s ceiling would
  be half of what the node's P2P-capped ring edge (~9.4 GB/s busbw) delivers.
- **flat** all-to-all: every rank sends ``1/k`` of its buffer to every member (its own share
  stays home); traffic to another island leaves on the destination's rail (PXN).
- **direct** p2p: one flow per pair.
"""

from __future__ import annotations

import math

import numpy as np

from planner.errors import UnsupportedError
from planner.hwmodels.linkload import ClusterMaps, LinkClass, LoadBook, Phase
from planner.specs.hardware import ScaleUpKind


class GroupView:
    """Sorted groups and their runs of members per island (or per node)."""

    def __init__(self, maps: ClusterMaps, groups: np.ndarray, by_node: bool = False):
        g = np.sort(groups, axis=1)
        num_groups, k = g.shape
        self.maps, self.groups, self.k = maps, g, k
        unit = maps.node(g) if by_node else maps.island(g)
        first = np.ones_like(g, dtype=bool)
        first[:, 1:] = unit[:, 1:] != unit[:, :-1]
        self.flat = g.ravel()
        n = self.flat.size
        first = first.ravel()
        self.run_of = np.cumsum(first) - 1
        self.run_start = np.flatnonzero(first)
        self.run_len = np.diff(np.append(self.run_start, n))
        self.run_group = self.run_start // k
        self.runs_per_group = np.bincount(self.run_group, minlength=num_groups)
        self.first_run = np.concatenate([[0], np.cumsum(self.runs_per_group)[:-1]])
        runs = self.run_start.size
        nxt = np.arange(1, runs + 1)
        last = (nxt == runs) | (self.run_group[np.minimum(nxt, runs - 1)] != self.run_group)
        nxt[last] = self.first_run[self.run_group[last]]
        self.next_run = nxt
        self.pos = np.arange(n) - self.run_start[self.run_of]
        self.m = self.run_len[self.run_of]
        self.next_in_run = self.run_start[self.run_of] + (self.pos + 1) % self.m
        self.member_group = np.arange(n) // k
        self.run_pos = np.arange(runs) - self.first_run[self.run_group]
        self.multi = self.runs_per_group[self.member_group] > 1

    def partner(self, members: np.ndarray, runs: np.ndarray) -> np.ndarray:
        """The member of run ``runs`` paired with each of ``members`` by position."""
        return self.run_start[runs] + self.pos[members] % self.run_len[runs]

    def spans_leaves(self) -> bool:
        leaves = self.maps.leaf(self.maps.node(self.groups), np.zeros_like(self.groups))
        return bool((leaves.min(axis=1) != leaves.max(axis=1)).any())

    def fabric_latency(self) -> float:
        m = self.maps
        if not self.multi.any():
            return 0.0
        return m.cross_leaf_latency_s if self.spans_leaves() else m.same_leaf_latency_s

    def island_latency(self) -> float:
        """Latency of a hop between members of one island (NVLink, else through the host)."""
        m = self.maps
        if not (self.m > 1).any():
            return 0.0
        src = self.flat[self.m > 1]
        nvl = m.nvlinked(src, self.flat[self.next_in_run[self.m > 1]])
        return m.island_latency(bool(nvl.all()))


def ring(maps: ClusterMaps, groups: np.ndarray, edge_coefficient: float, steps: int) -> Phase:
    """A ring where each rank sends ``edge_coefficient`` of the buffer to its successor."""
    view, book = GroupView(maps, groups), LoadBook(maps)
    m = view.m.astype(float)
    intra = np.where(view.multi, edge_coefficient * (m - 1) / m, edge_coefficient)
    sel = view.m > 1
    book.gpu_to_gpu(view.flat[sel], view.flat[view.next_in_run[sel]], intra[sel])
    if view.multi.any():
        f = np.flatnonzero(view.multi)
        dst = view.partner(f, view.next_run[view.run_of[f]])
        book.inter_node(view.flat[f], view.flat[dst], edge_coefficient / m[f])
    hop = max(view.island_latency(), view.fabric_latency())
    return Phase(steps * hop, book.loads())


def _btree_parent(p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Parent of position ``p`` in NCCL's binary tree over ``n`` ranks (-1 at the root):
    clear the lowest set bit and set the next one up; if that falls off the end, only clear."""
    low = p & -p
    parent = (p ^ low) | (low << 1)
    parent = np.where(parent >= n, p ^ low, parent)
    return np.where(p == 0, -1, parent)


def double_binary_tree(p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parents of position ``p`` (of ``n``) in NCCL's two trees: the second mirrors the first
    for even ``n`` and shifts it by one for odd ``n``."""
    first = _btree_parent(p, n)
    even = n % 2 == 0
    mirrored = _btree_parent(n - 1 - p, n)
    mirrored = np.where(mirrored < 0, -1, n - 1 - mirrored)
    shifted = _btree_parent((p - 1) % n, n)
    shifted = np.where(shifted < 0, -1, (shifted + 1) % n)
    return first, np.where(even, mirrored, shifted)


def _tree_edges(view: GroupView) -> list[tuple[np.ndarray, np.ndarray]]:
    """(child run, parent run) of both trees, over the runs of multi-run groups."""
    runs = np.flatnonzero(view.runs_per_group[view.run_group] > 1)
    n = view.runs_per_group[view.run_group[runs]]
    edges = []
    for parent in double_binary_tree(view.run_pos[runs], n):
        child = parent >= 0
        edges.append((runs[child], view.first_run[view.run_group[runs[child]]] + parent[child]))
    return edges


def _tree_depth(view: GroupView) -> int:
    n = int(view.runs_per_group.max())
    return math.ceil(math.log2(n)) if n > 1 else 0


def tree(maps: ClusterMaps, groups: np.ndarray) -> Phase:
    """NCCL double-binary-tree all-reduce across islands, chain inside each."""
    view, book = GroupView(maps, groups), LoadBook(maps)
    if not view.multi.all():
        raise UnsupportedError("tree all-reduce needs every group to span at least two islands (nodes)")
    src, dst, share = [], [], []
    for child, parent in _tree_edges(view):
        # Half the buffer per tree, up in the reduce and down in the broadcast, shared by the
        # child island's members (one channel per rail).
        parent_of = np.full(view.run_start.size, -1, dtype=np.int64)
        parent_of[child] = parent
        members = np.flatnonzero(parent_of[view.run_of] >= 0)
        up = view.flat[view.partner(members, parent_of[view.run_of[members]])]
        src += [view.flat[members], up]
        dst += [up, view.flat[members]]
        share += [0.5 / view.m[members]] * 2
    book.inter_node(np.concatenate(src), np.concatenate(dst), np.concatenate(share))
    chain = (view.m > 1) & (view.pos < view.m - 1)
    a, b = view.flat[chain], view.flat[np.flatnonzero(chain) + 1]
    book.gpu_to_gpu(a, b, 1.0)
    book.gpu_to_gpu(b, a, 1.0)
    island = view.island_latency() * (int(view.m.max()) - 1)
    latency = 2 * (_tree_depth(view) * view.fabric_latency() + island)
    return Phase(latency, book.loads())


def hierarchical(maps: ClusterMaps, groups: np.ndarray, kind: str) -> tuple[Phase, ...]:
    """Intra-island then inter-island (``kind`` = ``all_reduce``, ``reduce_scatter`` or
    ``all_gather``), each a ring; the inter phase moves ``1/m`` of the buffer."""
    view = GroupView(maps, groups)
    n, m = view.runs_per_group, view.run_len
    if n.min() != n.max() or m.min() != m.max() or n[0] < 2 or m[0] < 2:
        raise UnsupportedError(
            "hierarchical needs every group to hold the same number (> 1) of GPUs on each of >= 2 islands"
        )
    n, m = int(n[0]), int(m[0])
    intra = view.groups.reshape(-1, m)
    inter = view.groups.reshape(-1, n, m).transpose(0, 2, 1).reshape(-1, n)
    rs = ring(maps, intra, (m - 1) / m, m - 1)
    if kind == "all_reduce":
        middle = ring(maps, inter, 2 * (n - 1) / n, 2 * (n - 1)).scaled(1 / m)
        return rs, middle, rs
    middle = ring(maps, inter, (n - 1) / n, n - 1).scaled(1 / m)
    return (rs, middle) if kind == "reduce_scatter" else (middle, rs)


def hfreduce(maps: ClusterMaps, groups: np.ndarray) -> Phase:
    """Fire-Flyer HFReduce: D2H, CPU reduction, host-memory double binary tree, H2D."""
    if not maps.cpu_allreduce:
        raise UnsupportedError(f"{maps.cluster.name}: its nodes do not declare HFReduce (node.host.cpu_allreduce)")
    view, book = GroupView(maps, groups, by_node=True), LoadBook(maps)
    g = view.flat
    # GPUs of the group sharing an NVLink domain reduce-scatter over it first (§IV-C).
    domain = maps.domain(g)
    key = view.member_group * maps.num_gpus + domain
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    c = counts[inverse] if maps.scale_up_kind is not ScaleUpKind.PCIE else np.ones_like(g)
    d = 1.0 / c
    paired = c > 1
    if paired.any():
        order = np.argsort(key, kind="stable")
        pos_in_domain = np.empty_like(order)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pos_in_domain[order] = np.arange(g.size) - starts[inverse[order]]
        successor = order[starts[inverse] + (pos_in_domain + 1) % counts[inverse]]
        book.gpu_to_gpu(g[paired], g[successor[paired]], 2 * (c[paired] - 1) / c[paired])
    book.host_path(g, d, up=True)
    book.host_path(g, d, up=False)
    sum_d = np.bincount(view.run_of, weights=d)
    run_node = maps.node(view.flat[view.run_start])
    units = np.zeros(view.run_start.size)  # tree edges per run, in halves of the buffer
    children = np.zeros(view.run_start.size)
    for child, parent in _tree_edges(view):
        units += np.bincount(child, minlength=units.size) + np.bincount(parent, minlength=units.size)
        children += np.bincount(parent, minlength=units.size)
        for r in range(maps.nics):
            book.fabric(run_node[child], run_node[parent], r, 0.5 / maps.nics)
            book.fabric(run_node[parent], run_node[child], r, 0.5 / maps.nics)
    moved = 0.5 * units  # bytes each node's NICs send (and receive), per byte of buffer
    h2d_reads = np.minimum(sum_d, maps.cpu_sockets)
    memory = 2 * sum_d + 1.0 + 2 * moved + 0.5 * children + h2d_reads
    book.add(LinkClass.HOST_MEMORY, maps.memory_bw, run_node, memory)
    for r in range(maps.nics):
        nic = run_node * maps.nics + r
        book.add(LinkClass.NIC, maps.nic_bw, 2 * nic, moved / maps.nics)
        book.add(LinkClass.NIC, maps.nic_bw, 2 * nic + 1, moved / maps.nics)
    latency = 2 * maps.pcie_latency() + 2 * _tree_depth(view) * view.fabric_latency()
    if paired.any():
        latency += 2 * maps.scale_up_latency_s
    return Phase(latency, book.loads())


def _count(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys and how many times each occurs."""
    return np.unique(keys, return_counts=True)


def _lookup(keys: np.ndarray, counts: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Occurrence count of each of ``keys`` in ``counts`` (0 if absent)."""
    known, n = counts
    at = np.clip(np.searchsorted(known, keys), 0, known.size - 1)
    return np.where(known[at] == keys, n[at], 0)


def flat_all_to_all(maps: ClusterMaps, groups: np.ndarray) -> Phase:
    """Every rank sends 1/k of its buffer to each member; off-island on the destination's rail."""
    view, book = GroupView(maps, groups), LoadBook(maps)
    k, g, nics = view.k, view.flat, maps.nics
    rail = maps.rail(g)
    node = maps.node(g)
    m = view.m.astype(float)
    # Inside the island: to each island-mate.
    if maps.scale_up_kind is ScaleUpKind.NVSWITCH and maps.domain_gpus >= maps.gpn:
        book.add(LinkClass.NVLINK, maps.nvlink_bw, 2 * g, (m - 1) / k)
        book.add(LinkClass.NVLINK, maps.nvlink_bw, 2 * g + 1, (m - 1) / k)
    elif (view.m > 1).any():
        runs = view.run_of
        src_idx, dst_idx = [], []
        for shift in range(1, int(view.m.max())):
            has = view.m > shift
            src_idx.append(np.flatnonzero(has))
            dst_idx.append(view.run_start[runs[has]] + (view.pos[has] + shift) % view.m[has])
        src_i, dst_i = np.concatenate(src_idx), np.concatenate(dst_idx)
        book.gpu_to_gpu(g[src_i], g[dst_i], 1.0 / k)
    if view.multi.any():
        # To other islands: per destination rail r, the members on r outside the island.
        group_rail = np.bincount(view.member_group * nics + rail, minlength=view.groups.shape[0] * nics)
        run_rail = np.bincount(view.run_of * nics + rail, minlength=view.run_start.size * nics)
        rails = np.arange(nics)
        to_rail = (group_rail.reshape(-1, nics)[view.member_group] - run_rail.reshape(-1, nics)[view.run_of]) / k
        f = np.flatnonzero(view.multi)
        book.gpu_nic_fanout(g[f], to_rail[f])
        book.gpu_nic(g[f], rail[f], (k - m[f]) / k, outbound=False)
        # Leaf uplinks: traffic from members to members on rail r under other leaves.
        leaf_of = maps.leaf(np.repeat(node[f], nics), np.tile(rails, f.size)).reshape(-1, nics)
        grp = view.member_group[f]
        own_leaf = maps.leaf(node[f], rail[f])
        on_leaf = _count((grp * (leaf_of.max() + 1) + own_leaf) * nics + rail[f])
        same = _lookup(((grp[:, None] * (leaf_of.max() + 1) + leaf_of) * nics + rails[None, :]), on_leaf)
        off_leaf = np.clip(to_rail[f] - same / k, 0, None)
        book.add(LinkClass.UPLINK, maps.uplink_bw, 2 * leaf_of.ravel(), off_leaf.ravel())
        book.add(LinkClass.UPLINK, maps.uplink_bw, 2 * leaf_of.ravel() + 1, off_leaf.ravel())
        if maps.zones > 1:
            zone = maps.zone(node[f])
            in_zone = _count((grp * maps.zones + zone) * nics + rail[f])
            same_zone = _lookup((grp[:, None] * maps.zones + zone[:, None]) * nics + rails[None, :], in_zone)
            off_zone = np.clip(to_rail[f] - same_zone / k, 0, None)
            book.add(LinkClass.CROSS_ZONE, maps.cross_zone_bw, np.repeat(zone, nics), off_zone.ravel())
            # One node pair's flow on one rail: (members on the source node) x (members on
            # rail r of the destination node) / k, largest over the groups that cross.
            crossing = np.unique(grp[off_zone.sum(axis=1) > 0])
            if crossing.size:
                keys, n = _count(grp * maps.num_nodes + node[f])
                most = n[np.isin(keys // maps.num_nodes, crossing)].max()
                keys, n = _count((grp * maps.num_nodes + node[f]) * nics + rail[f])
                most_rail = n[np.isin(keys // (maps.num_nodes * nics), crossing)].max()
                book.add(LinkClass.CROSS_ZONE, maps.cross_zone_flow_bw, [0], most * most_rail / k, instances="flow")
    latency = max(view.island_latency() if (view.m > 1).any() else 0.0, view.fabric_latency())
    return Phase(latency, book.loads())


def direct(maps: ClusterMaps, pairs: np.ndarray) -> Phase:
    """Point-to-point: each row [src, dst] sends the whole buffer."""
    book = LoadBook(maps)
    src, dst = pairs[:, 0], pairs[:, 1]
    book.flows(src, dst, 1.0)
    nvl = maps.nvlinked(src, dst)
    same_node = maps.node(src) == maps.node(dst)
    latency = 0.0
    if nvl.any():
        latency = maps.scale_up_latency_s
    if (same_node & ~nvl).any():
        latency = max(latency, maps.pcie_latency())
    far = ~same_node & ~nvl
    if far.any():
        rail = maps.rail(dst[far])
        cross = maps.leaf(maps.node(src[far]), rail) != maps.leaf(maps.node(dst[far]), rail)
        latency = max(latency, maps.cross_leaf_latency_s if cross.any() else maps.same_leaf_latency_s)
    return Phase(latency, book.loads())
