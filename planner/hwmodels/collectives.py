"""Collective costs on placed rank groups: all-reduce, reduce-scatter, all-gather, all-to-all, p2p.

:func:`collective_cost` prices one collective run by *all* ``groups`` at once (one row per
group, physical GPU ids ``node * gpus_per_node + local``), so sibling groups share NICs,
root ports, host memory and uplinks as placed: the 8 DP groups of a Fire-Flyer node share
its one NIC, while on an H800 node each GPU has its own rail. It returns the slowest group's
time:

    time = latency terms + nbytes x max over link classes (load on the busiest instance /
           achievable bandwidth)

with the loads from :mod:`planner.hwmodels.algorithms` and the path rules and capacities of
:mod:`planner.hwmodels.linkload` (spec bandwidth x the preset's achievable fraction). A
group inside one NVSwitch node loads only NVLink ports; one spanning zones also loads the
zone links.

``nbytes`` follows nccl-tests' "size": all-reduce = the buffer on each rank; reduce-scatter
and all-gather = the full (unsharded) buffer; all-to-all = all bytes one rank sends (its own
share included); p2p = bytes each sender sends to its partner (rows ``[src, dst]``).
``algbw = nbytes / time``; ``busbw`` multiplies it by nccl-tests' factors: ``2(n-1)/n``
(all-reduce), ``(n-1)/n`` (reduce-scatter, all-gather, all-to-all), 1 (p2p).

``Algorithm.AUTO`` takes the fastest algorithm the hardware supports for the op, as NCCL's
tuner or the framework would: ring, double binary tree, hierarchical, and HFReduce where the
node declares it (Fire-Flyer 2) for all-reduce; ring or hierarchical for reduce-scatter and
all-gather; flat for all-to-all; direct for p2p.

Speed: nothing here walks the networkx graph. Loads are linear in ``nbytes``, so a profile
(latency + per-byte loads) is computed once per (cluster, op, algorithm, groups) with numpy
over the group arrays and cached; a repeat call with any size costs microseconds. MoE
all-to-all with node-limited routing (DeepEP) lives in :mod:`planner.hwmodels.alltoall`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from planner.errors import SpecError, UnsupportedError
from planner.hwmodels import algorithms as alg
from planner.hwmodels.linkload import ClusterMaps, LinkClass, LinkLoad, Phase
from planner.specs.hardware import ClusterSpec


class CollectiveOp(StrEnum):
    """The collectives priced here (nccl-tests names)."""

    ALL_REDUCE = "all_reduce"
    REDUCE_SCATTER = "reduce_scatter"
    ALL_GATHER = "all_gather"
    ALL_TO_ALL = "all_to_all"
    P2P = "p2p"


class Algorithm(StrEnum):
    """How a collective moves its bytes."""

    AUTO = "auto"
    """The fastest of the algorithms the hardware supports for the op."""
    RING = "ring"
    """NCCL ring, one channel per rail."""
    TREE = "tree"
    """NCCL double binary tree across nodes, chain inside (all-reduce)."""
    HIERARCHICAL = "hierarchical"
    """Inside each node (NVLink island) first, then across nodes, then inside again."""
    HFREDUCE = "hfreduce"
    """Fire-Flyer CPU reduction in host memory (only where ``node.host.cpu_allreduce``)."""
    FLAT = "flat"
    """All-to-all: every rank to every rank at once."""
    DIRECT = "direct"
    """Point-to-point: one flow per pair."""


SUPPORTED: dict[CollectiveOp, tuple[Algorithm, ...]] = {
    CollectiveOp.ALL_REDUCE: (Algorithm.RING, Algorithm.TREE, Algorithm.HIERARCHICAL, Algorithm.HFREDUCE),
    CollectiveOp.REDUCE_SCATTER: (Algorithm.RING, Algorithm.HIERARCHICAL),
    CollectiveOp.ALL_GATHER: (Algorithm.RING, Algorithm.HIERARCHICAL),
    CollectiveOp.ALL_TO_ALL: (Algorithm.FLAT,),
    CollectiveOp.P2P: (Algorithm.DIRECT,),
}
"""Algorithms per op, in AUTO's order of preference on a tie."""


