"""The cluster of a validation case: a shipped preset, resized to the row.

The preset is looked up from the data, never from a table in code: the one whose GPU is the
row's ``gpu`` and whose scale-up domain is the row's ``intra_node``, where the schema's words
map to a preset's ``node.scale_up`` as

- ``nvswitch``: kind nvswitch, domain = one node (HGX / DGX);
- ``nvl72``: kind nvswitch, domain of 72 GPUs spanning several trays (GB200 NVL72);
- ``nvlink-bridge-pairs``: kind nvlink-bridge-pairs (Fire-Flyer 2).

No match is an :class:`~planner.errors.UnsupportedError` naming the combinations that exist.
The preset is then given the row's gpus_per_node, NIC count and NIC speed (empty cells keep
the preset's; 0 NICs only on one node, which sends nothing over them) and just enough nodes
for the plan's GPUs. The scale-up domain follows the node (:func:`_domain`). Everything else
(achievable fractions, latencies, fabric shape) stays the preset's, with its sources.
"""

from __future__ import annotations

import math
from functools import cache
from typing import TYPE_CHECKING

from planner.errors import SpecError, UnsupportedError
from planner.presets import load_cluster, preset_names, revalidate
from planner.specs import ClusterSpec, ScaleUpKind

if TYPE_CHECKING:
    from planner.validation.cases import Row


def intra_node_kind(cluster: ClusterSpec) -> str:
    """The schema's ``intra_node`` word for a cluster's scale-up domain."""
    up, per_node = cluster.node.scale_up, cluster.node.gpus_per_node
    if up.kind is ScaleUpKind.NVSWITCH and up.domain_gpus > per_node:
        return f"nvl{up.domain_gpus}"
    return up.kind.value


@cache
def _cluster_presets() -> tuple[ClusterSpec, ...]:
    return tuple(load_cluster(name) for name in preset_names("cluster"))


def find_cluster_presets(gpu: str, intra_node: str | None) -> list[ClusterSpec]:
    """Shipped cluster presets with this GPU and (when given) this scale-up domain."""
    return [
        c
        for c in _cluster_presets()
        if c.gpu.name == gpu and (intra_node is None or intra_node_kind(c) == intra_node)
    ]


def case_cluster(cells: Row, num_gpus: int, notes: list[str]) -> ClusterSpec:
    """The row's cluster with ``num_gpus`` GPUs; defaults taken are appended to ``notes``."""
    gpu = cells.text("gpu")
    if gpu is None:
        raise SpecError("gpu", None, "is required; the cell is empty")
    intra = (cells.text("intra_node") or "").lower() or None
    matches = find_cluster_presets(gpu.lower(), intra)
    if not matches:
        known = sorted({f"{c.gpu.name} with {intra_node_kind(c)}" for c in _cluster_presets()})
        raise UnsupportedError(
            f"no cluster preset for gpu {gpu} with intra_node {intra or '(empty)'}; known: {', '.join(known)}"
        )
    if intra is None and len(matches) > 1:
        raise UnsupportedError(
            f"intra_node empty and gpu {gpu} has several cluster presets: {', '.join(c.name for c in matches)}"
        )
    base = matches[0]
    if intra is None:
        notes.append(f"intra_node empty: {intra_node_kind(base)} (the only preset for {gpu})")
    if len(matches) > 1:
        notes.append(f"cluster preset {base.name} (first of {', '.join(c.name for c in matches)})")
    return _resized(base, cells, num_gpus, notes)


def _resized(base: ClusterSpec, cells: Row, num_gpus: int, notes: list[str]) -> ClusterSpec:
    """The preset with the row's node shape and NICs, and exactly ``num_gpus`` GPUs."""
    node = base.node
    per_node = cells.int("gpus_per_node")
    if per_node is None:
        per_node = node.gpus_per_node
        notes.append(f"gpus_per_node empty: {per_node} (preset {base.name})")
    if num_gpus < per_node:
        notes.append(f"{num_gpus} GPUs: one node of {num_gpus} (of {per_node})")
        per_node = num_gpus
    elif num_gpus % per_node:
        # The simulator places exactly the plan's GPUs; a partly filled last node is
        # modelled as smaller whole nodes (the largest size that divides both).
        whole = math.gcd(num_gpus, per_node)
        notes.append(f"{num_gpus} GPUs are not whole nodes of {per_node}: modelled as nodes of {whole}")
        per_node = whole
    nics = cells.int("nics_per_node")
    if nics is None:
        nics = node.nics_per_node
        notes.append(f"nics_per_node empty: {nics} (preset {base.name})")
    elif nics == 0:
        if num_gpus > per_node:
            nodes = num_gpus // per_node
            raise SpecError("nics_per_node", 0, f"a run over {nodes} nodes needs scale-out NICs")
        nics = node.nics_per_node
        notes.append(f"nics_per_node 0: one node, no scale-out traffic (the preset's {nics} NICs are unused)")
    gbps = cells.number("nic_gbps")
    if gbps is None:
        gbps = node.nic_bandwidth_bytes_per_s * 8 / 1e9
        notes.append(f"nic_gbps empty: {gbps:g} (preset {base.name})")

    domain = _domain(node.scale_up.domain_gpus, node.gpus_per_node, per_node, notes)
    pcie = node.pcie.model_dump() if node.pcie else None
    if pcie and pcie.get("root_ports") and per_node != node.gpus_per_node:
        # Keep the ports of the GPUs that remain; a larger node has no known port map.
        ports = [[g for g in port if g < per_node] for port in pcie["root_ports"]]
        pcie["root_ports"] = [p for p in ports if p] if per_node < node.gpus_per_node else None
    fabric = base.fabric.model_dump()
    planes = math.gcd(base.fabric.planes, nics)
    if planes != base.fabric.planes:
        notes.append(f"fabric planes {planes} (the preset's {base.fabric.planes} do not divide {nics} NICs)")
        fabric["planes"] = planes
    new_node = {
        **node.model_dump(),
        "gpus_per_node": per_node,
        "scale_up": {**node.scale_up.model_dump(), "domain_gpus": domain},
        "nics_per_node": nics,
        "nic_bandwidth_bytes_per_s": gbps * 1e9 / 8,
        "pcie": pcie,
    }
    return revalidate(base, num_nodes=num_gpus // per_node, node=new_node, fabric=fabric)


def _domain(domain: int, preset_per_node: int, per_node: int, notes: list[str]) -> int:
    """The scale-up domain with nodes of ``per_node`` GPUs: the node itself where the preset's
    domain is its node (HGX); the largest part of the preset's that is whole new nodes where
    it is wider (NVL72 with 4-GPU trays: a row giving 16-GPU nodes keeps 64 of the 72, one
    giving the 72-GPU rack as a node keeps 72); the largest common part where several
    domains share a node (bridged pairs)."""
    if domain == preset_per_node:
        return per_node
    if domain < preset_per_node or per_node > domain:
        return math.gcd(domain, per_node)
    whole = domain // per_node * per_node
    if whole != domain:
        notes.append(f"NVLink domain {whole} GPUs: whole nodes of {per_node} within the preset's {domain}")
    return whole
