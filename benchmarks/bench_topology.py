"""Benchmark: building the topology graph and routing flows, by cluster size.

Run: .venv/bin/python benchmarks/bench_topology.py
Prints, per cluster and GPU count, the graph build time and the time per route (cold,
then cached). Issue #4 targets a whole collective on 16,384 GPUs in < 50 ms cold and
< 1 ms cached per distinct group shape; these are its building blocks.
"""

from __future__ import annotations

import random
import time

from planner.hwmodels.topology import build_topology
from planner.presets import load_cluster

CASES = [("deepseek-v3-h800", 2048), ("fire-flyer-2", 1440), ("dgx-h100", 4096), ("dgx-b200", 16384)]


def main() -> None:
    print(f"{'cluster':<18} {'gpus':>6} {'build ms':>9} {'route us cold':>14} {'route us cached':>16}")
    for name, gpus in CASES:
        cluster = load_cluster(name, gpus)
        t0 = time.perf_counter()
        topo = build_topology(cluster)
        build = time.perf_counter() - t0
        rng = random.Random(0)
        pairs = [(rng.randrange(gpus), rng.randrange(gpus)) for _ in range(20_000)]
        t0 = time.perf_counter()
        for a, b in pairs:
            topo.route(a, b)
        cold = (time.perf_counter() - t0) / len(pairs)
        t0 = time.perf_counter()
        for a, b in pairs:
            topo.route(a, b)
        cached = (time.perf_counter() - t0) / len(pairs)
        print(f"{name:<18} {gpus:>6} {build * 1e3:>9.0f} {cold * 1e6:>14.1f} {cached * 1e6:>16.2f}")


if __name__ == "__main__":
    main()
