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

from planner.costmodel.partition import Chunk, Piece
from planner.errors import UnsupportedError
from planner.specs.hardware import ClusterSpec
from planner.specs.plan import Plan

_BLOCKS = (Piece.DENSE, Piece.MOE)


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


def host_copy_rate(cluster: ClusterSpec) -> float:
    """Bytes/s one GPU moves to or from host memory while every GPU of its node does."""
    node = cluster.node
    if node.pcie is None or node.host is None:
        raise UnsupportedError(
            f"activation offloading needs the host link and host memory of {cluster.name} "
            "(node.pcie.gpu_link_bandwidth_gb_per_s, node.host.memory_bandwidth_gb_per_s)"
        )
    shared = node.host.memory_bandwidth_bytes_per_s / node.gpus_per_node
    return min(node.pcie.gpu_link_bandwidth_bytes_per_s, shared)


def offloaded_pieces(plan: Plan, chunk: Chunk) -> list[tuple[Piece, Piece]]:
    """(block, next block) for each offloaded block of ``chunk`` (pp 1: the whole model)."""
    blocks = [p for p in chunk.pieces if p in _BLOCKS]
    k = min(plan.cpu_offloading_num_layers, max(0, len(blocks) - 1))
    return [(blocks[i], blocks[i + 1]) for i in range(k)]


def offload_costs(
    cluster: ClusterSpec, plan: Plan, chunk: Chunk, block_bytes: dict[Piece, float],
    forward_s: dict[Piece, float], backward_s: dict[Piece, float],
) -> Offload | None:
    """Offloading of ``chunk`` given each block's kept activation bytes for one micro-batch
    (:func:`~planner.costmodel.memory.activation_bytes`) and each piece's forward and
    backward (B + W) compute seconds; None without offloading. Raises UnsupportedError where
    the host's link or capacity is unknown."""
    pairs = offloaded_pieces(plan, chunk)
    if not pairs:
        return None
    rate = host_copy_rate(cluster)
    if cluster.node.host.memory_capacity_bytes is None:
        raise UnsupportedError(
            f"activation offloading needs the host memory capacity of {cluster.name} "
            "(node.host.memory_capacity_gb)"
        )
    fwd = bwd = total = 0.0
    for block, after in pairs:
        nbytes = block_bytes[block]
        copy = nbytes / rate
        total += nbytes
        fwd += max(0.0, copy - forward_s[after])
        bwd += max(0.0, copy - backward_s[after])
    return Offload(total, fwd, bwd, rate)


__all__ = ["Offload", "host_copy_rate", "offload_costs", "offloaded_pieces"]
