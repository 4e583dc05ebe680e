"""MoE all-to-all with node-limited routing, as DeepEP's normal kernels run it (DeepSeek-V3 §3.2.2).

Dispatch sends each token once over IB to every distinct destination node, to the GPU with
the sender's in-node index (same rail/plane), which forwards it over NVLink to every GPU of
that node holding one of its experts; combine runs the same path backwards. IB and NVLink
stages are pipelined ("fully overlapped", V3 §3.2.2), so the time is the slower stage plus
latency. Inside one NVLink island (EP8 on a node) it is a single NVLink stage.

**Routing statistics.** Experts sit uniformly on the ``k`` ranks (``E/k`` each, expert
``e`` on rank ``e*k//E``), ranks fill islands in order. Each token draws i.i.d. scores for
all experts; with a node limit ``M`` it keeps the ``M`` islands with the highest best score,
then its top-``top_k`` experts among them (DeepEP ``tests/test_internode.py``: scores
``randn().abs() + 1``, group score = max over the group, ``num_topk_groups = min(nodes, 4)``,
groups = nodes; only ranks of scores matter, so uniform scores give the same routing). A
seeded Monte-Carlo over 4,096 tokens, cached per (islands, ranks per island, experts, top-k,
limit), gives the expected distinct islands ``N_tok`` and distinct ranks ``R_tok`` per token;
by symmetry a token picks its own island with probability ``N_tok / islands``.

**Bytes per rank** (``b`` = hidden x bytes per element; FP8 dispatch with DeepEP's per-128
float scales is ``1 + 4/128`` bytes per element, BF16 combine 2):

- IB, physical: ``T (N_tok - N_tok/islands) b`` (the own island's share never leaves it:
  ``internode.cu`` skips the RDMA put when the destination RDMA rank is the local one);
- RDMA as DeepEP counts it: ``T N_tok b`` (``num_rdma_token_sent`` counts the local node too,
  which is why EP32 reports 58 GB/s over a 50 GB/s NIC);
- NVLink stage: ``T R_tok b``, the token copies written into each destination GPU's buffer,
  the rank's own GPU included (``recv_x.numel()`` in ``tests/test_intranode.py``; the
  internode forwarders write every token to every target GPU of their node, themselves
  included). Charging the local copies to the NVLink stage follows DeepEP's own accounting,
  which sets its 153-158 GB/s against NVLink's ~160 GB/s; the local copies ride the same SM
  warps and buffers. (Charging only the 7/8 that crosses NVLink would predict 183 GB/s for
  intranode EP8 against the measured 153.)

**Megatron-Core's alltoall dispatcher** (``deduplicate=False``): no per-node or per-GPU
deduplication: the permute writes one row per (token, chosen expert) and one flat NCCL
all-to-all sends each row to its expert's rank (``MoEAlltoAllTokenDispatcher``: ``permute``
then ``all_to_all(ep_group, ...)``). Under the same uniform routing a token sends ``top_k``
copies, ``top_k / islands`` of them to its own island: IB ``T top_k (1 - 1/islands) b`` per
rank over the rank's NIC, NVLink the own island's ``T top_k / islands b`` (own GPU included,
the convention above). On ``k`` ranks with ``E/k`` experts each that is ``top_k / R_tok`` times
DeepEP's NVLink bytes and ``top_k (1 - 1/islands) / (N_tok - N_tok/islands)`` times its IB
bytes: EP32 over 4 nodes, 128 experts top-8: 6 copies over IB against 2.72.

**Reported bandwidth** (DeepEP's "bottleneck bandwidth", ``docs/legacy.md``): RDMA-counted
bytes / time across nodes, NVLink bytes / time inside one node.

Time per stage = bytes on its busiest instance / achievable bandwidth: NIC (shared by the
ranks on one NIC, e.g. 8 on Fire-Flyer), GPU-NIC P2P cap, leaf uplinks and zone links for the
share of traffic to other leaves/zones; NVLink ports (or, on nodes without NVSwitch, the PCIe
links and root ports). Latency: two rounds (a count exchange, then the data), each one
NVLink hop plus one IB hop when the group spans nodes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from planner.errors import SpecError
from planner.hwmodels.collectives import check_groups, cluster_maps
from planner.hwmodels.linkload import ClusterMaps, LinkClass
from planner.specs.hardware import ClusterSpec, ScaleUpKind

MONTE_CARLO_TOKENS = 4096
"""Tokens sampled per routing shape (DeepEP's benchmark also routes 4,096 tokens per rank)."""
MONTE_CARLO_SEED = 0


@dataclass(frozen=True)
class RoutingStats:
    """Expected spread of one token under (node-limited) uniform routing."""

    islands_per_token: float
    ranks_per_token: float
    own_island_probability: float


@dataclass(frozen=True)
class MoEAllToAllCost:
    """Dispatch and combine of one MoE layer on every EP group at once (slowest group)."""

    dispatch_s: float
    combine_s: float
    dispatch_bottleneck_bytes_per_s: float
    """DeepEP's reported bandwidth: RDMA-counted bytes (across nodes) or NVLink bytes
    (inside one node) per rank / dispatch time."""
    combine_bottleneck_bytes_per_s: float
    inter_node_bytes_per_rank: float
    """IB bytes one rank sends in dispatch (physical: the own node's share excluded)."""
    intra_node_bytes_per_rank: float
    """NVLink-stage bytes one rank's tokens put into GPU buffers in dispatch (own GPU included)."""
    rdma_bytes_per_rank: float
    """Dispatch bytes as DeepEP counts RDMA traffic (local node included); 0 inside a node."""
    dispatch_bottleneck: LinkClass
    combine_bottleneck: LinkClass
    nodes_per_token: float
    """Expected distinct destination islands (nodes) per token (without deduplication:
    the copies a token sends, ``top_k``)."""
    ranks_per_token: float
    """Expected distinct destination GPUs per token (without deduplication: the copies
    that stay in the token's island)."""
    latency_s: float


@lru_cache(maxsize=256)
def routing_stats(
    islands: int, ranks_per_island: int, num_experts: int, top_k: int, node_limit: int | None
) -> RoutingStats:
    """Expected spread of a token (see the module docstring): exact hypergeometric sums
    without a binding node limit, a seeded Monte-Carlo with one."""
    ranks = islands * ranks_per_island
    limit = islands if node_limit is None else min(node_limit, islands)
    if limit == islands:
        # P(a set of e experts gets none of the top_k) = C(E - e, top_k) / C(E, top_k).
        per_rank = np.bincount(np.arange(num_experts) * ranks // num_experts, minlength=ranks)
        per_island = np.bincount(np.arange(ranks) // ranks_per_island, weights=per_rank).astype(int)
        n_ranks = sum(1 - _none_chosen(num_experts, int(e), top_k) for e in per_rank)
        n_islands = sum(1 - _none_chosen(num_experts, int(e), top_k) for e in per_island)
        return RoutingStats(n_islands, n_ranks, n_islands / islands)
    rng = np.random.default_rng(MONTE_CARLO_SEED)
    scores = rng.random((MONTE_CARLO_TOKENS, num_experts), dtype=np.float32)
    rank_of_expert = np.arange(num_experts) * ranks // num_experts
    island_of_expert = rank_of_expert // ranks_per_island
    if limit < islands:
        # Experts are numbered island by island, so each island's best score is a reduceat.
        starts = np.searchsorted(island_of_expert, np.arange(islands))
        best = np.maximum.reduceat(scores, starts, axis=1)
        keep = np.argpartition(-best, limit - 1, axis=1)[:, :limit]
        allowed = np.zeros((MONTE_CARLO_TOKENS, islands), dtype=bool)
        np.put_along_axis(allowed, keep, True, axis=1)
        scores = np.where(allowed[:, island_of_expert], scores, -1.0)
    chosen = np.argpartition(-scores, top_k - 1, axis=1)[:, :top_k]

    def distinct(ids: np.ndarray) -> float:
        ids = np.sort(ids, axis=1)
        return float(1 + (np.diff(ids, axis=1) != 0).sum(axis=1).mean())

    n_islands = distinct(island_of_expert[chosen])
    return RoutingStats(n_islands, distinct(rank_of_expert[chosen]), n_islands / islands)


def _none_chosen(total: int, held: int, chosen: int) -> float:
    """C(total - held, chosen) / C(total, chosen): no chosen item among ``held`` of ``total``."""
    if total - held < chosen:
        return 0.0
    return float(np.prod([(total - held - i) / (total - i) for i in range(chosen)]))


def _off_share(num_groups: int, island: np.ndarray, place: np.ndarray, islands: int) -> np.ndarray:
    """Per member: the share of the group's other islands that are in another ``place``."""
    g = np.broadcast_to(np.arange(num_groups)[:, None], island.shape)
    key = (g * (place.max() + 1) + place).ravel()
    pairs = np.unique(key * (island.max() + 1) + island.ravel())
    known, count = np.unique(pairs // (island.max() + 1), return_counts=True)
    same = count[np.searchsorted(known, key)] - 1
    return 1 - same / max(islands - 1, 1)


def _stage_time(maps: ClusterMaps, per_rank_nic: np.ndarray, per_rank_nvl: float, members: np.ndarray,
                off_leaf: np.ndarray, off_zone: np.ndarray, per_pair: float) -> tuple[float, LinkClass]:
    """Seconds per byte-scale unit of the busiest stage: (time, link class)."""
    times: dict[LinkClass, float] = {}
    node = maps.node(members)
    rail = maps.rail(members)
    if per_rank_nic.any():
        nic = node * maps.nics + rail
        times[LinkClass.NIC] = np.bincount(nic, weights=per_rank_nic).max() / maps.nic_bw
        if maps.p2p_bw:
            times[LinkClass.GPU_NIC_P2P] = np.bincount(nic, weights=per_rank_nic).max() / maps.p2p_bw
        leaf = maps.leaf(node, rail)
        if off_leaf.any():
            times[LinkClass.UPLINK] = np.bincount(leaf, weights=per_rank_nic * off_leaf).max() / maps.uplink_bw
        if off_zone.any():
            cross = float((per_rank_nic * off_zone).sum())
            times[LinkClass.CROSS_ZONE] = max(
                cross / maps.cross_zone_bw if maps.cross_zone_bw else 0.0,
                per_pair / maps.cross_zone_flow_bw if maps.cross_zone_flow_bw else 0.0,
            )
    if maps.scale_up_kind is ScaleUpKind.NVSWITCH:
        times[LinkClass.NVLINK] = per_rank_nvl / maps.nvlink_bw
    else:  # no NVSwitch: the fan-out goes through the host (GPU links, shared root ports)
        times[LinkClass.PCIE] = per_rank_nvl / maps.pcie_bw if maps.pcie_bw else 0.0
        if maps.has_root_ports:
            per_port = np.bincount(maps.local_port[members % maps.gpn] + node * maps.ports_per_node,
                                   minlength=1) * per_rank_nvl
            cap = maps.port_duplex_bw / 2 if maps.port_duplex_bw else float(maps.port_bw.min())
            times[LinkClass.ROOT_PORT] = per_port.max() / cap
    link = max(times, key=times.get)
    return times[link], link


def moe_all_to_all(
    cluster: ClusterSpec,
    groups,
    tokens_per_rank: int,
    hidden_size: int,
    top_k: int,
    num_experts: int,
    node_limit: int | None,
    dispatch_bytes_per_element: float,
    combine_bytes_per_element: float,
    deduplicate: bool = True,
) -> MoEAllToAllCost:
    """Dispatch and combine times of DeepEP-style node-limited all-to-all on every EP group
    (cached per cluster, groups and arguments); ``deduplicate=False``: Megatron-Core's
    alltoall dispatcher, one copy per chosen expert (module docstring)."""
    raw = np.ascontiguousarray(groups)
    key = (id(cluster_maps(cluster)), raw.dtype.str, raw.shape, raw.tobytes(), tokens_per_rank, hidden_size,
           top_k, num_experts, node_limit, dispatch_bytes_per_element, combine_bytes_per_element, deduplicate)
    if key not in _RESULTS:
        _RESULTS[key] = _moe_all_to_all(cluster, raw, tokens_per_rank, hidden_size, top_k, num_experts, node_limit,
                                        dispatch_bytes_per_element, combine_bytes_per_element, deduplicate)
        if len(_RESULTS) > 1024:
            _RESULTS.popitem(last=False)
    _RESULTS.move_to_end(key)
    return _RESULTS[key]


_RESULTS: OrderedDict[tuple, MoEAllToAllCost] = OrderedDict()


def _moe_all_to_all(cluster, groups, tokens_per_rank, hidden_size, top_k, num_experts, node_limit,
                    dispatch_bytes_per_element, combine_bytes_per_element, deduplicate) -> MoEAllToAllCost:
    arr = check_groups(cluster, groups)
    for name, value in (("tokens_per_rank", tokens_per_rank), ("hidden_size", hidden_size),
                        ("top_k", top_k), ("num_experts", num_experts)):
        if value < 1:
            raise SpecError(name, value, "must be at least 1")
    if top_k > num_experts:
        raise SpecError("top_k", top_k, f"must be <= num_experts ({num_experts})")
    if node_limit is not None and node_limit < 1:
        raise SpecError("node_limit", node_limit, "must be at least 1 (or None)")
    maps = cluster_maps(cluster)
    k = arr.shape[1]
    if k == 1:
        return MoEAllToAllCost(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, LinkClass.NONE, LinkClass.NONE, 1.0, 1.0, 0.0)
    island = maps.island(arr)
    sorted_islands = np.sort(island, axis=1)
    islands = int((1 + (np.diff(sorted_islands, axis=1) != 0).sum(axis=1)).max())
    per_island = -(-k // islands)
    limit = None if node_limit is None or node_limit >= islands else node_limit
    if limit is not None and limit * num_experts // islands < top_k:
        raise SpecError("node_limit", node_limit, f"{limit} nodes hold fewer than top_k = {top_k} experts")
    if deduplicate:
        stats = routing_stats(islands, per_island, num_experts, top_k, limit)
    else:  # one copy per chosen expert: top_k "destinations", top_k / islands of them local
        stats = RoutingStats(float(top_k), top_k / islands, top_k / islands)
    members = arr.ravel()
    inter = islands > 1
    remote = stats.islands_per_token - stats.own_island_probability if inter else 0.0
    # Share of a rank's IB traffic to islands under other leaves / in other zones (uniform
    # over the group's other islands). NICs of one rail share a leaf iff their nodes sit in
    # the same (zone, leaf block), whatever the rail.
    node = maps.node(arr)
    zone = maps.zone(node)
    block = zone * maps.leaf_blocks + (node - zone * maps.nodes_per_zone) // maps.nodes_per_leaf
    off_leaf = _off_share(arr.shape[0], island, block, islands) if inter else np.zeros(members.size)
    off_zone = np.zeros(members.size)
    per_pair_units = 0.0
    if inter and maps.zones > 1 and (zone.min(axis=1) != zone.max(axis=1)).any():
        off_zone = _off_share(arr.shape[0], island, zone, islands)
        per_pair_units = float(np.bincount(maps.node(members) * maps.nics + maps.rail(members)).max())
    hop = maps.cross_leaf_latency_s if off_leaf.any() or off_zone.any() else maps.same_leaf_latency_s
    latency = 2 * (maps.scale_up_latency_s + (hop if inter else 0.0))

    def stage(bytes_per_element: float) -> tuple[float, LinkClass, float, float, float]:
        token_bytes = hidden_size * bytes_per_element
        ib = tokens_per_rank * remote * token_bytes
        nvl = tokens_per_rank * stats.ranks_per_token * token_bytes
        per_pair = per_pair_units * ib / max(islands - 1, 1)
        seconds, link = _stage_time(maps, np.full(members.size, ib), nvl, members, off_leaf, off_zone, per_pair)
        return seconds + latency, link, ib, nvl, tokens_per_rank * stats.islands_per_token * token_bytes

    d_s, d_link, d_ib, d_nvl, d_rdma = stage(dispatch_bytes_per_element)
    c_s, c_link, _, c_nvl, c_rdma = stage(combine_bytes_per_element)
    counted_d, counted_c = (d_rdma, c_rdma) if inter else (d_nvl, c_nvl)
    return MoEAllToAllCost(
        dispatch_s=d_s,
        combine_s=c_s,
        dispatch_bottleneck_bytes_per_s=counted_d / d_s,
        combine_bottleneck_bytes_per_s=counted_c / c_s,
        inter_node_bytes_per_rank=d_ib,
        intra_node_bytes_per_rank=d_nvl,
        rdma_bytes_per_rank=d_rdma if inter else 0.0,
        dispatch_bottleneck=d_link,
        combine_bottleneck=c_link,
        nodes_per_token=stats.islands_per_token,
        ranks_per_token=stats.ranks_per_token,
        latency_s=latency,
    )