def bus_factor(op: CollectiveOp, group_size: int) -> float:
    """nccl-tests' busbw / algbw factor."""
    n = group_size
    if op is CollectiveOp.ALL_REDUCE:
        return 2 * (n - 1) / n
    if op is CollectiveOp.P2P:
        return 1.0
    return (n - 1) / n


@dataclass(frozen=True)
class CollectiveCost:
    """Time of one collective on its groups (the slowest group), and why."""

    time_s: float
    algorithm: Algorithm
    algbw_bytes_per_s: float
    """``nbytes / time_s`` (0 when nothing moves)."""
    busbw_bytes_per_s: float
    """``algbw`` x nccl-tests' bus factor."""
    latency_s: float
    """The latency terms inside ``time_s``."""
    bottleneck: LinkClass
    """Link class whose load bounds the bandwidth term (``latency``/``none`` if no bytes)."""
    link_loads: tuple[LinkLoad, ...] = ()
    """Busiest instance of each link class touched, for ``nbytes`` (absent = not touched)."""

    def load_bytes(self, link: LinkClass | str) -> float:
        """Bytes on the busiest instance of ``link`` (0 if the collective never uses it)."""
        return next((load.bytes for load in self.link_loads if load.link == link), 0.0)


def groups_digest(groups: np.ndarray) -> tuple:
    """A small exact-in-practice key for a groups array: its dtype, shape and a 128-bit
    BLAKE2b digest of its bytes (a 16k-GPU group array is 128 KiB; memo keys stay 16 bytes)."""
    arr = np.ascontiguousarray(groups)
    return arr.dtype.str, arr.shape, hashlib.blake2b(arr.data, digest_size=16).digest()


class _Cache:
    """Cluster lookup maps and per-groups profiles, least recently used first out. A search
    prices thousands of distinct groups (GPT-3 175B on 1024 A100: ~4,400 arrays), so the
    profile cache holds 16,384: at 1,024 it thrashed (10,230 profiles computed for 4,424)."""

    def __init__(self, clusters: int = 16, profiles: int = 16384):
        self._clusters: OrderedDict[int, tuple[ClusterSpec, ClusterMaps]] = OrderedDict()
        self._profiles: OrderedDict[tuple, tuple[Phase, ...] | Exception] = OrderedDict()
        self._limits = (clusters, profiles)

    def maps(self, cluster: ClusterSpec) -> ClusterMaps:
        entry = self._clusters.get(id(cluster))
        if entry is None or entry[0] is not cluster:
            entry = (cluster, ClusterMaps(cluster))  # holding the spec keeps its id unique
            self._clusters[id(cluster)] = entry
            if len(self._clusters) > self._limits[0]:
                self._clusters.popitem(last=False)
        self._clusters.move_to_end(id(cluster))
        return entry[1]

    def profile(self, key: tuple, compute) -> tuple[Phase, ...]:
        if key not in self._profiles:
            try:
                self._profiles[key] = compute()
            except UnsupportedError as exc:
                self._profiles[key] = exc
            if len(self._profiles) > self._limits[1]:
                self._profiles.popitem(last=False)
        self._profiles.move_to_end(key)
        value = self._profiles[key]
        if isinstance(value, Exception):
            raise value
        return value


_CACHE = _Cache()


def cluster_maps(cluster: ClusterSpec) -> ClusterMaps:
    """The (cached) lookup arrays of ``cluster``; checks the zone layout holds every node."""
    return _CACHE.maps(cluster)


def check_groups(cluster: ClusterSpec, groups) -> np.ndarray:
    """``groups`` as an int64 array (num_groups, group_size) of valid, distinct GPU ids."""
    arr = np.asarray(groups)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.size == 0:
        raise SpecError("groups", arr.shape, "must be a non-empty (num_groups, group_size) array of GPU ids")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.mod(arr, 1) == 0):
            raise SpecError("groups", arr.dtype, "must hold integer GPU ids")
    arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= cluster.num_gpus:
        bad = int(arr.max() if arr.max() >= cluster.num_gpus else arr.min())
        raise SpecError("groups", bad, f"GPU id must be in [0, {cluster.num_gpus}) for {cluster.name}")
    if arr.shape[1] > 1 and (np.diff(np.sort(arr, axis=1), axis=1) == 0).any():
        raise SpecError("groups", "repeated GPU", "a group lists the same GPU twice")
    return arr


