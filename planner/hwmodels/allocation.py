"""Where a job's GPUs sit in a cluster, and how they split into communication groups.

Physical GPU ``g`` is local GPU ``g % gpus_per_node`` of node ``g // gpus_per_node``; nodes
are numbered zone by zone (zone ``z`` holds nodes ``z * nodes_per_zone`` onwards), leaf by
leaf inside a zone, as :mod:`planner.hwmodels.topology` lays them out.

A job gets whole nodes (:func:`job_nodes`, :func:`job_gpus`):

- by default the first ``n`` nodes of the cluster;
- ``first_node=f``: nodes ``f .. f+n-1``. A range that runs past a zone boundary spans
  two zones, as the one cross-zone job Fire-Flyer 2's scheduler admits does (§III-B);
- ``zone_spread=Z``: the nodes are split into ``Z`` near-equal shares, share ``i`` taking
  nodes ``first_node ..`` of zone ``i``. Ranks follow node order, so the job's node
  sequence enters each zone once (a ring over it crosses between zones ``Z`` times).

Example, Fire-Flyer 2 (625 nodes per zone), a 1,024-GPU job spread over both zones:
``job_gpus(ff2, 1024, zone_spread=2)`` takes nodes 0..63 and 625..688.

Groups (:func:`layout_groups`) tile the job's GPUs, in job order:

- ``consecutive``: groups of ``size`` neighbouring GPUs (TP-like: 0-7, 8-15, ...);
- ``strided:K``: members ``K`` apart (with ``K = gpus_per_node``, one GPU per node, as
  Megatron's DP groups of a tp=8 plan): blocks of ``size * K`` GPUs, each split into ``K``
  groups ``{b, b+K, b+2K, ...}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from planner.errors import SpecError
from planner.specs.hardware import ClusterSpec


class LayoutKind(StrEnum):
    """How a group's members are picked from the job's GPUs."""

    CONSECUTIVE = "consecutive"
    """Neighbouring GPUs."""
    STRIDED = "strided"
    """Members a fixed stride apart."""


@dataclass(frozen=True)
class GroupLayout:
    """A layout as written on the command line: ``consecutive`` or ``strided:K``."""

    kind: LayoutKind = LayoutKind.CONSECUTIVE
    stride: int = 1

    @classmethod
    def parse(cls, text: str) -> GroupLayout:
        name, _, arg = text.strip().partition(":")
        rule = "must be 'consecutive' or 'strided:K' with K a positive integer"
        if name == LayoutKind.CONSECUTIVE and not arg:
            return cls(LayoutKind.CONSECUTIVE, 1)
        if name == LayoutKind.STRIDED:
            try:
                stride = int(arg)
            except ValueError:
                raise SpecError("layout", text, rule) from None
            if stride >= 1:
                return cls(LayoutKind.STRIDED, stride)
        raise SpecError("layout", text, rule)

    def __str__(self) -> str:
        return str(self.kind) if self.kind is LayoutKind.CONSECUTIVE else f"strided:{self.stride}"


def job_nodes(cluster: ClusterSpec, num_nodes: int, first_node: int = 0, zone_spread: int = 1) -> np.ndarray:
    """The nodes of a job of ``num_nodes`` nodes, in rank order (see the module docstring)."""
    fabric = cluster.fabric
    if num_nodes < 1:
        raise SpecError("job_nodes", num_nodes, "must be at least 1")
    if first_node < 0:
        raise SpecError("first_node", first_node, "must be >= 0")
    if zone_spread < 1 or zone_spread > fabric.zones:
        raise SpecError("zone_spread", zone_spread, f"must be between 1 and the cluster's {fabric.zones} zones")
    if zone_spread == 1:
        if first_node + num_nodes > cluster.num_nodes:
            raise SpecError(
                "first_node", first_node,
                f"a {num_nodes}-node job from node {first_node} runs past the cluster's {cluster.num_nodes} nodes",
            )
        return np.arange(first_node, first_node + num_nodes)
    per_zone = fabric.nodes_per_zone
    shares = [num_nodes // zone_spread + (i < num_nodes % zone_spread) for i in range(zone_spread)]
    parts = []
    for zone, share in enumerate(shares):
        start = zone * per_zone + first_node
        end = start + share
        if first_node + share > per_zone or end > cluster.num_nodes:
            raise SpecError(
                "zone_spread", zone_spread,
                f"{share} nodes from node {first_node} of zone {zone} do not fit its {per_zone} nodes"
                f" (cluster of {cluster.num_nodes} nodes)",
            )
        parts.append(np.arange(start, end))
    return np.concatenate(parts)


def job_gpus(
    cluster: ClusterSpec, num_gpus: int | None = None, first_node: int = 0, zone_spread: int = 1
) -> np.ndarray:
    """Physical GPU ids of a job of ``num_gpus`` GPUs (whole nodes; all GPUs by default)."""
    per_node = cluster.node.gpus_per_node
    num_gpus = cluster.num_gpus if num_gpus is None else num_gpus
    if num_gpus < 1 or num_gpus % per_node:
        raise SpecError("job_gpus", num_gpus, f"must be a positive multiple of gpus_per_node ({per_node})")
    if num_gpus > cluster.num_gpus:
        raise SpecError("job_gpus", num_gpus, f"larger than the cluster's {cluster.num_gpus} GPUs")
    nodes = job_nodes(cluster, num_gpus // per_node, first_node, zone_spread)
    return (nodes[:, None] * per_node + np.arange(per_node)[None, :]).ravel()


def layout_groups(
    gpus: np.ndarray, group_size: int, layout: GroupLayout | str = LayoutKind.CONSECUTIVE
) -> np.ndarray:
    """Groups of ``group_size`` tiling ``gpus`` (in order), shape (num_groups, group_size)."""
    gpus = np.asarray(gpus, dtype=np.int64).ravel()
    layout = layout if isinstance(layout, GroupLayout) else GroupLayout.parse(str(layout))
    n = gpus.size
    if group_size < 1:
        raise SpecError("group_size", group_size, "must be at least 1")
    if group_size > n:
        raise SpecError("group_size", group_size, f"larger than the {n} GPUs to place it on")
    block = group_size * layout.stride
    if n % block:
        raise SpecError(
            "layout", str(layout),
            f"does not tile the {n} GPUs: {group_size} per group at stride {layout.stride}"
            f" needs a multiple of {block}",
        )
    # (blocks, size, stride) -> (blocks, stride, size): member j of group s in block b is
    # gpus[b * block + j * stride + s].
    return gpus.reshape(-1, group_size, layout.stride).transpose(0, 2, 1).reshape(-1, group_size)
