"""Hardware models: cluster topology, rank placement and collective costs.

The hardware *specs* (GPU, node, fabric, cluster) live in :mod:`planner.specs.hardware`;
this package will turn them into a topology graph and price collectives on it.
"""