def _phases(maps: ClusterMaps, op: CollectiveOp, algorithm: Algorithm, groups: np.ndarray) -> tuple[Phase, ...]:
    k = groups.shape[1]
    if algorithm is Algorithm.RING:
        coefficient, steps = (2 * (k - 1) / k, 2 * (k - 1)) if op is CollectiveOp.ALL_REDUCE else ((k - 1) / k, k - 1)
        return (alg.ring(maps, groups, coefficient, steps),)
    if algorithm is Algorithm.TREE:
        return (alg.tree(maps, groups),)
    if algorithm is Algorithm.HIERARCHICAL:
        return alg.hierarchical(maps, groups, str(op))
    if algorithm is Algorithm.HFREDUCE:
        return (alg.hfreduce(maps, groups),)
    if algorithm is Algorithm.FLAT:
        return (alg.flat_all_to_all(maps, groups),)
    return (alg.direct(maps, groups),)


def fabric_forms(maps: ClusterMaps, stacks: np.ndarray) -> list[tuple]:
    """:func:`fabric_form` of each ``stacks[i]`` (a groups array), in one pass."""
    node, local = stacks // maps.gpn, stacks % maps.gpn
    zone = node // maps.nodes_per_zone
    block = zone * maps.num_nodes + (node - zone * maps.nodes_per_zone) // maps.nodes_per_leaf
    form = np.stack([_dense_ranks(zone), _dense_ranks(block), _dense_ranks(node), local], axis=1)
    shape = stacks.shape[1:]
    return [("fabric", shape, hashlib.blake2b(np.ascontiguousarray(f, dtype=np.int64).data, digest_size=16).digest())
            for f in form]


def fabric_form(maps: ClusterMaps, groups: np.ndarray) -> tuple:
    """``groups`` up to the symmetries of a fabric whose NVLink islands are nodes: the zones,
    leaf blocks and nodes it touches each relabelled 0, 1, ... in increasing order (so every
    group keeps its sorted order, which the ring and tree algorithms follow), each GPU's local
    index (its rail, its PCIe port) as is. Nodes are identical, as are the leaves of a block
    (a leaf's uplinks do not depend on how many nodes it holds: ``ClusterMaps.uplink_bw``)
    and the zones, so groups with equal forms load equal links equally: the same profile."""
    return fabric_forms(maps, groups[None])[0]


def _dense_ranks(x: np.ndarray) -> np.ndarray:
    """``x`` (stacks, ...) of non-negative integers relabelled per stack 0, 1, ... in
    increasing order of value (an order-preserving relabelling)."""
    flat = x.reshape(len(x), -1)
    span = int(flat.max(initial=0)) + 1
    base = np.arange(len(x), dtype=np.int64)[:, None] * span
    uniq, inverse = np.unique(flat + base, return_inverse=True)
    return (inverse.reshape(flat.shape) - np.searchsorted(uniq, base)).reshape(x.shape)


_FORMS: dict[tuple, tuple] = {}


def _profile_key(maps: ClusterMaps, groups: np.ndarray, digest: tuple) -> tuple:
    """The profile cache's key for ``groups``: its :func:`fabric_form` where islands are nodes
    (memoised by the groups' digest), else the digest itself (NVL72 racks span nodes)."""
    if maps.island_gpus != maps.gpn:
        return digest
    key = (maps.gpn, maps.nodes_per_zone, maps.nodes_per_leaf, maps.num_nodes, digest)
    hit = _FORMS.get(key)
    if hit is None:
        # Checked here, once per distinct array: an invalid array (a GPU out of range) could
        # share its form with a valid one whose profile is already cached.
        check_groups(maps.cluster, groups)
        if len(_FORMS) >= 65_536:
            _FORMS.clear()
        hit = _FORMS[key] = fabric_form(maps, groups)
    return hit


