"""Activation offloading to host memory (Megatron-Core ``cpu_offloading_num_layers``, which
runs Transformer Engine's CPU offload): which blocks send their activations to the host,
how many bytes, at what rate, and the time the copies fail to hide.

The mechanism (Transformer Engine ``cpu_offload.py``, the double-buffered group handler
Megatron-Core's TransformerBlock enters once per layer):

- the offloaded blocks are the first ``k`` of the model (offload groups 0 .. k-1); the last
  block never is, so each has a next block;
- forward: when block ``i`` ends, its saved tensors start copying to pinned host memory on
  a side stream, beside block ``i + 1``'s forward; the GPU copies are freed when that copy
  is done, which the compute stream waits for at the end of block ``i + 1``;
- backward: block ``i``'s tensors come back beside block ``i + 1``'s backward, and block
  ``i``'s backward waits for them.

So per micro-batch each offloaded block exposes ``max(0, copy - next block's forward)`` in
forward and ``max(0, copy - next block's backward)`` in backward (compute only: the next
block's exposed communication, which would hide more, is not counted). A copy runs at the
GPU's host link (PCIe, or NVLink-C2C on Grace), capped by the node's host memory bandwidth
shared by all its GPUs copying at once. On the GPU the offloaded blocks' activations are
gone at the memory peak (the end of the forward), and the host holds them for every GPU of
the node. Megatron-Core allows offloading only with pp 1 (one micro-batch in flight) and no
recompute (:class:`~planner.specs.plan.Plan`).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.costmodel.compute import PieceTime
from planner.costmodel.partition import BLOCK_PIECES, Chunk, Piece
from planner.errors import UnsupportedError
from planner.specs.hardware import ClusterSpec
from planner.specs.plan import Plan

@dataclass(frozen=True)
class Offload:
    """Activation offloading of one micro-batch on one GPU."""

    bytes_per_microbatch: float
    """Activation bytes the offloaded blocks send to the host (and take back)."""
    forward_exposed_s: float
    """Forward time the copies to the host add (the compute stream waiting for them)."""
    backward_exposed_s: float
    """Backward time the copies back add."""
    rate_bytes_per_s: float
    """Host copy rate of one GPU while all of the node's GPUs copy."""


def host_unknown(cluster: ClusterSpec) -> str | None:
    """Why ``cluster`` cannot take offloaded activations (its host link, host memory
    bandwidth or capacity unknown), or None when it can."""
    node = cluster.node
    if node.pcie is None or node.host is None:
        return (f"activation offloading needs the host link and host memory of {cluster.name} "
                "(node.pcie.gpu_link_bandwidth_gb_per_s, node.host.memory_bandwidth_gb_per_s)")
    if node.host.memory_capacity_bytes is None:
        return (f"activation offloading needs the host memory capacity of {cluster.name} "
                "(node.host.memory_capacity_gb)")
    return None


def host_copy_rate(cluster: ClusterSpec) -> float:
    """Bytes/s one GPU moves to or from host memory while every GPU of its node does
    (the cluster's host must be known, :func:`host_unknown`)."""
    node = cluster.node
    shared = node.host.memory_bandwidth_bytes_per_s / node.gpus_per_node
    return min(node.pcie.gpu_link_bandwidth_bytes_per_s, shared)


def offloaded_pieces(plan: Plan, chunk: Chunk) -> list[tuple[Piece, Piece]]:
    """(block, next block) for each offloaded block of ``chunk`` (pp 1: the whole model)."""
    blocks = [p for p in chunk.pieces if p in BLOCK_PIECES]
    k = min(plan.cpu_offloading_num_layers, max(0, len(blocks) - 1))
    return [(blocks[i], blocks[i + 1]) for i in range(k)]


def offload_costs(
    cluster: ClusterSpec, plan: Plan, chunk: Chunk, block_bytes: dict[Piece, float],
    times: dict[Piece, PieceTime],
) -> Offload | None:
    """Offloading of ``chunk`` given each block's kept activation bytes for one micro-batch
    (:func:`~planner.costmodel.memory.activation_bytes`) and each piece's compute time; None
    without offloading. Raises UnsupportedError where the host is unknown (:func:`host_unknown`)."""
    pairs = offloaded_pieces(plan, chunk)
    if not pairs:
        return None
    if (reason := host_unknown(cluster)) is not None:
        raise UnsupportedError(reason)
    rate = host_copy_rate(cluster)
    fwd = bwd = total = 0.0
    for block, after in pairs:
        nbytes = block_bytes[block]
        copy = nbytes / rate
        total += nbytes
        nxt = times[after]
        fwd += max(0.0, copy - nxt.forward_s)
        bwd += max(0.0, copy - nxt.backward_input_s - nxt.backward_weight_s)
    return Offload(total, fwd, bwd, rate)


__all__ = ["Offload", "host_copy_rate", "host_unknown", "offload_costs", "offloaded_pieces"]