def _profile(cluster: ClusterSpec, op: CollectiveOp, algorithm: Algorithm, groups: np.ndarray,
             groups_key: tuple) -> tuple[Phase, ...]:
    maps = cluster_maps(cluster)
    return _CACHE.profile((id(maps), op, algorithm, _profile_key(maps, groups, groups_key)),
                          lambda: _phases(maps, op, algorithm, check_groups(cluster, groups)))


def _assemble(
    op: CollectiveOp, algorithm: Algorithm, phases: tuple[Phase, ...], nbytes: float, k: int
) -> CollectiveCost:
    time_s = sum(p.time_s(nbytes) for p in phases)
    latency_s = sum(p.latency_s for p in phases)
    loads: dict[LinkClass, LinkLoad] = {}
    for phase in phases:
        for load in phase.loads:
            scaled = load.scaled(nbytes)
            if load.link not in loads or scaled.time_s > loads[load.link].time_s:
                loads[load.link] = scaled
    busiest = max(phases, key=lambda p: p.seconds_per_byte)
    bottleneck = busiest.bottleneck if nbytes > 0 and busiest.loads else LinkClass.LATENCY
    algbw = nbytes / time_s if time_s > 0 else 0.0
    return CollectiveCost(
        time_s=time_s,
        algorithm=algorithm,
        algbw_bytes_per_s=algbw,
        busbw_bytes_per_s=algbw * bus_factor(op, k),
        latency_s=latency_s,
        bottleneck=bottleneck,
        link_loads=tuple(loads[link] for link in LinkClass if link in loads),
    )


def collective_cost(
    cluster: ClusterSpec,
    op: CollectiveOp,
    groups,
    nbytes: float,
    algorithm: Algorithm = Algorithm.AUTO,
) -> CollectiveCost:
    """Time of ``op`` run concurrently by every row of ``groups`` (see the module docstring
    for ``nbytes``); the slowest group's. Groups of one GPU cost 0."""
    op, algorithm = CollectiveOp(op), Algorithm(algorithm)
    if not np.isfinite(nbytes) or nbytes < 0:
        raise SpecError("nbytes", nbytes, "must be a finite number of bytes >= 0")
    supported = SUPPORTED[op]
    if algorithm is not Algorithm.AUTO and algorithm not in supported:
        raise SpecError("algorithm", str(algorithm), f"{op} supports {', '.join(supported)} (or auto)")
    arr = np.asarray(groups)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim == 2 and arr.shape[1] == 1 and arr.shape[0] > 0:
        check_groups(cluster, arr)
        chosen = supported[0] if algorithm is Algorithm.AUTO else algorithm
        return CollectiveCost(0.0, chosen, 0.0, 0.0, 0.0, LinkClass.NONE)
    if op is CollectiveOp.P2P and arr.ndim == 2 and arr.shape[1] != 2:
        raise SpecError("groups", arr.shape[1], "p2p takes pairs [src, dst] (group size 2)")
    arr = np.ascontiguousarray(arr)
    k = arr.shape[1] if arr.ndim == 2 else 0
    groups_key = groups_digest(arr)
    if algorithm is not Algorithm.AUTO:
        return _assemble(op, algorithm, _profile(cluster, op, algorithm, arr, groups_key), nbytes, k)
    best = None
    for candidate in supported:
        if candidate is Algorithm.HFREDUCE and not cluster_maps(cluster).cpu_allreduce:
            continue
        try:
            cost = _assemble(op, candidate, _profile(cluster, op, candidate, arr, groups_key), nbytes, k)
        except UnsupportedError:
            continue
        if best is None or cost.time_s < best.time_s:
            best = cost
    if best is None:  # every candidate unsupported: report the first one's reason
        _profile(cluster, op, supported[0], arr, groups_key)
        raise UnsupportedError(f"no algorithm for {op} on these groups")
    return best
